"""Sample predictions of finished segmentation transfer runs, for the picture of predicted masks beside the truth.

A table's transfer units keep their fine-tuned weights (`checkpoint.pt` in the unit's cache folder). After a
segmentation table has run, `write_mask_samples` rebuilds the trial-0 models of a few rows, predicts the first
`count` test images, and saves images, truth and predictions to `<results>/<table>_<profile>_masks.npz` (atomic),
from which `know.plots.plot_masks` draws the figure (so `know figures` redraws it without computing).
This module is imported by `know.tables` only: no unit runs it, so editing it leaves every cached result valid.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from know.config import TransferCfg
from know.io import atomic_write, read_checkpoint
from know.jobs import Unit
from know.results import row_label
from know.tasks.base import upstream_info
from know.tasks.segmentation import Segmentation

SAMPLE_ROWS = ("naive", "taskvector", "known_official", "known_ours")  # the deepest step of each, trial 0


def _test_images(unit: Unit, state: dict, count: int):
    """(the first `count` test images as the model sees them, their masks, the task and its upstream info)."""
    cfg = unit.cfg
    up = upstream_info(state, cfg["upstream"]["model"], cfg["upstream"]["model_kwargs"])
    task = Segmentation(TransferCfg(**cfg["transfer"]), cfg["seed"])
    test = task.load(up)[2]
    x, y = test.take(slice(0, count))
    shown = x * test.std + test.mean if test.std is not None else x + test.mean  # undo the normalisation
    return x, y, shown, task, up, test


@torch.no_grad()
def predict_unit_masks(unit: Unit, cache: Path, count: int) -> dict[str, np.ndarray]:
    """{"image" (N, H, W, 3) float in [0, 1], "truth" (N, H, W) uint8, "pred" (N, H, W) uint8, "classes"} of a
    finished segmentation transfer unit: its last-epoch weights on the first `count` test images."""
    weights = unit.deps["weights"].dir(cache)
    step = unit.cfg["step"]
    state = torch.load(weights / ("theta0.pt" if step == 0 else f"step{step}.pt"), map_location="cpu")
    ckpt = read_checkpoint(unit.dir(cache) / "checkpoint.pt")
    if ckpt is None:
        raise FileNotFoundError(f"{unit.dir(cache) / 'checkpoint.pt'}: the unit's weights are gone; rerun the table")
    x, y, shown, task, up, test = _test_images(unit, state, count)
    model = task.build(state, up, test)
    model.load_state_dict(ckpt["model"])
    model.eval()
    pred = model(x).argmax(1)
    image = shown.permute(0, 2, 3, 1)
    image = (image - image.amin((1, 2, 3), keepdim=True)) / (image.amax((1, 2, 3), keepdim=True)
                                                            - image.amin((1, 2, 3), keepdim=True)).clamp_min(1e-8)
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, -1, 3)
    return {"image": image.numpy(), "truth": y.numpy().astype(np.uint8), "pred": pred.numpy().astype(np.uint8),
            "classes": np.array(test.class_names or [str(c) for c in range(test.num_classes)])}


def write_mask_samples(grid: list[tuple[dict, Unit]], cache: Path, out: Path, rate: float, count: int = 6) -> Path:
    """Predict `count` test images with the trial-0 run of each `SAMPLE_ROWS` row at its deepest step (the first
    column) and save them to `out` (.npz: image, truth, classes, and pred_<i> with label_<i>)."""
    first_col = grid[0][0]["column"]
    picks: dict[str, tuple[dict, Unit]] = {}
    for ident, unit in grid:
        if ident["trial"] == 0 and ident["column"] == first_col and ident["method"] in SAMPLE_ROWS:
            if ident["method"] not in picks or ident["steps"] > picks[ident["method"]][0]["steps"]:
                picks[ident["method"]] = (ident, unit)
    arrays: dict[str, np.ndarray] = {}
    for i, method in enumerate(m for m in SAMPLE_ROWS if m in picks):
        ident, unit = picks[method]
        got = predict_unit_masks(unit, cache, count)
        arrays.setdefault("image", got["image"])
        arrays.setdefault("truth", got["truth"])
        arrays.setdefault("classes", got["classes"])
        arrays[f"pred_{i}"] = got["pred"]
        arrays[f"label_{i}"] = np.array(row_label(method, ident["steps"], rate))

    def write(tmp: Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        Path(tmp).write_bytes(buf.getvalue())
    return atomic_write(out, write)
