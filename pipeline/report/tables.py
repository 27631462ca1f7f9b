"""The distillation tables: the paper's Tables 1-2 (teacher, baseline, each KD method per student)
and, when ablation methods ran, its Table 3 (GKD-BMFI's terms switched on one by one).

Every number comes from the evaluate stages' metrics files
``metrics/<dataset>/<detector>/<model>.json`` (``mAP50``: COCO AP50, ``voc_mAP50``: MMDetection's
VOC area AP50 as the paper reports for KITTI; both in percent). A model whose metrics file is
missing is listed with ``-`` so a partial table still shows what exists.

Each KD method's mAP50 gain is given twice, each with its paired bootstrap 95% interval over the
val images (:mod:`pipeline.metrics.bootstrap`, from the evaluate stages' detections): over the
student's baseline, and over the inherit-only control (``inherit_only``: the teacher's neck and
head, no KD term), which is the method's own contribution. The KD weights as balanced
(``distill.balance``) are listed per model, so a run can be repeated with ``mode: paper``.

Every mean has its classes beside it (:mod:`pipeline.report.per_class`): per-class AP50 of
each model, KITTI easy/moderate/hard AP40 on KITTI-format data, and a plain line for each model
that has not learned a class (AP50 below 1).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
import numpy as np

from pipeline.metrics.bootstrap import ImageMatches, paired_gain, weighted_ap50
from pipeline.report.per_class import per_class_markdown

#: the control every KD method is also compared with
CONTROL = "inherit_only"

#: Table 3's rows in the paper's order: (method name, the terms it switches on).
ABLATION_ROWS: tuple[tuple[str, str], ...] = (
    ("baseline", "none"), ("mfi", "MFI"), ("bmfi", "MASK + MFI"), ("gkd_bmfi", "GKD + MASK + MFI"),
    ("gkd", "GKD only"))
BACKBONE_LABELS = {"resnet18": "R18", "resnet50": "R50", "resnet101": "R101"}


def read_metrics(metrics_dir: Path, model: str) -> dict[str, Any] | None:
    """The metrics json of ``model`` in ``metrics_dir``, or ``None`` when it does not exist.

    Raises:
        UserError: a file that is not a metrics json, naming it and the fix.
    """
    path = Path(metrics_dir) / f"{model}.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        float(data["mAP50"]), float(data["voc_mAP50"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a metrics file of the evaluate stage ({type(err).__name__}: {err}); "
                        "re-run its evaluate stage (dvc repro)") from None
    return data


Matches = Mapping[str, Sequence[ImageMatches]]


def _interval(matches: Matches | None, model: str, reference: str, resamples: int) -> dict[str, float] | None:
    if not matches or model not in matches or reference not in matches:
        return None
    return paired_gain(matches[model], matches[reference], resamples=resamples).as_dict()


def _over_seeds(matches: Matches | None, model: str) -> tuple[int, float | None, float | None]:
    """``(seeds, mean, std)`` of the model's mAP50 over its main run and replicas."""
    if not matches or model not in matches:
        return 0, None, None
    values = [weighted_ap50(m, np.ones(m.num_images)) for m in matches[model]]
    return len(values), float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def _row(metrics_dir: Path, model: str, role: str, backbone: str, baseline: dict | None,
         control: str | None = None, matches: Matches | None = None, resamples: int = 1000) -> dict[str, Any]:
    m = read_metrics(metrics_dir, model)
    balance = (m or {}).get("kd_balance") or {}
    row = {"model": model, "role": role, "backbone": backbone,
           "mAP50": None if m is None else float(m["mAP50"]),
           "voc_mAP50": None if m is None else float(m["voc_mAP50"]),
           "params_M": None if m is None else m.get("params_M"),
           "per_class": (m or {}).get("per_class"), "kitti": (m or {}).get("kitti"),
           "kd_weights": balance.get("weights") or None, "kd_balance": balance.get("mode"),
           "kd_factor": balance.get("factor"), "kd_group_factors": balance.get("group_factors"),
           "kd_term_ratios": balance.get("term_ratios") or None}
    for key in ("mAP50", "voc_mAP50"):
        gain = None
        if baseline is not None and row[key] is not None and baseline.get(key) is not None and role != "baseline":
            gain = row[key] - baseline[key]
        row[f"{key}_gain"] = gain
    row["seeds"], row["mAP50_mean"], row["mAP50_std"] = _over_seeds(matches, model)
    has_base = baseline is not None and role != "baseline"
    row["ci_vs_baseline"] = _interval(matches, model, baseline["model"], resamples) if has_base else None
    row["ci_vs_control"] = (_interval(matches, model, control, resamples)
                            if control is not None and role not in ("baseline", CONTROL) else None)
    return row


def distill_rows(metrics_dir: Path, teacher: str, students: tuple[str, ...], methods: tuple[str, ...],
                 matches: Matches | None = None, resamples: int = 1000) -> list[dict[str, Any]]:
    """Tables 1-2: the teacher, then per student its baseline and every method.

    Gains are against the same student's baseline (percentage points); with ``matches`` (model
    -> its :class:`ImageMatches` on val, one per seed: the main run, then the replicas) each row
    gets its mAP50 mean +- std over seeds and each gain its paired bootstrap interval (over
    images and seeds), over the baseline and, when ``inherit_only`` is among ``methods``, over
    that control."""
    t_backbone = teacher.rsplit("-", 1)[1]
    rows = [_row(metrics_dir, teacher, "teacher", t_backbone, None)]
    for student in students:
        base = _row(metrics_dir, f"baseline-{student}", "baseline", student, None, matches=matches)
        rows.append(base)
        control = f"{CONTROL}-{student}" if CONTROL in methods else None
        rows.extend(_row(metrics_dir, f"{method}-{student}", method, student, base, control, matches, resamples)
                    for method in methods)
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


def _fmt_ci(ci: dict[str, float] | None) -> str:
    return "-" if ci is None else f"{ci['gain']:+.1f} [{ci['low']:+.1f}, {ci['high']:+.1f}]"


def _fmt_weights(row: dict[str, Any]) -> str:
    if not row.get("kd_weights"):
        return "-"
    weights = ", ".join(f"{k} {v:.3g}" for k, v in row["kd_weights"].items())
    factors = (", ".join(f"{g} x{f:.3g}" for g, f in row["kd_group_factors"].items())
               if row.get("kd_group_factors") else f"x{row['kd_factor']:.3g}")
    ratios = row.get("kd_term_ratios") or {}
    per_term = "; KD/task per term " + ", ".join(f"{_term_label(k)} {v:.2g}" for k, v in ratios.items()) \
        if len(ratios) > 1 else ""
    return f"{row['kd_balance']} {factors}: {weights}{per_term}"


def _term_label(name: str) -> str:
    """``kd_gkd_bmfi_imitation`` -> ``imitation``: the term of a KD loss name."""
    return name.rsplit("_", 1)[-1]


def _verdict(ci: dict[str, float] | None, what: str) -> str | None:
    if ci is None:
        return None
    if ci["low"] > 0:
        return f"above {what} by {ci['gain']:.1f} [{ci['low']:+.1f}, {ci['high']:+.1f}], an interval that excludes 0"
    if ci["high"] < 0:
        return f"below {what} by {-ci['gain']:.1f} [{ci['low']:+.1f}, {ci['high']:+.1f}], an interval that excludes 0"
    return f"not distinguishable from {what} ({ci['gain']:+.1f} [{ci['low']:+.1f}, {ci['high']:+.1f}] includes 0)"


def reading(rows: list[dict[str, Any]]) -> list[str]:
    """Plain sentences on what each gain and its interval show (one per KD method and student),
    and a warning where the inherit-only control already reaches the teacher: there a KD term
    has nothing left to transfer, so no method can show its worth over the control."""
    lines = []
    teacher = next((r for r in rows if r["role"] == "teacher"), None)
    for r in rows:
        if r["role"] == CONTROL and teacher and None not in (teacher["mAP50"], r["mAP50"]) \
                and r["mAP50"] >= teacher["mAP50"]:
            label = BACKBONE_LABELS.get(r["backbone"], r["backbone"])
            lines.append(f"- the inherit-only {label} student ({r['mAP50']:.1f}) already scores at or above the "
                         f"teacher ({teacher['mAP50']:.1f}): the teacher has nothing left to teach it here, so "
                         "gains over inherit-only cannot show; train the teacher longer (a larger scale).")
        parts = [v for v in (_verdict(r.get("ci_vs_baseline"), "the baseline"),
                             _verdict(r.get("ci_vs_control"), "inherit-only")) if v]
        if parts:
            label = BACKBONE_LABELS.get(r["backbone"], r["backbone"])
            lines.append(f"- {r['role']} {label}: " + "; ".join(parts) + ".")
    return lines


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
    per_class = per_class_markdown([(r["model"], r) for r in rows])
    if per_class:
        lines += ["", f"#### Per class, {dataset}, {detector} (AP at IoU 0.5, %)", "", *per_class]
    compared = [r for r in rows if r["role"] != "teacher"]
    if any(r.get("ci_vs_baseline") or r.get("kd_weights") for r in compared):
        seeds = max((r.get("seeds") or 1) for r in compared)
        over = "val images" if seeds == 1 else f"val images and {seeds} seeds"
        lines += ["", f"#### mAP50 gains with their paired bootstrap 95% intervals ({over}), {dataset}, {detector}",
                  "", "| model | backbone | seeds | mAP50 mean +- std | vs baseline | vs inherit-only | "
                  "KD weights (balance) |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in compared:
            spread = "-" if r.get("mAP50_mean") is None else (
                f"{r['mAP50_mean']:.1f}" + ("" if r.get("mAP50_std") is None else f" +- {r['mAP50_std']:.1f}"))
            lines.append(f"| {r['role']} | {BACKBONE_LABELS.get(r['backbone'], r['backbone'])} | {r.get('seeds') or '-'} | "
                         f"{spread} | {_fmt_ci(r.get('ci_vs_baseline'))} | {_fmt_ci(r.get('ci_vs_control'))} | "
                         f"{_fmt_weights(r)} |")
        said = reading(rows)
        if said:
            lines += ["", f"Reading ({seeds} seed{'s' if seeds > 1 else ''}; an interval that includes 0 is no "
                      "evidence either way):", "", *said]
    if ablation:
        lines += ["", f"### Ablation of GKD-BMFI's terms on {dataset}, {detector} (Table 3 layout)", "",
                  "| backbone | terms | mAP50 (COCO) | voc_mAP50 (VOC area) |", "| --- | --- | ---: | ---: |"]
        for r in ablation:
            lines.append(f"| {BACKBONE_LABELS.get(r['backbone'], r['backbone'])} | {r['terms']} | "
                         f"{_fmt(r['mAP50'])} | {_fmt(r['voc_mAP50'])} |")
    return "\n".join(lines) + "\n"
