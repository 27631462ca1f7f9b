"""DVC stage `replica@<dataset>-<detector>-<student>-<seed>`: one student's baseline and every KD
method of ``distill.methods`` again, with ``seed`` replaced (params ``distill.extra_seeds``).

    python stages/replica.py <dataset> <detector> <student backbone> <seed>

Works in replicas/seed<seed>/<dataset>/<detector>/<student>/ (pipeline/replicas.py): a params.yaml
equal to the project's but for the seed, links to data/ and the teacher, then the
train, distill and evaluate stage scripts run there, unchanged (its models/ and checkpoints/ stay
there, so a killed replica resumes). Its outputs are the metrics and val detections of the
baseline and each method, copied to metrics/<dataset>/<detector>/seed<seed>/<student>/ and
detections/<dataset>/<detector>/seed<seed>/<student>/, which the distillation tables read for
mean +- std and intervals over seeds.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.artifacts import DATA_ROOT, replica_copy, replica_workspace
from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.engine.runs import RunId
from pipeline.errors import UserError, exit_on_user_error
from pipeline.io import atomic_dir
from pipeline.replicas import merge, prepare


def replica_params(raw: dict, dataset: str, detector: str, student: str, seed: int) -> dict:
    """The workspace's params: the project's ``raw`` params with ``seed`` and this one dataset,
    detector and student (no gradient maps, pictures or exports: metrics and detections only)."""
    return merge(raw, {"seed": seed, "datasets": [dataset], "model": {"detectors": [detector]},
                       "distill": {"students": [student], "gradmap_images": 0, "extra_seeds": []},
                       "eval": {"pictures": 0}, "deploy": {"models": [f"baseline-{student}"]},
                       "qat": {"models": [f"baseline-{student}"]}})


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("student", help="student backbone, e.g. resnet18")
    parser.add_argument("seed", type=int)
    parser.add_argument("--params", default=str(DEFAULT_PARAMS))
    args = parser.parse_args(argv)

    params = load_params(args.params)
    if args.seed == params.seed:
        raise UserError(f"{args.params}: seed {args.seed} is the main run's seed; a replica needs another one "
                        "(distill.extra_seeds)")
    raw = yaml.safe_load(Path(args.params).read_text())
    teacher = RunId(args.dataset, args.detector, params.distill.teacher).model_path
    folder = replica_workspace(args.seed, args.dataset, args.detector, args.student)
    # the data folder whole: the curated json names its images under data/raw/<dataset>/
    prepare(folder, replica_params(raw, args.dataset, args.detector, args.student, args.seed),
            [DATA_ROOT, teacher])
    start = time.perf_counter()
    models = [f"baseline-{args.student}", *(f"{m}-{args.student}" for m in params.distill.methods)]
    stages = Path(__file__).resolve().parent
    commands = [["train.py", args.dataset, args.detector, models[0]],
                ["evaluate.py", args.dataset, args.detector, models[0]]]
    for method, model in zip(params.distill.methods, models[1:]):
        commands += [["distill.py", args.dataset, args.detector, args.student, method],
                     ["evaluate.py", args.dataset, args.detector, model]]
    for script, *stage_args in commands:   # the stage scripts themselves, unchanged, in the workspace
        done = subprocess.run([sys.executable, str(stages / script), *stage_args], cwd=folder)
        if done.returncode != 0:
            raise SystemExit(done.returncode)   # the stage printed its own one-line error
    for kind in ("metrics_path", "detections_path"):
        runs = [RunId(args.dataset, args.detector, m) for m in models]
        target = replica_copy(getattr(runs[0], kind).parent, args.seed, args.student)
        with atomic_dir(target) as out:
            for run in runs:
                shutil.copy2(folder / getattr(run, kind), out / getattr(run, kind).name)
    print(f"replica seed {args.seed} of {args.dataset}/{args.detector}/{args.student}: baseline and "
          f"{len(params.distill.methods)} methods in {time.perf_counter() - start:.0f} s -> {folder}")


if __name__ == "__main__":
    main()
