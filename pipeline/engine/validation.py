"""A per-epoch validation figure for the training curves: mAP50 of the model being trained on a
fixed val subset, measured after each epoch by the trainer (rank 0) and logged with the epoch's
record (DVCLive ``epoch/val_mAP50``, :mod:`pipeline.engine.live`).

The subset is the first ``train.epoch_val_images`` images of the curated val split, in the
split's order, so every epoch and every model of a dataset is scored on the same images. The
score is the project's own COCO AP50 (:func:`pipeline.metrics.evaluate_detections`), the figure
the evaluate stage reports on the whole split.

Measuring changes nothing about training: the model's train/eval mode and every random number
generator (Python, numpy, torch, CUDA) are restored afterwards, so the trained weights are the
same with the measurement on or off.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.artifacts import curated_path
from pipeline.config import Params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.engine.inference import predict_dataset
from pipeline.metrics import evaluate_detections

Validate = Callable[[nn.Module], dict[str, float]]


def first_images(coco: dict[str, Any], count: int) -> dict[str, Any]:
    """The curated dict ``coco`` cut to its first ``count`` images (all when fewer) and their
    annotations."""
    images = coco["images"][:count]
    kept = {record["id"] for record in images}
    return {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in kept]}


class _RandomState:
    """Python, numpy, torch and (when present) CUDA generator states, restored on exit."""

    def __enter__(self) -> None:
        self.python, self.numpy, self.torch = random.getstate(), np.random.get_state(), torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def __exit__(self, *exc: object) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def val_map50(model: nn.Module, val: CuratedDataset, device: torch.device, batch_size: int) -> dict[str, float]:
    """``{"val_mAP50": <percent>}`` of ``model`` on ``val``; mode and generators restored."""
    was_training = model.training
    try:
        with _RandomState():
            detections = predict_dataset(model, val, device, batch_size, progress=False)
    finally:
        model.train(was_training)
    return {"val_mAP50": float(evaluate_detections(val.coco, detections)["mAP50"])}


def epoch_validation(params: Params, dataset: str, device: torch.device) -> Validate | None:
    """The trainer's ``validate`` callable for ``dataset`` (``None`` when
    ``train.epoch_val_images`` is 0)."""
    count = params.train.epoch_val_images
    if not count:
        return None
    val = CuratedDataset(first_images(load_curated(curated_path(dataset, "val")), count), params.input, train=False)
    return lambda model: val_map50(model, val, device, params.eval.batch_size)
