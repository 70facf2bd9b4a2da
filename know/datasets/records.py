"""What a raw loader returns: images (uint8 tensors, or image files decoded later) and the task's targets."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

Images = Tensor | list[Path]  # uint8 (N, C, H, W) in memory, or N image files (decoded by know.data)


@dataclass
class Labeled:
    """A classification split. `domains` (N,) and `domain_names` are set by multi-domain sets (PACS, styles)."""

    images: Images
    labels: Tensor  # int64 (N,)
    classes: list[str]  # class names; label i is classes[i]
    domains: Tensor | None = None  # int64 (N,): index into domain_names
    domain_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Segmented:
    """A semantic-segmentation split: masks hold class ids, 255 = ignore."""

    images: Images
    masks: Tensor | list[Path]  # uint8 (N, H, W), or N mask files read by `decode_mask`
    classes: list[str]
    decode_mask: Callable[[Path], Tensor] | None = None  # mask file -> uint8 (H, W) class ids, 255 = ignore

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Captioned:
    """An image-captioning split: every image with its reference captions (raw text, several per image)."""

    images: Images
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.captions)
