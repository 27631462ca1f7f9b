"""GKD-BMFI on the embedded default under other KD settings, against the main run's students.

    .venv/bin/python benchmarks/kd_variants.py                    # after `dvc repro`; every variant
    .venv/bin/python benchmarks/kd_variants.py --variants standardized --students resnet18 resnet50

Two questions the default leaves open (issue #10):

* ``standardized``: does PKD's per-channel standardisation of the imitated features
  (``distill.gkd.standardize: true``) let one KD/task gradient ratio serve both backbones?
  ``distill.balance: auto`` sets the ratio at the start only, so how far it drifts from the
  target during training, and whether that drift differs between ResNet-18 and ResNet-50, is
  what "one ratio serves both" means in practice;
* ``ratio0.2``, ``ratio2``: is ``distill.balance.ratio: 0.5`` a good place on that scale?

Each variant distils the students again in ``.kd_variants/<variant>/`` (ignored by git; the stage
scripts run there on links to the main run's curated data and teacher) and is printed beside the
main run (``main``): the KD/task gradient ratio at calibration and after each epoch, mAP50, the
paired bootstrap interval against the student's baseline and against the main run's GKD-BMFI
student (same val images). One seed per variant: an interval that includes 0 is not a result.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.dataset import load_curated  # noqa: E402
from pipeline.artifacts import balance_log_path, curated_path, raw_dir  # noqa: E402
from pipeline.engine.runs import RunId  # noqa: E402
from pipeline.metrics.bootstrap import image_matches, load_detections, paired_gain  # noqa: E402
from pipeline.replicas import merge, prepare  # noqa: E402

VARIANTS = {
    "standardized": {"distill": {"gkd": {"standardize": True}}},
    "ratio0.2": {"distill": {"balance": {"ratio": 0.2}}},
    "ratio2": {"distill": {"balance": {"ratio": 2.0}}},
}
METHOD = "gkd_bmfi"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--students", nargs="+", default=None, help="default: distill.students")
    parser.add_argument("--workdir", type=Path, default=Path(".kd_variants"))
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()

    os.chdir(REPO)      # the links and the main run's outputs are relative to the repository
    params = yaml.safe_load(Path("params.yaml").read_text())
    dataset, detector = params["datasets"][0], params["model"]["detectors"][0]
    students = args.students or params["distill"]["students"]
    teacher_path = RunId(dataset, detector, params["distill"]["teacher"]).model_path
    links = [curated_path(dataset, "train"), curated_path(dataset, "val"), raw_dir(dataset), teacher_path]
    needed = links + [RunId(dataset, detector, f"{role}-{s}").detections_path for s in students
                      for role in ("baseline", METHOD)]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        sys.exit(f"kd_variants: {missing[0]} is missing; run `dvc repro` first")

    roots = {"main": Path(".")}
    for name in args.variants:
        folder = args.workdir / name
        exported = [f"{METHOD}-{students[0]}"]       # nothing is exported here; a model the workspace trains
        override = merge({"distill": {"methods": [METHOD], "gradmap_images": 0}, "eval": {"pictures": 0},
                          "deploy": {"models": exported}, "qat": {"models": exported}}, VARIANTS[name])
        prepare(folder, merge(params, override), links)
        for student in students:
            run = RunId(dataset, detector, f"{METHOD}-{student}")
            if (folder / run.metrics_path).is_file():
                continue
            for script, stage_args in (("distill.py", [dataset, detector, student, METHOD]),
                                       ("evaluate.py", [dataset, detector, run.model])):
                subprocess.run([sys.executable, str(REPO / "stages" / script), *stage_args], cwd=folder, check=True)
        roots[name] = folder

    val = load_curated(curated_path(dataset, "val"))

    def matches(root: Path, model: str):
        return image_matches(val, load_detections(root / RunId(dataset, detector, model).detections_path))

    print(f"\n{dataset}/{detector} {METHOD}: KD/task gradient ratio at calibration (epoch 0) and after each "
          "epoch; mAP50 with paired 95% intervals (one seed)\n")
    print("| student | variant | ratio by epoch | mAP50 | vs baseline | vs main |")
    print("| --- | --- | --- | ---: | --- | --- |")
    for student in students:
        model = f"{METHOD}-{student}"
        base, main_run = matches(Path("."), f"baseline-{student}"), matches(Path("."), model)
        for name, root in roots.items():
            m = matches(root, model)
            log = root / balance_log_path(dataset, detector, model)
            ratios = [round(r["kd_task_grad_ratio"], 2) for r in json.loads(log.read_text())]
            score = json.loads((root / RunId(dataset, detector, model).metrics_path).read_text())["mAP50"]
            versus = "-" if name == "main" else str(paired_gain([m], [main_run], args.resamples))
            print(f"| {student} | {name} | {ratios} | {score:.2f} | {paired_gain([m], [base], args.resamples)} | "
                  f"{versus} |")


if __name__ == "__main__":
    main()
