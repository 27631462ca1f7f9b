"""Do the KD methods help, is the gain real, and does each part of GKD-BMFI add to it (Table 3)?
One teacher, N seeds of every student, intervals.

    .venv/bin/python benchmarks/kd_claims.py                     # CPU scale (about 3 h on 2 cores)
    .venv/bin/python benchmarks/kd_claims.py --profile gpu       # larger, for a GPU machine
    .venv/bin/python benchmarks/kd_claims.py --rows gkd_bmfi:terms bmfi:terms   # a subset
    .venv/bin/python benchmarks/kd_claims.py --profile smoke --seeds 2  # a minute: checks the script
    .venv/bin/python benchmarks/kd_claims.py --workdir .kd_claims/descent --teacher-from .kd_claims/cpu \
        --reference .kd_claims/cpu --set distill.gkd.sign=descent --no-control \
        --rows gkd_bmfi:terms gkd:terms    # one setting changed, read against the unchanged rows
    .venv/bin/python benchmarks/kd_claims.py --workdir .kd_claims/bf16 --teacher-from .kd_claims/cpu --amp \
        --no-control --rows gkd_bmfi --seeds 2 --compare-to .kd_claims/cpu   # the same rows in mixed precision

Not part of `dvc repro` or CI. In ``--workdir`` (default ``.kd_claims/<profile>``, ignored by git)
it writes its own params.yaml, synthesizes and curates the synthetic scenes, trains one
ResNet-101 GFL teacher, then for each seed ``k`` (params ``seed: k``, so the student's initial
weights and the data order change) trains the ResNet-18 baseline and distils every row through
the pipeline's own stage scripts. A row is a KD method under a balance: ``<method>`` under
``distill.balance.mode: auto`` (one factor per method, the authors' proportion inside it) or
``<method>:terms`` under ``auto_terms`` (each term group its own share, ``--shares``; the
Table-3 ablation rows ``gkd_bmfi:terms``, ``bmfi:terms``, ``gkd:terms``). Every model is
evaluated on the same val images; finished steps are skipped when the script is run again, so a
killed run resumes (the ablation rows of every seed first, then the comparison rows).

The scale is chosen so that the premise of distillation holds: the teacher trains longer
(``teacher_epochs``) and should lead the baseline by at least 5 mAP50 *and* the inherit-only
control; the script prints whether it does. Val holds at least 200 images.

Printed per row: mean mAP50 +- std over seeds, the mean gain over the baseline, over
inherit-only, over mimic and over FGD, each with its 95% interval (paired bootstrap over val
images and seeds, :func:`pipeline.metrics.bootstrap.paired_gain`), the KD-to-task gradient ratio
of each term at the calibration and after the last epoch, and the training wall time; then
GKD's own contribution (``gkd_bmfi:terms`` - ``bmfi:terms``) and BMFI's (``gkd_bmfi:terms`` -
``gkd:terms``), each with its interval. Rows with fewer finished seeds are reported with those.

``--teacher-from DIR`` reuses another workdir's data, teacher and params.yaml (so the rows differ
from DIR's only by what the options change, e.g. ``--amp``: mixed precision, bfloat16 on the
CPU, or ``--set distill.gkd.sign=descent``); ``--compare-to DIR`` then prints each row's gain
over the same row in DIR, paired by seed and val image, with its interval (also alone with
``--report-only``); ``--reference DIR`` instead reads the baseline and every row not trained here
from DIR, so the table (contributions included) puts the changed rows among DIR's unchanged ones,
and no baseline is trained here.
"""
from __future__ import annotations

import argparse
import functools
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
from pipeline.artifacts import DATA_ROOT, balance_log_path, curated_path, raw_dir  # noqa: E402
from pipeline.engine.runs import RunId  # noqa: E402
from pipeline.metrics.bootstrap import image_matches, load_detections, paired_gain  # noqa: E402
from pipeline.io import working_dir  # noqa: E402
from pipeline.replicas import merge, prepare  # noqa: E402
from stages import curate, distill, evaluate, synthesize, train  # noqa: E402

DATASET, DETECTOR, STUDENT, TEACHER = "synthetic", "gfl", "resnet18", "teacher-resnet101"
#: The Table-3 rows under per-term balance (run first), then the comparison rows.
ABLATION = ("gkd_bmfi:terms", "bmfi:terms", "gkd:terms")
COMPARISON = ("mimic", "fgd", "gkd_bmfi")
REFERENCES = ("baseline", "inherit_only", "mimic", "fgd")

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


def split_row(row: str) -> tuple[str, str]:
    """``"gkd_bmfi:terms"`` -> ``("gkd_bmfi", "auto_terms")``; ``"fgd"`` -> ``("fgd", "auto")``."""
    method, _, balance = row.partition(":")
    if balance not in ("", "terms"):
        raise SystemExit(f"error: row {row!r}: write <method> (balance auto) or <method>:terms (auto_terms)")
    return method, "auto_terms" if balance else "auto"


#: Where the base params come from: the repository's params.yaml, or ``--teacher-from``'s.
BASE_PARAMS = [REPO / "params.yaml"]


@functools.cache
def base_params() -> dict:
    """params.yaml as it was when the run started: a run of hours must not pick up an edit (or a
    merge) that the code it imported does not know."""
    return yaml.safe_load(BASE_PARAMS[0].read_text())


def profile_params(profile: str, seed: int, methods: tuple[str, ...], balance: str = "auto",
                   shares: dict[str, float] | None = None, amp: bool | None = None,
                   overrides: tuple[dict, ...] = ()) -> dict:
    params = merge(base_params(), PROFILES[profile])
    if amp is not None:
        params = merge(params, {"train": {"amp": amp}})
    for override in overrides:
        params = merge(params, override)
    mode = {"mode": balance, **({"shares": shares} if shares else {})}
    return merge(params, {"seed": seed, "datasets": [DATASET],
                          "model": {"detectors": [DETECTOR], "train": [TEACHER, f"baseline-{STUDENT}"]},
                          "distill": {"teacher": TEACHER, "students": [STUDENT], "methods": list(methods),
                                      "gradmap_images": 0, "balance": mode, "extra_seeds": []},
                          # nothing is exported here; name a model every workspace trains
                          "deploy": {"models": [f"baseline-{STUDENT}"]}, "qat": {"models": [f"baseline-{STUDENT}"]}})


def model_of(row: str) -> str:
    """The student a row trains: ``"gkd_bmfi:terms"`` -> ``"gkd_bmfi-resnet18"``, ``"baseline"`` ->
    ``"baseline-resnet18"``."""
    return f"{'baseline' if row == 'baseline' else split_row(row)[0]}-{STUDENT}"


def row_folder(root: Path, seed: int, row: str) -> Path:
    """Where a row's seed is trained: ``seed<k>/`` (balance auto), ``seed<k>/terms/`` (auto_terms)."""
    return root / f"seed{seed}" / ("terms" if split_row(row)[1] == "auto_terms" else "")


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


def parse_override(text: str) -> dict:
    """``"distill.gkd.sign=descent"`` -> ``{"distill": {"gkd": {"sign": "descent"}}}`` (the value
    read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE, e.g. distill.gkd.sign=descent")
    tree: dict = yaml.safe_load(value)
    for part in reversed(key.strip().split(".")):
        tree = {part: tree}
    return tree


def parse_shares(text: str) -> dict[str, float]:
    """``"gkd=0.5,bmfi=0.5"`` -> ``{"gkd": 0.5, "bmfi": 0.5}``."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    return {k.strip(): float(v) for k, v in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", nargs="+", default=[*ABLATION, *COMPARISON],
                        help="<method> (balance auto) or <method>:terms (auto_terms); inherit_only always runs")
    parser.add_argument("--shares", type=parse_shares, default=None,
                        help="auto_terms shares, e.g. gkd=0.5,bmfi=0.5 (default: params.yaml's)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--report-only", action="store_true", help="print the table of what is finished")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="train.amp for every model (default: params.yaml's); on the CPU: bfloat16")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="a params.yaml value for every student, e.g. "
                        "distill.gkd.sign=descent (repeatable)")
    parser.add_argument("--teacher-from", type=Path, default=None,
                        help="a workdir whose data, teacher and params.yaml this run reuses")
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                        help="train the inherit-only control too (default: yes)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="a finished workdir of the same teacher: its baseline and the rows not run here "
                             "are the references of this run's table (the baseline is not trained here)")
    parser.add_argument("--compare-to", type=Path, default=None,
                        help="a workdir with the same rows: print each row's gain over its counterpart there")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = (args.workdir or REPO / ".kd_claims" / args.profile).resolve()
    if args.teacher_from is not None:
        BASE_PARAMS[0] = args.teacher_from.resolve() / "params.yaml"
    rows = tuple(dict.fromkeys((["inherit_only"] if args.control else []) + list(args.rows)))
    for row in rows:
        split_row(row)
    start = time.perf_counter()
    walls: dict[str, list[float]] = {}
    if not args.report_only:
        if args.teacher_from is not None:
            link_teacher(args.teacher_from.resolve(), root)
        run_all(root, args, rows, walls)
    if args.compare_to is not None:
        compare(root, args.compare_to.resolve(), args.seeds, ("baseline", *rows), args.resamples)
    else:
        reference = args.reference.resolve() if args.reference is not None else None
        report(root, args.seeds, rows, walls, args.resamples, time.perf_counter() - start, reference)


def link_teacher(source: Path, root: Path) -> None:
    """Link ``source``'s data and finished teacher (model, metrics, detections) into ``root``."""
    teacher = RunId(DATASET, DETECTOR, TEACHER)
    for path in (DATA_ROOT, teacher.model_path, teacher.metrics_path, teacher.detections_path):
        if not (source / path).exists():
            raise SystemExit(f"error: --teacher-from {source}: {path} is missing; finish that workdir's teacher first")
        name = root / path
        name.parent.mkdir(parents=True, exist_ok=True)
        if not (name.is_symlink() or name.exists()):
            name.symlink_to(source / path)


def compare(root: Path, other: Path, seeds: int, rows: tuple[str, ...], resamples: int) -> None:
    """Each row's mAP50 here minus the same row's in ``other`` (same seeds, same val images):
    mean over the seeds finished in both, with the paired bootstrap interval over images and seeds."""
    val = load_curated(root / curated_path(DATASET, "val"))
    print(f"\n{root.name} - {other.name}, 95% paired intervals over val images and seeds ({resamples} resamples)")
    print("| row | seeds | here mAP50 | there mAP50 | here - there |")
    print("| --- | --- | ---: | ---: | ---: |")
    results = {}
    for row in rows:
        here = {f.relative_to(root).parts[0]: f for f in finished_seeds(root, seeds, row)}
        there = {f.relative_to(other).parts[0]: f for f in finished_seeds(other, seeds, row)}
        both = sorted(set(here) & set(there))
        if not both:
            print(f"| {row} | none finished in both (here: {sorted(here)}, there: {sorted(there)}) | | | |")
            continue
        run = RunId(DATASET, DETECTOR, model_of(row))
        m_here = [image_matches(val, load_detections(here[k] / run.detections_path)) for k in both]
        m_there = [image_matches(val, load_detections(there[k] / run.detections_path)) for k in both]
        a = [float(json.loads((here[k] / run.metrics_path).read_text())["mAP50"]) for k in both]
        b = [float(json.loads((there[k] / run.metrics_path).read_text())["mAP50"]) for k in both]
        g = paired_gain(m_here, m_there, resamples=resamples)
        results[row] = {"seeds": both, "here": a, "there": b, "gain": g.as_dict()}
        print(f"| {row} | {', '.join(both)} | {np.mean(a):.2f} ({', '.join(f'{x:.2f}' for x in a)}) | "
              f"{np.mean(b):.2f} ({', '.join(f'{x:.2f}' for x in b)}) | {g} |")
    (root / f"compare_{other.name}.json").write_text(json.dumps(results, indent=2))


def run_all(root: Path, args: argparse.Namespace, rows: tuple[str, ...], walls: dict[str, list[float]]) -> None:
    """Train and evaluate the teacher, then every seed's baseline and rows (resumable)."""
    by_balance = {b: tuple(m for m, bb in map(split_row, rows) if bb == b) for b in ("auto", "auto_terms")}
    prepare(root, profile_params(args.profile, 0, by_balance["auto"] or ("inherit_only",), amp=args.amp,
                                 overrides=tuple(args.overrides)), [])
    print(f"kd_claims ({args.profile}) in {root}", flush=True)
    step(root, root / raw_dir(DATASET), "synthesize", lambda: synthesize.main([]))
    step(root, root / curated_path(DATASET, "val"), "curate", lambda: curate.main([DATASET]))
    teacher = RunId(DATASET, DETECTOR, TEACHER)
    walls["teacher"] = [step(root, root / teacher.model_path, "teacher", lambda: train.main([DATASET, DETECTOR, TEACHER]))]
    step(root, root / teacher.metrics_path, "evaluate teacher", lambda: evaluate.main([DATASET, DETECTOR, TEACHER]))

    first = [r for r in rows if r in ("inherit_only", *ABLATION)]
    for batch in (first, [r for r in rows if r not in first]):
        for seed in range(args.seeds):
            for row in (["baseline"] if batch is first and args.reference is None else []) + batch:
                method, balance = ("baseline", "auto") if row == "baseline" else split_row(row)
                folder = row_folder(root, seed, row)
                with working_dir(root):
                    prepare(folder.relative_to(root), profile_params(args.profile, seed, by_balance[balance] or
                                                                     ("inherit_only",), balance, args.shares,
                                                                     args.amp, tuple(args.overrides)),
                            [DATA_ROOT, teacher.model_path])
                model = f"{method}-{STUDENT}"
                run = RunId(DATASET, DETECTOR, model)
                fn = ((lambda: train.main([DATASET, DETECTOR, model])) if method == "baseline"
                      else (lambda: distill.main([DATASET, DETECTOR, STUDENT, method])))
                walls.setdefault(row, []).append(step(folder, folder / run.model_path, f"seed {seed} {row}", fn))
                step(folder, folder / run.metrics_path, f"seed {seed} evaluate {row}",
                     lambda: evaluate.main([DATASET, DETECTOR, model]))


def finished_seeds(root: Path, seeds: int, row: str) -> list[Path]:
    """The folders of the seeds of ``row`` whose evaluation is written."""
    run = RunId(DATASET, DETECTOR, model_of(row))
    folders = [row_folder(root, k, row) for k in range(seeds)] if row != "baseline" else \
        [root / f"seed{k}" for k in range(seeds)]
    return [f for f in folders if (f / run.detections_path).is_file() and (f / run.metrics_path).is_file()]


def term_ratios(folder: Path, row: str) -> tuple[dict[str, float], dict[str, float]]:
    """Per-term KD/task gradient ratios of ``row`` in ``folder``: at the calibration and after the
    last epoch (logs/kd_balance)."""
    method = split_row(row)[0]
    log = folder / balance_log_path(DATASET, DETECTOR, f"{method}-{STUDENT}")
    if not log.is_file():
        return {}, {}
    epochs = json.loads(log.read_text())

    def terms(record: dict) -> dict[str, float]:
        return {k.removeprefix("ratio_kd_").removeprefix(f"{method}_"): v for k, v in record.items()
                if k.startswith("ratio_kd_")}
    return terms(epochs[0]), terms(epochs[-1])


def report(root: Path, seeds: int, rows: tuple[str, ...], walls: dict[str, list[float]], resamples: int,
           total: float, reference: Path | None = None) -> None:
    """The claims table of ``rows`` in ``root``; with ``reference``, the baseline and every other row
    (inherit-only, the ablation, the comparison) come from that workdir (same teacher, val set and
    seeds), so that one changed setting is read against the unchanged ones."""
    val = load_curated(root / curated_path(DATASET, "val"))
    done = {row: finished_seeds(root, seeds, row) for row in rows}
    if reference is not None:
        others = [r for r in ("baseline", "inherit_only", *ABLATION, *COMPARISON) if r not in rows]
        done.update({row: finished_seeds(reference, seeds, row) for row in others})
        print(f"rows from {reference}: {', '.join(others)}; trained here: {', '.join(rows)}")
        rows = tuple(r for r in (*others, *rows) if r != "baseline")
    else:
        done["baseline"] = finished_seeds(root, seeds, "baseline")
    done = {row: folders for row, folders in done.items() if folders}

    def map50(folder: Path, model: str) -> float:
        return float(json.loads((folder / RunId(DATASET, DETECTOR, model).metrics_path).read_text())["mAP50"])

    m = {row: [image_matches(val, load_detections(f / RunId(DATASET, DETECTOR, model_of(row)).detections_path))
               for f in folders] for row, folders in done.items()}
    per = {row: [map50(f, model_of(row)) for f in folders] for row, folders in done.items()}
    teacher = map50(root, TEACHER)
    results = {"teacher": teacher, "val_images": len(val["images"]), "seeds": seeds, "rows": {}}
    if "baseline" in per and "inherit_only" in per:
        base, control = np.mean(per["baseline"]), np.mean(per["inherit_only"])
        premise = bool(teacher - base >= 5 and teacher > control)
        results["premise"] = premise
        print(f"\nval images: {len(val['images'])}; seeds: {seeds}; teacher R101 mAP50 {teacher:.2f}; "
              f"teacher - baseline {teacher - base:+.2f}; teacher - inherit-only {teacher - control:+.2f}")
        print("premise (teacher >= baseline + 5 and > inherit-only): " + ("holds" if premise else "DOES NOT HOLD"))

    def gain(row: str, ref: str):
        k = min(len(m[row]), len(m[ref]))
        return paired_gain(m[row][:k], m[ref][:k], resamples=resamples)

    refs = [r for r in REFERENCES if r in m]
    print(f"\n| row | seeds | mAP50 mean +- std | " + " | ".join(f"vs {r}" for r in refs)
          + " | KD/task per term: calibration -> last epoch | train wall (s, mean) |")
    print("| --- | ---: | ---: |" + " ---: |" * len(refs) + " --- | ---: |")
    for row in ("baseline", *rows):
        if row not in per:
            print(f"| {row} | 0 | not run yet |" + " |" * (len(refs) + 2))
            continue
        values = np.array(per[row])
        record = {"mAP50": values.tolist()}
        cells = []
        for ref in refs:
            if ref == row:
                cells.append("-")
                continue
            g = gain(row, ref)
            record[f"vs_{ref}"] = g.as_dict()
            cells.append(str(g))
        ratios = "-"
        if row != "baseline":
            calib, last = term_ratios(done[row][-1], row)
            record["term_ratios"] = {"calibration": calib, "last_epoch": last}
            ratios = ", ".join(f"{k} {v:.2g} -> {last.get(k, float('nan')):.2g}" for k, v in calib.items()) or "-"
        wall = np.mean([w for w in walls.get(row, []) if w > 0] or [float("nan")])
        results["rows"][row] = record
        print(f"| {row} | {len(values)} | {values.mean():.2f} +- {values.std(ddof=1) if len(values) > 1 else 0:.2f} | "
              + " | ".join(cells) + f" | {ratios} | {wall:.0f} |")
    contributions = {"GKD (gkd_bmfi:terms - bmfi:terms)": ("gkd_bmfi:terms", "bmfi:terms"),
                     "BMFI (gkd_bmfi:terms - gkd:terms)": ("gkd_bmfi:terms", "gkd:terms"),
                     "per-term vs method-level balance (gkd_bmfi:terms - gkd_bmfi)": ("gkd_bmfi:terms", "gkd_bmfi")}
    print()
    for label, (row, ref) in contributions.items():
        if row in m and ref in m:
            g = gain(row, ref)
            results.setdefault("contributions", {})[label] = g.as_dict()
            print(f"{label}: {g}" + ("" if g.excludes_zero() else " (interval includes 0)"))
    print(f"\nintervals: 95%, paired bootstrap over val images and seeds ({resamples} resamples); "
          f"total wall {total / 60:.1f} min")
    (root / "claims.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
