"""DVC stage `train@<dataset>-<detector>-<model>`: train a teacher or a baseline student.

Writes models/<dataset>/<detector>/<model>.pt and, through DVCLive, dvclive/<dataset>/<detector>/
<model>/ (loss terms, learning rate, images/s every few steps and per epoch: DVC metrics and
plots). Resumable state lives in checkpoints/<dataset>/<detector>/<model>/last.pt, git-ignored scratch
that DVC neither tracks nor deletes: a killed `dvc repro` continues from the last finished epoch when
it is there, and a workspace without it (a clone, `dvc exp run --temp`) is still up to date, since
the stage's outputs (model, DVCLive files) come from DVC's cache.

Runs as one process (``python stages/train.py ...``) or data-parallel under torchrun
(``params.yaml: distributed.launcher``); only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import time

from pipeline.config import load_params
from pipeline.engine import distributed
from pipeline.engine.checkpoint import Arch, save_model
from pipeline.engine.recipe import loop_config, role_epochs, training_set, weights_fingerprint
from pipeline.engine.runs import RunId
from pipeline.engine.trainer import seed_everything, train
from pipeline.engine.validation import epoch_validation
from pipeline.errors import exit_on_user_error
from pipeline.models.factory import build_detector


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
    epochs = role_epochs(params, run.role)
    cfg = loop_config(params, epochs)
    env, device = distributed.setup(distributed.resolve_device(params.train.device), params.distributed.backend,
                                    cfg.batch_size)
    model = distributed.convert_sync_bn(model, env, device, params.distributed.sync_bn)
    key = weights_fingerprint(run, arch, cfg, params, data)
    start = time.perf_counter()
    result = train(model, data, cfg, run.checkpoint_dir, device, key, desc=str(run), rank=env.rank,
                   world_size=env.world_size, wrap=distributed.ddp_wrapper(env, device), log_dir=run.live_dir,
                   validate=epoch_validation(params, run.dataset, device))
    if env.is_main:
        save_model(run.model_path, model, arch, meta={"role": run.role, "epochs": epochs, "dataset": run.dataset,
                                                      "processes": env.world_size})
        rate = sum(h["images_per_s"] for h in result.history) / max(1, len(result.history))
        print(f"trained {run} in {time.perf_counter() - start:.0f} s on {env.world_size} x {device} "
              f"({rate:.2f} images/s, final loss {result.history[-1]['loss']:.3f}) -> {run.model_path}")
    distributed.teardown(env)


if __name__ == "__main__":
    main()
