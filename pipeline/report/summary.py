"""``reports/summary.md``: every model of one (dataset, detector) side by side.

Reads what the other stages wrote (docs/architecture.md, 'Output contract'), nothing else:

* ``metrics/<dataset>/<detector>/<model>.json`` (evaluate): COCO ``mAP50`` and MMDetection's
  ``voc_mAP50`` in percent, parameters (M), GFLOPs at 224x224, PyTorch inference throughput
  ``eval_images_per_s`` on the val split;
* ``metrics/benchmark/<dataset>/<detector>/<model>.json`` (benchmark): per backend and
  precision the latency percentiles (ms) at batch 1, throughput and that artifact's mAP50;
  (QAT exports: ``.../qat/<method>/<model>.json``);
* ``exports/<dataset>/<detector>/<model>/manifest.json`` (export): the int8 sensitivity table
  per layer group (:mod:`pipeline.report.int8_table`);
* ``reports/ship.json`` (ship stage): every exported variant's accuracy with intervals and
  per-class AP50, and the choice per latency budget, shown first as "What to ship";
* ``reports/tables/distill_<dataset>_<detector>.md`` (distill tables) and
  ``reports/tables/qat_<dataset>_<detector>.md`` (fp32 / int8 PTQ / QAT / QAT+KD), included as they are;
* the plots: ``plots/benchmark/<dataset>_<detector>.png`` and the gradient maps under
  ``plots/gradmaps/<dataset>/<detector>/``, linked relative to ``reports/``.

Every mean has its classes beside it (per-class AP50, KITTI AP40 on KITTI-format data, the
classes a model has not learned: :mod:`pipeline.report.per_class`). Speed is compared as the
p50-p90 spread of the batch-1 latency the benchmark stage measured, never as a ratio of single
figures; models that were not exported (the teacher) have no latency. A missing file leaves its
cells as ``-``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline import artifacts
from pipeline.errors import UserError
from pipeline.io import read_json
from pipeline.report.int8_table import sensitivity_section
from pipeline.report.per_class import per_class_markdown
from pipeline.report.ship import accuracy, label, read_ship, spread, unlearned_note

ROLE_ORDER = {"teacher": 0, "baseline": 1}
BACKBONE_ORDER = {"resnet101": 0, "resnet50": 1, "resnet18": 2}


def _read(path: Path) -> dict[str, Any] | None:
    return read_json(path, "the benchmark stage (dvc repro)") if path.is_file() else None


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def model_rows(metrics_dir: Path) -> list[dict[str, Any]]:
    """One record per evaluated model, teacher first, then per backbone baseline before methods."""
    rows = []
    for path in sorted(Path(metrics_dir).glob("*.json")):
        data = read_json(path, "the evaluate stage (dvc repro)")
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a metrics file of the evaluate stage (a json object); delete it and "
                            "run dvc repro")
        if "mAP50" not in data:
            continue
        role, _, backbone = path.stem.rpartition("-")
        rows.append({"model": path.stem, "role": role, "backbone": backbone, **data})
    rows.sort(key=lambda r: (ROLE_ORDER.get(r["role"], 2) != 0, BACKBONE_ORDER.get(r["backbone"], 9),
                             ROLE_ORDER.get(r["role"], 2), r["role"]))
    return rows


def _pytorch_spread(bench_dir: Path, model: str) -> str:
    """``"97.9-130.2"``: the PyTorch CPU batch-1 p50-p90 (ms) the benchmark stage measured, or ``-``."""
    row = ((_read(Path(bench_dir) / f"{model}.json") or {}).get("backends") or {}).get("pytorch-cpu-fp32") or {}
    if "p50_ms" not in row or "p90_ms" not in row:
        return "-"
    return f"{row['p50_ms']:.1f}-{row['p90_ms']:.1f}"


def models_table(rows: list[dict[str, Any]], bench_dir: Path | None = None) -> str:
    """Accuracy, size and (benchmarked models) the PyTorch CPU latency spread of every model."""
    lines = ["| model | mAP50 (COCO) | voc_mAP50 | params (M) | GFLOPs (224) | PyTorch CPU p50-p90 ms (batch 1) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        latency = "-" if bench_dir is None else _pytorch_spread(bench_dir, r["model"])
        lines.append(f"| {r['model']} | {_fmt(r.get('mAP50'))} | {_fmt(r.get('voc_mAP50'))} | "
                     f"{_fmt(r.get('params_M'))} | {_fmt(r.get('gflops_224'))} | {latency} |")
    return "\n".join(lines)


def _benchmark_records(bench_dir: Path, models: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, record)`` of each model's benchmark json, then of each QAT export's."""
    out = []
    for model in models:
        record = _read(Path(bench_dir) / f"{model}.json")
        if record:
            out.append((model, record))
    for path in sorted(Path(bench_dir).glob("qat/*/*.json")):
        record = _read(path)
        if record:
            method = path.parent.name
            out.append((f"{path.stem} {'QAT' if method == 'none' else f'QAT+{method}'}", record))
    return out


def latency_table(bench_dir: Path, models: list[str]) -> str:
    """Latency per backend and precision of every benchmarked model (students) and QAT export."""
    lines = ["| model | backend | p50 ms | p90 ms | p99 ms | img/s (batched) | mAP50 | providers |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    found = False
    skipped: dict[str, str] = {}
    for model, record in _benchmark_records(Path(bench_dir), models):
        for name, row in record.get("backends", {}).items():
            found = True
            providers = row.get("providers", "")
            providers = ", ".join(providers) if isinstance(providers, list) else str(providers)
            lines.append(f"| {model} | {name} | {_fmt(row.get('p50_ms'))} | {_fmt(row.get('p90_ms'))} | "
                         f"{_fmt(row.get('p99_ms'))} | {_fmt(row.get('throughput_ips'), 1)} | "
                         f"{_fmt(row.get('mAP50'))} | {providers} |")
        skipped.update(record.get("skipped", {}))
    if not found:
        return "_No benchmark results yet (run the benchmark stages)._"
    if skipped:  # the same reasons hold for every model: say them once
        lines += ["", "Not measured on this machine:"] + [f"- {name}: {why}" for name, why in skipped.items()]
    return "\n".join(lines)


def _link(target: Path, report_dir: Path) -> str:
    return Path(os.path.relpath(target, report_dir)).as_posix()


def ship_section(ship: dict[str, Any] | None) -> str:
    """"What to ship": per dataset, the choice for every budget of ``reports/ship.json``."""
    parts = ["## What to ship", ""]
    if ship is None:
        return "\n".join(parts + ["_No reports/ship.json yet (run the ship stage: dvc repro ship)._", ""])
    budgets = ", ".join(f"{b:g}" for b in ship.get("budgets_ms", []))
    parts += [f"For each latency budget of `deploy.budgets_ms` ({budgets} ms), the most accurate exported variant "
              "(model, quantization, precision, runtime) whose batch-1 **p90** latency on the benchmark's hardware "
              "fits; where the most accurate and a cheaper one cannot be told apart (the paired 95% interval of "
              "their mAP50 difference over the same val images includes 0), the cheaper. Rule: "
              "`pipeline/report/ship.py`; the same records: `reports/ship.json`, `gkd-bmfi select --budget-ms B`.", ""]
    for name, block in ship["datasets"].items():
        by_key = {c["key"]: c for c in block["candidates"]}
        models = {c["model"] for c in block["candidates"]}
        parts += [f"### {name}: {len(block['candidates'])} variants of {len(models)} models, "
                  f"{block.get('num_val_images', '?')} val images", ""]
        if not block["candidates"]:
            parts += ["_No benchmarked variant with val detections yet (run the benchmark stages: dvc repro)._", ""]
            unranked = [f"- not ranked: {why}" for why in block.get("not_ranked", [])]
            parts += unranked + [""] * bool(unranked)
            continue
        parts += [f"Hardware: {h}." for h in block.get("hardware", [])] + [""] * bool(block.get("hardware"))
        parts += ["| budget (p90 <=) | ship | mAP50 [95%] | p50-p90 ms | why |", "| ---: | --- | ---: | ---: | --- |"]
        notes = []
        for choice in block.get("choices", []):
            chosen = by_key.get(choice.get("chosen"))
            if chosen is None:
                fastest = by_key.get(choice.get("fastest"))
                why = f"the fastest, {label(fastest)}, has p90 {fastest['p90_ms']:.1f} ms" if fastest else "-"
                parts.append(f"| {choice['budget_ms']:g} ms | **nothing fits** | - | - | {why} |")
                continue
            best = by_key.get(choice.get("best"))
            if best is not None and best["key"] != chosen["key"]:
                g = choice["versus_best"]
                why = (f"ties with the most accurate, {label(best)} ({g['gain']:+.2f} [{g['low']:+.2f}, "
                       f"{g['high']:+.2f}] includes 0): the cheaper")
            else:
                why = f"most accurate of {choice.get('fitting', '?')} that fit"
            parts.append(f"| {choice['budget_ms']:g} ms | {label(chosen)} | {accuracy(chosen)} | "
                         f"{spread(chosen)[:-3]} | {why} |")
            note = unlearned_note(chosen)
            if note and note not in notes:
                notes.append(note)
        parts += ["", "Reading:", ""] + [f"- {c['sentence']}." for c in block.get("choices", [])]
        parts += [f"- {n}." for n in notes]
        parts += [f"- not ranked: {why}" for why in block.get("not_ranked", [])]
        parts.append("")
    return "\n".join(parts)


def section(dataset: str, detector: str, root: Path, report_dir: Path, ship: dict[str, Any] | None = None) -> str:
    """The markdown of one (dataset, detector)."""
    root = Path(root)
    rows = model_rows(root / artifacts.metrics_dir(dataset, detector))
    bench_dir = root / artifacts.benchmark_metrics_dir(dataset, detector)
    parts = [f"## {dataset} / {detector}", "", "### Models", "", models_table(rows, bench_dir), ""]
    per_class = per_class_markdown([(r["model"], r) for r in rows])
    if per_class:
        parts += ["### Per class (val AP at IoU 0.5, %)", "", *per_class, ""]
    parts += ["### Latency (batch 1) and accuracy per backend", "",
              latency_table(bench_dir, [r["model"] for r in rows if r["role"] != "teacher"]), ""]
    parts += sensitivity_section(root / artifacts.exports_root(dataset, detector))
    variants = [c for c in ((ship or {}).get("datasets", {}).get(dataset, {}).get("candidates", []))
                if c.get("detector") == detector]
    if variants:
        parts += ["### Per class, every exported variant on the runtime timed (reports/ship.json)", "",
                  *per_class_markdown([(label({**c, "detector": None}), c) for c in variants]), ""]
    pareto = root / artifacts.benchmark_plot_path(dataset, detector)
    if pareto.is_file():
        parts += [f"![mAP50 against latency, every exported variant]({_link(pareto, report_dir)})", ""]
    for kind, title in (("distill", "Distillation"), ("qat", "Quantization-aware training (int8)")):
        table = root / artifacts.table_paths(kind, dataset, detector)[0]
        if table.is_file():
            text = table.read_text().strip()
            demoted = ("#### " + line.lstrip("# ") if line.startswith("#") else line for line in text.splitlines())
            parts += [f"### {title}", "", "\n".join(demoted), ""]
    pictures = {r["model"]: root / artifacts.eval_pictures_dir(dataset, detector, r["model"]) for r in rows}
    pictured = [m for m, folder in pictures.items() if folder.is_dir()]
    if any((pictures[m] / "predictions.png").is_file() for m in pictured):
        parts += ["### What each model detects", "",
                  "Val images with the ground truth in white and the detections (score >= `eval.picture_score`) "
                  "in class colours; precision-recall at IoU 0.5; the confusion matrix's last row counts "
                  "detections of nothing, its last column missed objects.", "",
                  "| model | detections | precision-recall | confusion |", "| --- | --- | --- | --- |"]
        for model in pictured:
            folder = pictures[model]
            cells = [f"![{model} {name}]({_link(folder / f'{name}.png', report_dir)})"
                     if (folder / f"{name}.png").is_file() else "-" for name in ("predictions", "pr_curves", "confusion")]
            parts.append(f"| {model} | " + " | ".join(cells) + " |")
        parts.append("")
    maps = sorted((root / artifacts.gradmaps_root(dataset, detector)).glob("*/*.png"))
    if maps:
        parts += ["### Gradient maps (teacher, student at the start and end of distillation)", ""]
        parts += [f"![{p.parent.name} {p.stem}]({_link(p, report_dir)})" for p in maps[:6]]
        parts.append("")
    return "\n".join(parts)


def summary(datasets: tuple[str, ...], detectors: tuple[str, ...], root: Path = Path("."),
            report_dir: Path = artifacts.SUMMARY_PATH.parent) -> str:
    """The whole ``reports/summary.md``: "What to ship" first, then one section per (dataset, detector)."""
    head = ["# Summary", "",
            "mAP in percent on the val split (`mAP50`: COCO AP at IoU 0.5; `voc_mAP50`: VOC area AP at IoU 0.5,"
            " the paper's KITTI metric). Latency in milliseconds. Numbers come from `metrics/` and"
            " `reports/ship.json`; re-run `dvc repro` to refresh.", ""]
    ship_path = Path(root) / artifacts.SHIP_PATH
    ship = read_ship(ship_path) if ship_path.is_file() else None
    return "\n".join(head + [ship_section(ship)]
                     + [section(ds, det, root, Path(root) / report_dir, ship) for ds in datasets for det in detectors])
