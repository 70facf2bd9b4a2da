"""know: KNOW prediction (Knowledge-Overflowed Weights) in PyTorch.

Fine-tune a trained model on nested, shrinking subsets of its data (a forgetting trajectory), then run the
trajectory backwards with the KNOWN hyper-model to predict weights "as if trained on more data".

`know.predict(trajectory, ...)` is the one-call API (the module `know.predict` is itself callable, so it stays
callable however the module was imported); everything else lives in its submodule.
"""
import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    """Submodules on first use (`know.predict`, ...), so `import know` stays cheap."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'know' has no attribute '{name}'") from None
