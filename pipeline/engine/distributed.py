"""Data-parallel training under ``torchrun`` (PyTorch DistributedDataParallel).

A stage script is started either as ``python stages/train.py ...`` (one process) or as
``torchrun --nproc-per-node=K stages/train.py ...`` (K processes on this machine; several
machines add torchrun's rendezvous options). The launcher prefix comes from
``params.yaml: distributed.launcher`` and ``dvc.yaml`` puts it in front of each training
command, so the DVC stage itself never changes.

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` reads them, joins the
process group (NCCL on CUDA, gloo on CPU unless params say otherwise) and pins each process to
``cuda:<LOCAL_RANK>``. The contract the training loop relies on:

* ``train.batch_size`` is the *global* batch: each of the ``W`` processes takes
  ``batch_size / W`` images of the same per-epoch permutation
  (:class:`pipeline.engine.trainer.EpochSampler`), so the learning rate in params is the
  learning rate of that global batch whatever ``W`` is (linear scaling rule: if you change
  ``batch_size``, scale ``lr`` by the same factor);
* the detectors normalise their losses by the positives of the whole global batch (averaged
  over processes) and DDP averages gradients, so a step equals the one-process step on the
  global batch (``tests/test_distributed.py`` checks it);
* only rank 0 writes checkpoints, logs, progress bars and metrics; every rank reads
  ``params.yaml`` itself (DVC's params API is not used: it fails under several processes);
* resuming works across process counts: ``last.pt`` holds the unwrapped model and optimiser,
  and the sample order depends on the seed and epoch only.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import UserError


def resolve_device(choice: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("params.yaml: train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@dataclass(frozen=True)
class DistEnv:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_torchrun() -> DistEnv:
    """Read ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` (absent: one process)."""
    try:
        return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                       int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError as err:
        raise UserError(f"bad torchrun environment ({err}); launch with torchrun or plain python") from None


def setup(device: torch.device, backend: str = "auto", global_batch: int | None = None) -> tuple[DistEnv, torch.device]:
    """Join the process group when started by torchrun; returns ``(env, device)``.

    Args:
        device: the device params chose (``cuda`` or ``cpu``); on CUDA each process gets
            ``cuda:<LOCAL_RANK>``.
        backend: ``auto`` (NCCL on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
        global_batch: ``train.batch_size``; it must split evenly over the processes.
    """
    env = env_from_torchrun()
    if not env.distributed:
        return env, device
    if global_batch is not None and global_batch % env.world_size:
        raise UserError(f"params.yaml: train.batch_size = {global_batch} does not split over {env.world_size} "
                        f"processes; make it a multiple of the process count")
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                            "lower --nproc-per-node in distributed.launcher")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return env, device


def ddp_wrapper(env: DistEnv, device: torch.device) -> Callable[[nn.Module], nn.Module] | None:
    """The ``wrap`` argument of :func:`pipeline.engine.trainer.train` (``None`` for one process).

    Only the trained model is wrapped; a distillation teacher stays a plain frozen module on
    every rank (it has no gradients to synchronise).
    """
    if not env.distributed:
        return None

    def wrap(model: nn.Module) -> nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    return wrap


def convert_sync_bn(model: nn.Module, env: DistEnv, device: torch.device, enabled: bool) -> nn.Module:
    """Turn every BatchNorm into SyncBatchNorm when asked and distributed.

    Call it before the optimiser is built (the conversion replaces modules). PyTorch's
    SyncBatchNorm runs on CUDA only, so asking for it on CPU is an error.
    """
    if not (enabled and env.distributed):
        return model
    if device.type != "cuda":
        raise UserError("params.yaml: distributed.sync_bn = true needs CUDA (PyTorch's SyncBatchNorm has no CPU "
                        "kernel); set it to false for CPU runs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
