"""Downstream tasks: one interface (`know.tasks.base.Task`), one training loop (`fit`), one module per kind.

  classification          T-A, T-B: a new head, the paper's probe + fine-tune phases (`classification.py`)
  domain_generalization   T-C: leave one domain out, DomainBed's training-domain validation (`domains.py`)
  segmentation            T-D: DeepLabV3+ with a new pixel classifier, mIoU (`segmentation.py`)
  captioning              T-E: frozen upstream encoder under the Keras example's Transformer decoder (`captioning.py`)
A new table of a known kind is a grid declaration (reproduce/); a new kind of task is one module here plus its
entry in `TASKS`. Tasks are named, not imported, here: a cached fine-tune run's key covers its own task's module
(its unit function is that module's `unit_transfer`), so editing one task never invalidates another's runs.
"""
from __future__ import annotations

import importlib

from know.errors import UnknownName

TASKS: dict[str, str] = {  # name -> "module:class"
    "classification": "know.tasks.classification:Classification",
    "domain_generalization": "know.tasks.domains:DomainGeneralization",
    "segmentation": "know.tasks.segmentation:Segmentation",
    "captioning": "know.tasks.captioning:Captioning",
}


def task_module(name: str) -> str:
    """The module of task `name` (its `unit_transfer` is the cached fine-tune run)."""
    if name not in TASKS:
        raise UnknownName(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name].split(":")[0]


def task_class(name: str):
    """The Task subclass of `name`."""
    module = task_module(name)
    return getattr(importlib.import_module(module), TASKS[name].split(":")[1])
