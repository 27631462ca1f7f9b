"""The headline figures: the few numbers per model and per deployed variant that DVC shows.

``dvc metrics show`` and ``dvc exp show`` list every key of every file declared as a DVC metric,
one column per key, so the pipeline declares as metrics only small files that share the same
few keys, and keeps its full records (``metrics/...json``: COCO AP, VOC AP, counts, KD balance,
parity, host, skipped backends) as plain outputs. The headline files live under ``scores/``:

* ``scores/<dataset>/<detector>/<model>.json`` (stage ``evaluate``; QAT exports:
  ``scores/<dataset>/<detector>/qat/<method>/<model>.json``, stage ``qat_export``)::

      {"mAP50": 41.23, "AP50": {"Car": 60.1, "Pedestrian": 30.5, "Cyclist": 33.0},
       "kitti_moderate": 38.4}            # KITTI AP40 moderate, only for data with KITTI fields

* ``scores/<dataset>/<detector>/latency/<model>/<backend>.json`` (stage ``benchmark``; QAT
  exports: ``.../latency/qat/<method>/<model>/<backend>.json``), one file per timed variant, so
  that a variant is a row and the columns stay ``mAP50``, ``p50_ms``, ``p90_ms`` however many
  backends a machine has::

      {"mAP50": 40.9, "p50_ms": 12.31, "p90_ms": 13.02}

Figures are rounded to two decimals (percent points, milliseconds): the full records keep the
unrounded values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.io import atomic_dir, write_json

DECIMALS = 2


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), DECIMALS)


def accuracy(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline of an evaluation record (:func:`pipeline.metrics.evaluate_detections`'s dict:
    ``mAP50``, ``per_class.<name>.AP50``, ``kitti.mAP_moderate`` when present)."""
    out: dict[str, Any] = {"mAP50": _round(metrics["mAP50"]),
                           "AP50": {name: _round(row["AP50"]) for name, row in metrics.get("per_class", {}).items()}}
    moderate = (metrics.get("kitti") or {}).get("mAP_moderate")
    if moderate is not None:
        out["kitti_moderate"] = _round(moderate)
    return out


def latency(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Backend name -> headline of a benchmark record (``backends.<name>.{p50_ms, p90_ms, mAP50}``);
    a backend without a val score has no ``mAP50`` key."""
    out = {}
    for name, row in record["backends"].items():
        figures = {"mAP50": _round(row["mAP50"])} if row.get("mAP50") is not None else {}
        figures.update(p50_ms=_round(row["p50_ms"]), p90_ms=_round(row["p90_ms"]))
        out[name] = figures
    return out


def write_accuracy(path: Path, metrics: dict[str, Any]) -> None:
    """Write the accuracy headline of ``metrics`` to ``path``."""
    write_json(path, accuracy(metrics))


def write_latency(folder: Path, record: dict[str, Any]) -> None:
    """Replace ``folder`` with one ``<backend>.json`` headline per timed backend of ``record``."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        for name, figures in latency(record).items():
            write_json(tmp / f"{name}.json", figures)
