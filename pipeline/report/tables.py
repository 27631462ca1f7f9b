"""The distillation tables: the paper's Tables 1-2 (teacher, baseline, each KD method per student)
and, when ablation methods ran, its Table 3 (GKD-BMFI's terms switched on one by one).

Every number comes from the evaluate stages' metrics files
``metrics/<dataset>/<detector>/<model>.json`` (``mAP50``: COCO AP50, ``voc_mAP50``: MMDetection's
VOC area AP50 as the paper reports for KITTI; both in percent). A model whose metrics file is
missing is listed with ``-`` so a partial table still shows what exists.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Table 3's rows in the paper's order: (method name, the terms it switches on).
ABLATION_ROWS: tuple[tuple[str, str], ...] = (
    ("baseline", "none"), ("mfi", "MFI"), ("bmfi", "MASK + MFI"), ("gkd_bmfi", "GKD + MASK + MFI"),
    ("gkd", "GKD only"))
BACKBONE_LABELS = {"resnet18": "R18", "resnet50": "R50", "resnet101": "R101"}


def read_metrics(metrics_dir: Path, model: str) -> dict[str, Any] | None:
    """The metrics json of ``model`` in ``metrics_dir``, or ``None`` when it does not exist."""
    path = Path(metrics_dir) / f"{model}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _row(metrics_dir: Path, model: str, role: str, backbone: str, baseline: dict | None) -> dict[str, Any]:
    m = read_metrics(metrics_dir, model)
    row = {"model": model, "role": role, "backbone": backbone,
           "mAP50": None if m is None else float(m["mAP50"]),
           "voc_mAP50": None if m is None else float(m["voc_mAP50"]),
           "params_M": None if m is None else m.get("params_M")}
    for key in ("mAP50", "voc_mAP50"):
        gain = None
        if baseline is not None and row[key] is not None and baseline.get(key) is not None and role != "baseline":
            gain = row[key] - baseline[key]
        row[f"{key}_gain"] = gain
    return row


def distill_rows(metrics_dir: Path, teacher: str, students: tuple[str, ...], methods: tuple[str, ...]
                 ) -> list[dict[str, Any]]:
    """Tables 1-2: the teacher, then per student its baseline and every method.

    Gains are against the same student's baseline (percentage points)."""
    t_backbone = teacher.rsplit("-", 1)[1]
    rows = [_row(metrics_dir, teacher, "teacher", t_backbone, None)]
    for student in students:
        base = _row(metrics_dir, f"baseline-{student}", "baseline", student, None)
        rows.append(base)
        rows.extend(_row(metrics_dir, f"{method}-{student}", method, student, base) for method in methods)
    return rows


def ablation_rows(metrics_dir: Path, students: tuple[str, ...], methods: tuple[str, ...]) -> list[dict[str, Any]]:
    """Table 3 per student: the baseline and each ablation method present in ``methods``
    (empty when only ``gkd_bmfi`` or none of them ran)."""
    present = [name for name, _ in ABLATION_ROWS[1:] if name in methods]
    if not any(name != "gkd_bmfi" for name in present):
        return []
    rows = []
    for student in students:
        base = _row(metrics_dir, f"baseline-{student}", "baseline", student, None)
        for name, label in ABLATION_ROWS:
            if name == "baseline":
                rows.append({**base, "terms": label})
            elif name in present:
                rows.append({**_row(metrics_dir, f"{name}-{student}", name, student, base), "terms": label})
    return rows


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def markdown(dataset: str, detector: str, rows: list[dict[str, Any]], ablation: list[dict[str, Any]]) -> str:
    """Both tables as markdown."""
    lines = [f"### Distillation on {dataset}, {detector} (mAP at IoU 0.5, %)", "",
             "| model | backbone | mAP50 (COCO) | gain | voc_mAP50 (VOC area) | gain | params (M) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        params = "-" if r["params_M"] is None else f"{r['params_M']:.2f}"
        lines.append(f"| {r['role']} | {BACKBONE_LABELS.get(r['backbone'], r['backbone'])} | {_fmt(r['mAP50'])} | "
                     f"{_fmt(r['mAP50_gain'], True)} | {_fmt(r['voc_mAP50'])} | {_fmt(r['voc_mAP50_gain'], True)} "
                     f"| {params} |")
    lines += ["", "Gains are against the same student's baseline (percentage points)."]
    if ablation:
        lines += ["", f"### Ablation of GKD-BMFI's terms on {dataset}, {detector} (Table 3 layout)", "",
                  "| backbone | terms | mAP50 (COCO) | voc_mAP50 (VOC area) |", "| --- | --- | ---: | ---: |"]
        for r in ablation:
            lines.append(f"| {BACKBONE_LABELS.get(r['backbone'], r['backbone'])} | {r['terms']} | "
                         f"{_fmt(r['mAP50'])} | {_fmt(r['voc_mAP50'])} |")
    return "\n".join(lines) + "\n"
