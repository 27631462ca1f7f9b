"""One training loop for every role: teacher, baseline student and distilled student.

A step is::

    feats  = model.features(images)                 # FPN levels
    losses = model.losses(feats, batch)             # detection loss terms
    losses |= extra(feats, batch, losses)           # distillation terms (optional)
    sum(losses).backward(); clip; SGD step

so distillation only adds terms. The loop checkpoints after every epoch into
``run_dir/last.pt`` and, when started again with the same configuration fingerprint,
continues from there (a killed ``dvc repro`` resumes). A non-finite loss stops the run
with one line naming the iteration and the term, keeping the last good checkpoint.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pipeline.data.dataset import collate
from pipeline.engine.checkpoint import load_torch, save_torch
from pipeline.engine.live import TrainingLog
from pipeline.engine.schedule import lr_factor
from pipeline.errors import UserError
from pipeline.structures import Batch

ExtraLoss = Callable[[list[Tensor], Batch, dict[str, Tensor]], dict[str, Tensor]]


@dataclass(frozen=True)
class LoopConfig:
    """What the loop needs; built from params' ``train`` section."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    lr_steps: tuple[int, ...] = ()
    gamma: float = 0.1
    grad_clip: float | None = None
    amp: bool = False
    num_workers: int = 0
    seed: int = 0


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0


#: What ``train.amp: true`` computes in per device type: float16 on CUDA (with a GradScaler),
#: bfloat16 on the CPU (fast where the CPU has AVX-512 BF16 or AMX). Other devices: float32.
AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The reduced precision ``train.amp`` means on ``device`` (:data:`AMP_DTYPES`); ``None``
    (float32 throughout) when ``amp`` is off."""
    return AMP_DTYPES.get(device.type) if amp else None


def precision_key(amp: bool) -> str:
    """What ``amp`` means, for the resume key: ``"float32"`` or e.g. ``"cuda:float16,cpu:bfloat16"``
    (a checkpoint of a version where ``amp: true`` meant float32 on the CPU is not resumed)."""
    if not amp:
        return "float32"
    return ",".join(f"{device}:{str(dtype).removeprefix('torch.')}" for device, dtype in AMP_DTYPES.items())


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU runs are then repeatable)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSampler(Sampler[int]):
    """A permutation drawn from ``(seed, epoch)``, optionally sharded for several processes.

    With ``world_size`` processes each takes every ``world_size``-th index of the same
    permutation (padded by wrapping), so the global batch is the same whatever the count.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        order = self._order()
        total = math.ceil(self.size / self.world_size) * self.world_size
        order = (order * (total // max(1, len(order)) + 1))[:total]
        return iter(order[self.rank::self.world_size])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)


def average_gradients(module: nn.Module, world_size: int) -> None:
    """Average ``module``'s gradients over the processes (what DDP does for the model), for the
    trainable layers of a KD method, which live outside the DDP-wrapped model."""
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world_size)


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, persistent_workers=False, pin_memory=torch.cuda.is_available())


def _check_finite(losses: dict[str, Tensor], iteration: int, run_dir: Path) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value.detach()).all():
            raise UserError(
                f"iteration {iteration}: loss term {name!r} is {value.detach().float().item()}; training stopped, "
                f"last good checkpoint kept in {run_dir / 'last.pt'}; lower train.lr or set train.grad_clip"
            )


#: What every ``last.pt`` holds (see :func:`train`).
RESUME_KEYS = frozenset({"fingerprint", "epoch", "history", "model", "optimizer"})


def _resume(run_dir: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device, extra_module: nn.Module | None = None) -> tuple[int, list[dict[str, float]]]:
    """Restore ``last.pt`` if it belongs to this configuration: ``(next_epoch, history)``."""
    path = run_dir / "last.pt"
    if not path.exists():
        return 0, []
    state = load_torch(path)
    if not isinstance(state, dict) or not RESUME_KEYS <= set(state):
        found = type(state).__name__ if not isinstance(state, dict) else f"keys {sorted(state)[:6]}"
        raise UserError(f"{path}: not a resume checkpoint of this pipeline ({found}); delete it (training then "
                        "starts afresh) or restore the stage's own last.pt")
    if state.get("fingerprint") != fingerprint:
        return 0, []
    model.load_state_dict(state["model"])
    if extra_module is not None:
        extra_module.load_state_dict(state["extra_module"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st:
                for k, v in st.items():
                    if isinstance(v, Tensor):
                        st[k] = v.to(device)
    return int(state["epoch"]) + 1, list(state["history"])


def train(model: nn.Module, dataset: Dataset, cfg: LoopConfig, run_dir: Path, device: torch.device,
          fingerprint: str, extra: ExtraLoss | None = None, rank: int = 0, world_size: int = 1,
          wrap: Callable[[nn.Module], nn.Module] | None = None, desc: str = "train",
          on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
          extra_module: nn.Module | None = None,
          epoch_metrics: Callable[[int], dict[str, float]] | None = None,
          log_dir: Path | None = None,
          validate: Callable[[nn.Module], dict[str, float]] | None = None) -> TrainResult:
    """Train ``model`` in place.

    Args:
        model: a detector with ``features``/``losses`` (see pipeline.models.detector).
        dataset: a training :class:`~pipeline.data.dataset.CuratedDataset`.
        run_dir: folder for ``last.pt`` (resumable state); only rank 0 writes.
        fingerprint: identifies the configuration; a ``last.pt`` with another one is ignored.
        extra: adds distillation loss terms to each step.
        rank, world_size: this process's place among ``world_size`` data-parallel ones.
        wrap: wraps the model for the step (DistributedDataParallel); the unwrapped model
            is what is checkpointed.
        extra_module: trainable layers ``extra`` owns outside the model (a KD method's own
            modules): their parameters join the optimiser after the model's and their state
            is kept in ``last.pt`` for resuming, not in the model.
        epoch_metrics: called on every process after each epoch's last step with the epoch
            index; its figures join that epoch's record (and so the checkpointed history).
        log_dir: rank 0 logs the loss terms, lr and images/s every few steps and each epoch's
            record there through DVCLive (:class:`pipeline.engine.live.TrainingLog`).
        validate: called on rank 0 with the (unwrapped) model after each epoch; its figures join
            that epoch's record (:func:`pipeline.engine.validation.epoch_validation`: val mAP50).
            It must leave the model's mode and the random generators as it found them.

    ``cfg.amp`` runs the forward and the losses under autocast (:func:`autocast_dtype`: float16
    with a GradScaler on CUDA, bfloat16 on the CPU); parameters, gradients and the optimiser stay
    float32. An ``extra`` with a ``set_loss_scale`` method is told the GradScaler's current scale
    before each float16 step (the distiller scales its own gradients with it); bfloat16 has
    float32's exponent range and needs no scaling.
    """
    is_main = rank == 0
    seed_everything(cfg.seed + rank)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if extra_module is not None:
        extra_module.to(device)
        params += [p for p in extra_module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    start_epoch, history = _resume(run_dir, fingerprint, model, optimizer, device, extra_module)
    result = TrainResult(history=history, resumed_from_epoch=start_epoch)
    if start_epoch >= cfg.epochs:
        return result
    stepper = wrap(model) if wrap is not None else model
    sampler = EpochSampler(len(dataset), cfg.seed, rank, world_size)
    local_batch = max(1, cfg.batch_size // world_size)
    loader = make_loader(dataset, local_batch, sampler, cfg.num_workers)
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    iters_per_epoch = len(loader)
    log = TrainingLog(log_dir, start_epoch * iters_per_epoch) if is_main and log_dir is not None else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            model.train()
            if extra_module is not None:
                extra_module.train()
            sums: dict[str, float] = {}
            seen, start = 0, time.perf_counter()
            bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", disable=not is_main,
                       mininterval=2.0, dynamic_ncols=True, leave=True)
            for step, batch in enumerate(bar):
                iteration = epoch * iters_per_epoch + step
                factor = lr_factor(iteration, epoch, cfg.warmup_iters, cfg.warmup_ratio, cfg.lr_steps, cfg.gamma)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * factor
                batch = batch.to(device)
                if scaler.is_enabled() and hasattr(extra, "set_loss_scale"):
                    extra.set_loss_scale(scaler.get_scale())
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    feats = stepper.features(batch.images) if wrap is None else stepper(batch.images)
                    losses = model.losses(feats, batch)
                    if extra is not None:
                        losses.update(extra(feats, batch, losses))
                _check_finite(losses, iteration, run_dir)
                total = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if world_size > 1 and extra_module is not None:
                    average_gradients(extra_module, world_size)
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                n = len(batch) * world_size
                seen += n
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
                sums["loss"] = sums.get("loss", 0.0) + float(total.detach()) * n
                if is_main:
                    rate = seen / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items()} | {"img/s": f"{rate:.1f}"},
                                    refresh=False)
                    if log is not None:
                        figures = {k: float(v.detach()) for k, v in losses.items()}
                        figures.update(loss=float(total.detach()), lr=cfg.lr * factor, images_per_s=rate)
                        log.step(iteration, figures, last_of_epoch=step == iters_per_epoch - 1)
            elapsed = time.perf_counter() - start
            record = {"epoch": epoch + 1, "lr": cfg.lr * factor, "images_per_s": seen / max(elapsed, 1e-9),
                      **{k: v / max(seen, 1) for k, v in sums.items()}}
            if epoch_metrics is not None:
                record.update(epoch_metrics(epoch))
            if validate is not None and is_main:
                record.update(validate(model))
            history.append(record)
            if is_main:
                state = {"fingerprint": fingerprint, "epoch": epoch, "history": history,
                         "model": model.state_dict(), "optimizer": optimizer.state_dict()}
                if extra_module is not None:
                    state["extra_module"] = extra_module.state_dict()
                save_torch(state, run_dir / "last.pt")
                if log is not None:
                    log.epoch(iteration, record)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, record)
    finally:
        if log is not None:
            log.close()
    return result


def describe(result: TrainResult) -> dict[str, Any]:
    """Summary figures of a finished run."""
    last = result.history[-1] if result.history else {}
    rates = [h["images_per_s"] for h in result.history]
    return {"epochs": len(result.history), "final_loss": last.get("loss"),
            "images_per_s": float(np.mean(rates)) if rates else None}
