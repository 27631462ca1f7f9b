"""Do the KD methods help, and is the gain real? One teacher, N seeds of every student, intervals.

    .venv/bin/python benchmarks/kd_claims.py                     # CPU scale (about 2 h on 2 cores)
    .venv/bin/python benchmarks/kd_claims.py --profile gpu       # larger, for a GPU machine
    .venv/bin/python benchmarks/kd_claims.py --seeds 2 --methods inherit_only gkd_bmfi   # a subset
    .venv/bin/python benchmarks/kd_claims.py --profile smoke --seeds 2  # a minute: checks the script

Not part of `dvc repro` or CI. In ``--workdir`` (default ``.kd_claims/<profile>``, ignored by git)
it writes its own params.yaml, synthesizes and curates the synthetic scenes, trains one
ResNet-101 GFL teacher, then for each seed ``k`` (params ``seed: k``, so the student's initial
weights and the data order change) trains the ResNet-18 baseline and distils every method under
``distill.balance: auto`` (the embedded default's rule), through the pipeline's own stage
scripts. Every model is evaluated on the same val images; finished steps are skipped when the
script is run again, so a killed run resumes.

The scale is chosen so that the premise of distillation holds: the teacher trains longer
(``teacher_epochs``) and should lead the baseline by at least 5 mAP50 *and* the inherit-only
control; the script prints whether it does. Val holds at least 200 images.

Printed per method: mean mAP50 +- std over seeds, the mean gain over the baseline, over
inherit-only, over mimic and over FGD, each with its 95% interval (paired bootstrap over val
images and seeds, :func:`pipeline.metrics.bootstrap.paired_gain`), and the training wall time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.dataset import load_curated  # noqa: E402
from pipeline.engine.runs import RunId, curated_path  # noqa: E402
from pipeline.metrics.bootstrap import image_matches, load_detections, paired_gain  # noqa: E402
from pipeline.io import working_dir  # noqa: E402
from pipeline.replicas import merge, prepare  # noqa: E402
from stages import curate, distill, evaluate, synthesize, train  # noqa: E402

DATASET, DETECTOR, STUDENT, TEACHER = "synthetic", "gfl", "resnet18", "teacher-resnet101"
METHODS = ("inherit_only", "mimic", "fgd", "gkd_bmfi")

#: Overrides of params.yaml per profile. cpu: 600 scenes -> about 400 train / 200 val at 320x96;
#: teacher 10 epochs, students 3 (measured rates on 2 cores: R101 2.6 img/s, R18 5.3, GKD-BMFI 2.9).
PROFILES = {
    "smoke": {"synthetic": {"num_images": 30}, "input": {"width": 160, "height": 48},   # checks the script only
              "train": {"epochs": 1, "teacher_epochs": 1, "warmup_iters": 2}},
    "cpu": {"synthetic": {"num_images": 600},
            "curate": {"val_fraction": 0.34},
            "train": {"epochs": 3, "teacher_epochs": 10}},
    "gpu": {"synthetic": {"num_images": 4000, "width": 1280, "height": 384},
            "curate": {"val_fraction": 0.2},
            "input": {"width": 640, "height": 192},
            "train": {"epochs": 12, "teacher_epochs": 24, "batch_size": 16, "lr": 0.02, "lr_steps": [8, 11],
                      "warmup_iters": 200}},
}


def profile_params(profile: str, seed: int, methods: tuple[str, ...]) -> dict:
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), PROFILES[profile])
    return merge(params, {"seed": seed, "datasets": [DATASET],
                          "model": {"detectors": [DETECTOR], "train": [TEACHER, f"baseline-{STUDENT}"]},
                          "distill": {"teacher": TEACHER, "students": [STUDENT], "methods": list(methods),
                                      "gradmap_images": 0, "balance": {"mode": "auto"}, "extra_seeds": []}})


def step(folder: Path, done: Path, what: str, run) -> float:
    """Run ``run()`` inside ``folder`` unless ``done`` exists; returns its wall time (0 if skipped)."""
    if done.exists():
        return 0.0
    start = time.perf_counter()
    with working_dir(folder):
        run()
    took = time.perf_counter() - start
    print(f"  {what}: {took:.0f} s", flush=True)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = (args.workdir or REPO / ".kd_claims" / args.profile).resolve()
    methods = tuple(dict.fromkeys(["inherit_only", *args.methods]))
    start = time.perf_counter()
    walls: dict[str, list[float]] = {}

    prepare(root, profile_params(args.profile, 0, methods), [])
    print(f"kd_claims ({args.profile}) in {root}", flush=True)
    step(root, root / "data" / "raw" / DATASET, "synthesize", lambda: synthesize.main([]))
    step(root, root / curated_path(DATASET, "val"), "curate", lambda: curate.main([DATASET]))
    teacher = RunId(DATASET, DETECTOR, TEACHER)
    walls["teacher"] = [step(root, root / teacher.model_path, "teacher", lambda: train.main([DATASET, DETECTOR, TEACHER]))]
    step(root, root / teacher.metrics_path, "evaluate teacher", lambda: evaluate.main([DATASET, DETECTOR, TEACHER]))

    for seed in range(args.seeds):
        folder = root / f"seed{seed}"
        with working_dir(root):
            prepare(Path(folder.name), profile_params(args.profile, seed, methods), [Path("data"), teacher.model_path])
        print(f"seed {seed}", flush=True)
        models = [f"baseline-{STUDENT}", *(f"{m}-{STUDENT}" for m in methods)]
        for model in models:
            run = RunId(DATASET, DETECTOR, model)
            if model.startswith("baseline"):
                fn = (lambda: train.main([DATASET, DETECTOR, model]))
            else:
                fn = (lambda: distill.main([DATASET, DETECTOR, STUDENT, run.role]))
            walls.setdefault(run.role, []).append(step(folder, folder / run.model_path, model, fn))
            step(folder, folder / run.metrics_path, f"evaluate {model}", lambda: evaluate.main([DATASET, DETECTOR, model]))

    report(root, args.seeds, methods, walls, args.resamples, time.perf_counter() - start)


def report(root: Path, seeds: int, methods: tuple[str, ...], walls: dict[str, list[float]], resamples: int,
           total: float) -> None:
    val = load_curated(root / curated_path(DATASET, "val"))
    folders = [root / f"seed{k}" for k in range(seeds)]

    def matches(role: str) -> list:
        run = RunId(DATASET, DETECTOR, f"{role}-{STUDENT}")
        return [image_matches(val, load_detections(f / run.detections_path)) for f in folders]

    def map50(folder: Path, model: str) -> float:
        return float(json.loads((folder / RunId(DATASET, DETECTOR, model).metrics_path).read_text())["mAP50"])

    teacher = map50(root, TEACHER)
    per = {role: [map50(f, f"{role}-{STUDENT}") for f in folders] for role in ("baseline", *methods)}
    m = {role: matches(role) for role in ("baseline", *methods)}
    base, control = np.mean(per["baseline"]), np.mean(per["inherit_only"])
    print(f"\nval images: {len(val['images'])}; seeds: {seeds}; teacher R101 mAP50 {teacher:.2f}; "
          f"teacher - baseline {teacher - base:+.2f}; teacher - inherit-only {teacher - control:+.2f}")
    premise = bool(teacher - base >= 5 and teacher > control)
    print("premise (teacher >= baseline + 5 and > inherit-only): " + ("holds" if premise else "DOES NOT HOLD"))
    refs = [r for r in ("baseline", "inherit_only", "mimic", "fgd") if r in m]
    head = " | ".join(f"vs {r}" for r in refs)
    print(f"\n| method | mAP50 mean +- std | {head} | train wall (s, mean) |")
    print("| --- | ---: |" + " ---: |" * len(refs) + " ---: |")
    results = {"teacher": teacher, "premise": premise, "val_images": len(val["images"]), "seeds": seeds, "rows": {}}
    for role in ("baseline", *methods):
        values = np.array(per[role])
        cells, row = [], {"mAP50": values.tolist()}
        for ref in refs:
            if ref == role:
                cells.append("-")
                continue
            gain = paired_gain(m[role], m[ref], resamples=resamples)
            row[f"vs_{ref}"] = gain.as_dict()
            cells.append(str(gain))
        wall = np.mean([w for w in walls.get(role, []) if w > 0] or [float("nan")])
        results["rows"][role] = row
        print(f"| {role} | {values.mean():.2f} +- {values.std(ddof=1) if len(values) > 1 else 0:.2f} | "
              + " | ".join(cells) + f" | {wall:.0f} |")
    print(f"\nintervals: 95%, paired bootstrap over val images and seeds ({resamples} resamples); "
          f"total wall {total / 60:.1f} min")
    (root / "claims.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
