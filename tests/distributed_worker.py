"""A few training steps, run by tests/test_distributed.py as one process or under torchrun.

    python tests/distributed_worker.py --data train.json --run-dir D --out model.pt --epochs 1
    torchrun --standalone --nproc-per-node=2 tests/distributed_worker.py ... (same arguments)

Builds a ResNet-18 GFL from a fixed seed (BatchNorm in eval mode, so the step does not
depend on how the global batch is split), trains through the project's own loop with the
process group and DDP wrapper of :mod:`pipeline.engine.distributed`, and lets rank 0 write
the final weights. ``--kd METHOD`` distils it from a (randomly initialised, frozen) ResNet-18
teacher with that KD method instead.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.config import DistillParams, InputParams
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.distill.distiller import Distiller
from pipeline.distill.methods import build_method
from pipeline.engine import distributed
from pipeline.engine.trainer import LoopConfig, seed_everything, train
from pipeline.models.factory import build_detector

INPUT = InputParams(width=160, height=64, flip_prob=0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fingerprint", default="equivalence")
    parser.add_argument("--kd", default=None, help="KD method name (student of --teacher)")
    parser.add_argument("--student-grad", default="fused", choices=["fused", "separate"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    cfg = LoopConfig(epochs=args.epochs, batch_size=4, lr=0.01, warmup_iters=2, warmup_ratio=0.5,
                     grad_clip=35.0, num_workers=0, seed=0)
    env, device = distributed.setup(torch.device("cpu"), "gloo", cfg.batch_size)
    data = CuratedDataset(load_curated(args.data), INPUT, train=True, seed=0)
    seed_everything(0)
    model = build_detector("gfl", "resnet18", len(data.class_names), norm_eval=True)
    extra, extra_module = None, None
    if args.kd:
        teacher = build_detector("gfl", "resnet18", len(data.class_names), norm_eval=True)  # seeded above
        method = build_method(args.kd, "gfl", DistillParams())
        extra, extra_module = Distiller(model, teacher, method, args.student_grad).to(device), method
    train(model, data, cfg, args.run_dir, device, args.fingerprint, extra=extra, extra_module=extra_module,
          rank=env.rank, world_size=env.world_size, wrap=distributed.ddp_wrapper(env, device))
    if env.is_main:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.out)
    distributed.teardown(env)


if __name__ == "__main__":
    main()
