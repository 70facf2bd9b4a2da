"""Domain generalisation (T-C): leave one domain out of a multi-domain set, train on the others, test on it.

The protocol follows DomainBed's ERM with training-domain validation (Gulrajani & Lopez-Paz, ICLR 2021): each
training domain is split 80/20 with a fixed seed; the model trains on the 80 % parts and the epoch with the best
accuracy on the union of the 20 % parts is the one reported (`select="best_val"` in the tables that use it); the
held-out domain (`target_domain`) is only ever tested on. Everything else (model, phases, augmentation) is the
classification task's. Our choice where the paper is silent (docs/unknowns.md).
"""
from __future__ import annotations

import torch

from know.data import ImageSet, get_dataset
from know.errors import KnowError
from know.tasks.base import transfer_unit
from know.tasks.classification import Classification, eval_subset
from know.train import generator

HOLDOUT = 0.2  # DomainBed's holdout_fraction: the share of each training domain used for validation


class DomainGeneralization(Classification):
    """Classification on all domains but `cfg.target_domain`, tested on it (see the module docstring)."""

    def load(self, upstream: dict) -> tuple[ImageSet, ImageSet, ImageSet]:
        c = self.cfg
        full = get_dataset(c.dataset, "all", **self.data_kwargs(upstream))
        if full.domains is None:
            raise KnowError(f"dataset {c.dataset} has no domains; domain_generalization needs one that has "
                            "(pacs, styles)")
        if c.target_domain not in full.domain_names:
            raise KnowError(f"--transfer.target_domain={c.target_domain} is not a domain of {c.dataset}; "
                            f"choices: {', '.join(full.domain_names)}")
        target = full.domain_names.index(c.target_domain)
        train, val = [], []
        for d in range(len(full.domain_names)):
            if d == target:
                continue
            idx = (full.domains == d).nonzero()[:, 0].cpu()
            idx = idx[torch.randperm(len(idx), generator=generator(c.dataset, "domain-split", d))]
            cut = int(round(len(idx) * HOLDOUT))
            val.append(idx[:cut])
            train.append(idx[cut:])
        train_idx = torch.cat(train)
        if c.max_images:  # a fixed seeded subset of the training domains' images
            train_idx = train_idx[torch.randperm(len(train_idx), generator=generator(c.dataset, "domain-cap"))
                                  [:c.max_images]].sort().values
        test = eval_subset(full.subset((full.domains == target).nonzero()[:, 0]), c.eval_images)
        return full.subset(train_idx), full.subset(torch.cat(val)), test


def unit_transfer(cfg: dict, out, deps: dict) -> dict:
    """One cached fine-tune run of this task (`know.tasks.base.transfer_unit`)."""
    return transfer_unit(DomainGeneralization, cfg, out, deps)
