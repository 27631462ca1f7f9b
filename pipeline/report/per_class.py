"""Per-class truth beside every mean: per-class AP50, KITTI easy/moderate/hard AP40, unlearned classes.

A mean AP hides a class the model never detects: a detector with Car AP50 32.2 and Pedestrian
and Cyclist near 0 averages 10.8, which reads like a weak detector of everything. The tables
built here put each class beside the mean, and :func:`unlearned_line` says in words which
classes a model has not learned (AP50 below :data:`UNLEARNED_AP50`).

Reads the evaluate stage's metrics layout (:func:`pipeline.metrics.evaluate_detections`):
``per_class`` ``{name: {"AP50": percent, ...}}`` and, on KITTI-format data, ``kitti``
``{"<Class>_<easy|moderate|hard>": percent, "mAP_<difficulty>": percent}``. Torch-free.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: AP50 (percent) below which a class counts as not learned: under 1% of the area a detector that
#: finds the objects would have, i.e. essentially no correct detection of it
UNLEARNED_AP50 = 1.0
DIFFICULTIES = ("easy", "moderate", "hard")


def class_ap50(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """``{class: AP50}`` of a metrics record (empty when it has no ``per_class``)."""
    per_class = (metrics or {}).get("per_class") or {}
    return {name: float(v["AP50"]) for name, v in per_class.items() if isinstance(v, Mapping) and "AP50" in v}


def class_names(records: Sequence[Mapping[str, Any] | None]) -> list[str]:
    """Every class of ``records`` in the order it first appears."""
    names: list[str] = []
    for record in records:
        names += [n for n in class_ap50(record) if n not in names]
    return names


def unlearned(per_class: Mapping[str, float], threshold: float = UNLEARNED_AP50) -> list[tuple[str, float]]:
    """``(class, AP50)`` of the classes below ``threshold``, in the given order."""
    return [(name, ap) for name, ap in per_class.items() if ap < threshold]


def unlearned_line(model: str, per_class: Mapping[str, float], threshold: float = UNLEARNED_AP50) -> str | None:
    """``"gkd_bmfi-resnet18 has not learned Pedestrian (AP50 0.01), Cyclist (0.04)"``, or ``None``
    when every class reaches ``threshold``."""
    missed = unlearned(per_class, threshold)
    if not missed:
        return None
    listed = [f"{name} ({'AP50 ' if i == 0 else ''}{ap:.2f})" for i, (name, ap) in enumerate(missed)]
    return f"{model} has not learned {', '.join(listed)}"


def kitti_cells(metrics: Mapping[str, Any] | None, names: Sequence[str]) -> list[str] | None:
    """Per class, then the mean, ``"easy / moderate / hard"`` KITTI AP40; ``None`` without a ``kitti`` block."""
    kitti = (metrics or {}).get("kitti")
    if not isinstance(kitti, Mapping):
        return None

    def cell(prefix: str) -> str:
        values = [kitti.get(f"{prefix}_{d}") for d in DIFFICULTIES]
        return " / ".join("-" if v is None else f"{float(v):.1f}" for v in values)

    return [cell(name) for name in names] + [cell("mAP")]


def per_class_markdown(rows: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[str]:
    """Markdown lines: a per-class AP50 table of ``(label, metrics)`` rows, a KITTI AP40 table
    when any row has a ``kitti`` block, and one "has not learned" line per model that has such
    classes. Empty when no row has per-class results."""
    records = [m for _, m in rows]
    names = class_names(records)
    if not names:
        return []
    lines = ["| model | mAP50 | " + " | ".join(f"{n} AP50" for n in names) + " | not learned (AP50 < "
             f"{UNLEARNED_AP50:g}) |", "| --- | ---: | " + " | ".join("---:" for _ in names) + " | --- |"]
    said = []
    for label, metrics in rows:
        aps = class_ap50(metrics)
        mean = (metrics or {}).get("mAP50")
        missed = unlearned(aps)
        lines.append(f"| {label} | {'-' if mean is None else f'{float(mean):.2f}'} | "
                     + " | ".join("-" if n not in aps else f"{aps[n]:.2f}" for n in names)
                     + f" | {', '.join(n for n, _ in missed) or '-'} |")
        line = unlearned_line(label, aps)
        if line:
            said.append(f"- {line}.")
    kitti = [(label, kitti_cells(m, names)) for label, m in rows]
    if any(cells for _, cells in kitti):
        lines += ["", "KITTI AP40 (easy / moderate / hard), the official 2D benchmark's metric:", "",
                  "| model | " + " | ".join(names) + " | mean |", "| --- | " + " | ".join("---" for _ in names)
                  + " | --- |"]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in kitti if cells]
    if said:
        lines += ["", *said]
    return lines
