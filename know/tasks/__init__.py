"""Downstream tasks: one interface (`know.tasks.base.Task`), one training loop (`fit`), one module per kind.

  classification          T-A, T-B: a new head, the paper's probe + fine-tune phases (`classification.py`)
  domain_generalization   T-C: leave one domain out, DomainBed's training-domain validation (`domains.py`)
A new table of a known kind is a grid declaration (reproduce/); a new kind of task is one module here plus its
entry in `TASKS`.
"""
from __future__ import annotations

from know.config import TransferCfg
from know.errors import UnknownName
from know.tasks.base import Task
from know.tasks.classification import Classification
from know.tasks.domains import DomainGeneralization

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "domain_generalization": DomainGeneralization,
}


def create_task(cfg: TransferCfg, seed: int) -> Task:
    """The task `cfg.task` for one run (trial seed `seed`)."""
    if cfg.task not in TASKS:
        raise UnknownName(f"unknown task '{cfg.task}'; known: {', '.join(TASKS)}")
    return TASKS[cfg.task](cfg, seed)
