"""``reports/summary.md``: every model of one (dataset, detector) side by side.

Reads what the other stages wrote (ARCHITECTURE.md's output contract), nothing else:

* ``metrics/<dataset>/<detector>/<model>.json`` (evaluate): COCO ``mAP50`` and MMDetection's
  ``voc_mAP50`` in percent, parameters (M), GFLOPs at 224x224, PyTorch inference throughput
  ``eval_images_per_s`` on the val split;
* ``metrics/benchmark/<dataset>/<detector>/<model>.json`` (benchmark): per backend and
  precision the latency percentiles (ms) at batch 1, throughput and that artifact's mAP50;
* ``reports/tables/distill_<dataset>_<detector>.md`` (distill tables) and
  ``reports/tables/qat_<dataset>_<detector>.md`` (fp32 / int8 PTQ / QAT / QAT+KD), included as they are;
* the plots: ``plots/benchmark/<dataset>_<detector>.png`` and the gradient maps under
  ``plots/gradmaps/<dataset>/<detector>/``, linked relative to ``reports/``.

"Speed-up vs teacher" divides the model's PyTorch throughput by the teacher's, both measured by
the evaluate stage on the same device and val split. A missing file leaves its cells as ``-``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.io import read_json

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


def models_table(rows: list[dict[str, Any]]) -> str:
    teacher = next((r for r in rows if r["role"] == "teacher"), None)
    base_rate = teacher.get("eval_images_per_s") if teacher else None
    lines = ["| model | mAP50 (COCO) | voc_mAP50 | params (M) | GFLOPs (224) | PyTorch img/s | speed-up vs teacher |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rate = r.get("eval_images_per_s")
        speed = f"{rate / base_rate:.2f}x" if rate and base_rate else "-"
        lines.append(f"| {r['model']} | {_fmt(r.get('mAP50'))} | {_fmt(r.get('voc_mAP50'))} | "
                     f"{_fmt(r.get('params_M'))} | {_fmt(r.get('gflops_224'))} | {_fmt(rate, 1)} | {speed} |")
    return "\n".join(lines)


def latency_table(bench_dir: Path, models: list[str]) -> str:
    """Latency per backend and precision of every benchmarked model (students)."""
    lines = ["| model | backend | p50 ms | p90 ms | p99 ms | img/s (batched) | mAP50 | providers |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    found = False
    skipped: dict[str, str] = {}
    for model in models:
        record = _read(Path(bench_dir) / f"{model}.json")
        if not record:
            continue
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


def section(dataset: str, detector: str, root: Path, report_dir: Path) -> str:
    """The markdown of one (dataset, detector)."""
    root = Path(root)
    rows = model_rows(root / "metrics" / dataset / detector)
    parts = [f"## {dataset} / {detector}", "", "### Models", "", models_table(rows), "",
             "### Latency (batch 1) and accuracy per backend", "",
             latency_table(root / "metrics" / "benchmark" / dataset / detector,
                           [r["model"] for r in rows if r["role"] != "teacher"]), ""]
    pareto = root / "plots" / "benchmark" / f"{dataset}_{detector}.png"
    if pareto.is_file():
        parts += [f"![mAP50 against latency]({_link(pareto, report_dir)})", ""]
    for kind, title in (("distill", "Distillation"), ("qat", "Quantization-aware training (int8)")):
        table = root / "reports" / "tables" / f"{kind}_{dataset}_{detector}.md"
        if table.is_file():
            text = table.read_text().strip()
            demoted = ("#### " + line.lstrip("# ") if line.startswith("#") else line for line in text.splitlines())
            parts += [f"### {title}", "", "\n".join(demoted), ""]
    pictured = [r["model"] for r in rows if (root / "plots" / "eval" / dataset / detector / r["model"]).is_dir()]
    if any((root / "plots" / "eval" / dataset / detector / m / "predictions.png").is_file() for m in pictured):
        parts += ["### What each model detects", "",
                  "Val images with the ground truth in white and the detections (score >= `eval.picture_score`) "
                  "in class colours; precision-recall at IoU 0.5; the confusion matrix's last row counts "
                  "detections of nothing, its last column missed objects.", "",
                  "| model | detections | precision-recall | confusion |", "| --- | --- | --- | --- |"]
        for model in pictured:
            folder = root / "plots" / "eval" / dataset / detector / model
            cells = [f"![{model} {name}]({_link(folder / f'{name}.png', report_dir)})"
                     if (folder / f"{name}.png").is_file() else "-" for name in ("predictions", "pr_curves", "confusion")]
            parts.append(f"| {model} | " + " | ".join(cells) + " |")
        parts.append("")
    maps = sorted((root / "plots" / "gradmaps" / dataset / detector).glob("*/*.png"))
    if maps:
        parts += ["### Gradient maps (teacher, student at the start and end of distillation)", ""]
        parts += [f"![{p.parent.name} {p.stem}]({_link(p, report_dir)})" for p in maps[:6]]
        parts.append("")
    return "\n".join(parts)


def summary(datasets: tuple[str, ...], detectors: tuple[str, ...], root: Path = Path("."),
            report_dir: Path = Path("reports")) -> str:
    """The whole ``reports/summary.md``."""
    head = ["# Summary", "",
            "mAP in percent on the val split (`mAP50`: COCO AP at IoU 0.5; `voc_mAP50`: VOC area AP at IoU 0.5,"
            " the paper's KITTI metric). Latency in milliseconds. Numbers come from `metrics/`; re-run"
            " `dvc repro` to refresh.", ""]
    return "\n".join(head + [section(ds, det, root, Path(root) / report_dir) for ds in datasets for det in detectors])
