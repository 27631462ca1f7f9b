"""Plain records passed between data loading, detectors, metrics and export.

Box convention everywhere in this project: ``x1, y1, x2, y2`` in pixels, float32,
with ``x2 >= x1`` and ``y2 >= y1`` (MMDetection's ``use_legacy_coordinate=False``:
a box's width is ``x2 - x1``, no +1).

Two coordinate frames appear:

* *input pixels*: the network input after keep-ratio resize, optional horizontal
  flip and bottom/right padding. :class:`Batch` boxes live here.
* *original pixels*: the image file as stored on disk. :class:`Detections` handed
  to the metrics live here; :meth:`Batch.to_original` converts.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Detections:
    """Detections for one image.

    Attributes:
        boxes: ``[K, 4]`` float32, x1,y1,x2,y2.
        scores: ``[K]`` float32 in [0, 1].
        labels: ``[K]`` int64, contiguous class index ``0..C-1`` (position in the
            curated json's ``categories`` list).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[-1] != 4:
            raise ValueError(f"Detections.boxes must be [K, 4], got {tuple(self.boxes.shape)}")
        k = self.boxes.shape[0]
        if self.scores.shape != (k,) or self.labels.shape != (k,):
            raise ValueError(
                f"Detections: scores {tuple(self.scores.shape)} and labels "
                f"{tuple(self.labels.shape)} must both be [{k}]"
            )

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> "Detections":
        return Detections(
            boxes=torch.zeros((0, 4), device=device),
            scores=torch.zeros((0,), device=device),
            labels=torch.zeros((0,), dtype=torch.long, device=device),
        )

    def to(self, device: torch.device | str) -> "Detections":
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class Batch:
    """A collated training or evaluation batch.

    Attributes:
        images: ``[N, 3, H, W]`` float32, normalised (mean/std from params), padded at
            the bottom and right to a multiple of the pad divisor. ``H, W`` are the
            padded input size.
        boxes: per image ``[K_i, 4]`` float32 ground-truth boxes in input pixels.
        labels: per image ``[K_i]`` int64 contiguous class indices.
        ignore_boxes: per image ``[M_i, 4]`` float32 ignore regions in input pixels
            (KITTI DontCare/Misc, COCO crowd); detections on them are neither TP nor FP
            and no training target is drawn from them.
        image_ids: per image the ``id`` of the curated json's image record.
        scale_factors: ``[N, 2]`` float32 ``(sx, sy)``: input = original * scale before
            flipping.
        flipped: ``[N]`` bool, whether the image was mirrored horizontally.
        image_sizes: per image ``(h, w)`` of the resized image before padding.
        orig_sizes: per image ``(h, w)`` of the original image file.
    """

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    ignore_boxes: list[Tensor]
    image_ids: list[int]
    scale_factors: Tensor
    flipped: Tensor
    image_sizes: list[tuple[int, int]]
    orig_sizes: list[tuple[int, int]]
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_shape(self) -> tuple[int, int]:
        """Padded input ``(H, W)`` shared by every image of the batch."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def to(self, device: torch.device | str) -> "Batch":
        return replace(
            self,
            images=self.images.to(device, non_blocking=True),
            boxes=[b.to(device) for b in self.boxes],
            labels=[lab.to(device) for lab in self.labels],
            ignore_boxes=[b.to(device) for b in self.ignore_boxes],
            scale_factors=self.scale_factors.to(device),
            flipped=self.flipped.to(device),
        )

    def to_original(self, index: int, boxes: Tensor) -> Tensor:
        """Map ``[K, 4]`` boxes of image ``index`` from input to original pixels.

        Undoes the flip (about the resized image width, not the padded width), then
        the scale, and clips to the original image.
        """
        h, w = self.image_sizes[index]
        out = boxes.clone().float()
        if bool(self.flipped[index]):
            x1 = w - out[:, 2]
            x2 = w - out[:, 0]
            out[:, 0], out[:, 2] = x1, x2
        sx, sy = (float(v) for v in self.scale_factors[index])
        out[:, 0::2] /= sx
        out[:, 1::2] /= sy
        oh, ow = self.orig_sizes[index]
        out[:, 0::2] = out[:, 0::2].clamp(0, ow)
        out[:, 1::2] = out[:, 1::2].clamp(0, oh)
        return out
