"""From params to a training run: the loop settings, the training set and the resume fingerprint.

Shared by the `train` and `distill` stages (and the benchmarks), so that no stage imports another.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from pipeline.artifacts import curated_path
from pipeline.config import Params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.engine.checkpoint import Arch
from pipeline.engine.runs import RunId
from pipeline.engine.trainer import LoopConfig, precision_key
from pipeline.io import file_sha256

#: LoopConfig fields that do not change the trained weights: a run resumes across a change of them
#: (the flips are drawn from (seed, epoch, index), so the data order is the same for any worker count).
NOT_IN_WEIGHTS = ("num_workers",)


def fingerprint(*parts: Any) -> str:
    """Stable hash of json-serialisable configuration parts (for resuming checkpoints)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def role_epochs(params: Params, role: str) -> int:
    """Epochs of a model of ``role``: the teacher's ``train.teacher_epochs`` (else ``train.epochs``);
    a distilled student's ``distill.epochs`` (else ``train.epochs``, the baselines' budget)."""
    if role == "teacher":
        return params.train.teacher_epochs or params.train.epochs
    if role == "baseline":
        return params.train.epochs
    return params.distill.epochs or params.train.epochs


def loop_config(params: Params, epochs: int) -> LoopConfig:
    """The loop settings of params' ``train`` section, with ``epochs`` for this role."""
    t = params.train
    return LoopConfig(epochs=epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                      weight_decay=t.weight_decay, warmup_iters=t.warmup_iters, warmup_ratio=t.warmup_ratio,
                      lr_steps=t.lr_steps, gamma=t.gamma, grad_clip=t.grad_clip, amp=t.amp,
                      num_workers=t.num_workers, seed=params.seed)


def training_set(params: Params, dataset: str) -> CuratedDataset:
    """The curated training split of ``dataset`` (the first ``train.max_train_images`` when set),
    with training-time flips."""
    coco = load_curated(curated_path(dataset, "train"))
    if params.train.max_train_images:
        coco = {**coco, "images": coco["images"][: params.train.max_train_images]}
    return CuratedDataset(coco, params.input, train=True, seed=params.seed)


def data_digest(data: CuratedDataset) -> str:
    """sha256 of what a run learns from: the curated split as loaded (categories, image records,
    annotations: every label and ignore region; not ``info.image_root``, a path) and the bytes of
    every image file it reads. A fixed label, a re-generated image or another curation setting
    changes it; moving the data folder does not. Cost: one read of the training images (about
    0.1 s for the default's 200 synthetic scenes, about 6 s per GB of images)."""
    split = {**data.coco, "info": {k: v for k, v in data.coco.get("info", {}).items() if k != "image_root"},
             "images": data.images}
    digest = hashlib.sha256(json.dumps(split, sort_keys=True, default=str).encode())
    for record in data.images:
        digest.update(file_sha256(data.image_root / record["file_name"]).encode())
    return digest.hexdigest()


def weights_fingerprint(run: RunId, arch: Arch, cfg: LoopConfig, params: Params, data: CuratedDataset,
                        *extra: Any) -> str:
    """The resume key of a training run: everything that changes its weights, nothing else.

    A ``last.pt`` written under another key is not resumed. In: the run, its architecture, the
    loop settings (not the worker count; ``train.amp`` as the precisions it trains in), the input settings, the backbone's init and freezing, the
    content of the training data (:func:`data_digest`) and ``extra`` (the settings of the KD method
    being run, :func:`pipeline.distill.methods.method_settings`, and the teacher's sha256). Not in:
    the process count (a run resumes under another count), the worker count, paths, the settings
    of methods the run does not use.
    """
    loop = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_WEIGHTS}
    loop["amp"] = precision_key(cfg.amp)
    return fingerprint(run.model, run.detector, arch.as_dict(), loop, params.input.model_dump(),
                       params.model.model_dump(include={"weights", "norm_eval", "frozen_stages"}),
                       data_digest(data), *extra)
