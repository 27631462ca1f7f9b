"""Which images calibrate int8: the one choice of both int8 paths.

Post-training int8 (:func:`pipeline.deploy.bundle.calibration_feeds`, the export stage) and
quantization-aware training (the ``amax`` of each input quantizer, the qat stage) calibrate on
the same ``deploy.calib_images`` curated TRAINING images (never val), spread evenly over the split
and loaded without flips, so a QAT model starts from the ranges its post-training int8 sibling
was calibrated with.
"""
from __future__ import annotations

from pipeline.data.dataset import CuratedDataset, spread_indices


def calibration_images(train: CuratedDataset, count: int) -> list[int]:
    """Indices into ``train`` (the training split loaded with ``train=False``: no flips) of the
    ``count`` calibration images, spread evenly over it (all of it when ``count >= len(train)``),
    in increasing order."""
    return spread_indices(len(train), count)
