"""Errors a user can fix: the CLI prints them as one line and exits with status 2."""


class KnowError(Exception):
    """Base class: the message names the problem and the fix."""


class DatasetMissing(KnowError):
    pass


class UnknownName(KnowError, KeyError):
    """An unknown registry name; the message lists the known ones."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


class WeightsError(KnowError):
    pass


class TrajectoryError(KnowError):
    pass
