"""DVC stage `train@<dataset>-<detector>-<model>`: train a teacher or a baseline student.

Writes models/<dataset>/<detector>/<model>.pt and logs/train/<dataset>/<detector>/<model>.json
(per-epoch loss terms, learning rate, images/s: a DVC plot). Resumable state lives in
checkpoints/<dataset>/<detector>/<model>/last.pt (a persistent DVC output), so a killed
`dvc repro` continues from the last finished epoch.

Runs as one process (``python stages/train.py ...``) or data-parallel under torchrun
(``params.yaml: distributed.launcher``); only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import time

from pipeline.config import load_params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.engine import distributed
from pipeline.engine.checkpoint import Arch, save_model
from pipeline.engine.runs import RunId, curated_path, fingerprint, resolve_device
from pipeline.engine.trainer import LoopConfig, seed_everything, train
from pipeline.errors import exit_on_user_error
from pipeline.io import write_json
from pipeline.models.factory import build_detector


def loop_config(params, epochs: int) -> LoopConfig:
    """The loop settings of params' ``train`` section, with ``epochs`` for this role."""
    t = params.train
    return LoopConfig(epochs=epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                      weight_decay=t.weight_decay, warmup_iters=t.warmup_iters, warmup_ratio=t.warmup_ratio,
                      lr_steps=t.lr_steps, gamma=t.gamma, grad_clip=t.grad_clip, amp=t.amp,
                      num_workers=t.num_workers, seed=params.seed)


def training_set(params, dataset: str) -> CuratedDataset:
    coco = load_curated(curated_path(dataset, "train"))
    if params.train.max_train_images:
        coco = {**coco, "images": coco["images"][: params.train.max_train_images]}
    return CuratedDataset(coco, params.input, train=True, seed=params.seed)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("model", help="<role>-<backbone>, e.g. teacher-resnet101")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run = RunId(args.dataset, args.detector, args.model)
    data = training_set(params, run.dataset)
    arch = Arch(run.detector, run.backbone, len(data.class_names), tuple(data.class_names),
                params.model.fpn_channels)
    seed_everything(params.seed)  # the initial weights too are a function of the seed
    model = build_detector(run.detector, run.backbone, arch.num_classes, params.model.weights,
                           params.model.fpn_channels, params.model.norm_eval, params.model.frozen_stages)
    epochs = (params.train.teacher_epochs or params.train.epochs) if run.role == "teacher" else params.train.epochs
    cfg = loop_config(params, epochs)
    env, device = distributed.setup(resolve_device(params.train.device), params.distributed.backend,
                                    cfg.batch_size)
    model = distributed.convert_sync_bn(model, env, device, params.distributed.sync_bn)
    # The process count is not part of the fingerprint: a run resumes under another count.
    key = fingerprint(run.model, run.detector, arch.as_dict(), cfg, params.input.model_dump(),
                      params.model.model_dump(include={"weights", "norm_eval", "frozen_stages"}),
                      [img["id"] for img in data.images])
    start = time.perf_counter()
    result = train(model, data, cfg, run.checkpoint_dir, device, key, desc=str(run), rank=env.rank,
                   world_size=env.world_size, wrap=distributed.ddp_wrapper(env, device))
    if env.is_main:
        save_model(run.model_path, model, arch, meta={"role": run.role, "epochs": epochs, "dataset": run.dataset,
                                                      "processes": env.world_size})
        write_json(run.train_log_path, result.history)
        rate = sum(h["images_per_s"] for h in result.history) / max(1, len(result.history))
        print(f"trained {run} in {time.perf_counter() - start:.0f} s on {env.world_size} x {device} "
              f"({rate:.2f} images/s, final loss {result.history[-1]['loss']:.3f}) -> {run.model_path}")
    distributed.teardown(env)


if __name__ == "__main__":
    main()
