"""What to ship: the most accurate exported variant whose measured latency fits a budget.

A *candidate* is one deployable variant as the benchmark stages timed it: (model, its training
method, quantization, precision, runtime), with its batch-1 latency ``p50_ms``/``p90_ms`` on the
benchmark's hardware and its val mAP50 on that runtime with a bootstrap 95% interval
(``mAP50_low``/``mAP50_high``) and per-class AP50. A *gain* is the paired bootstrap interval of
one candidate's mAP50 minus another's over the same val images
(:func:`pipeline.metrics.bootstrap.joint_bootstrap`). The ship stage (``stages/ship.py``) builds
both and writes them, with the choice for every budget of ``deploy.budgets_ms``, to
``reports/ship.json``; ``gkd-bmfi select`` and the summary read that file.

Selection rule (:func:`select`), for a budget of ``B`` ms:

1. **Fits**: a candidate fits when its measured p90 latency is at most ``B`` (nine calls in ten
   finish within the budget; p50 would miss it every other call).
2. **Best**: the most accurate candidate that fits (highest mAP50; equal mAP50: the lower p90).
3. **Cheaper when indistinguishable**: a fitting candidate with a lower p90 whose gain interval
   against the best includes 0 cannot be told apart from it on these val images; the choice is
   the cheapest (lowest p90) of the best and those. The choice says so and gives the interval.
4. **Nothing fits**: no choice; the fastest candidate and its p90 are named instead.

The best of a budget is always on the *frontier* (:func:`frontier`: each candidate more accurate
than every cheaper one), so the intervals needed for any budget are those of each frontier point
against each cheaper candidate (:func:`needed_pairs`); ``reports/ship.json`` holds exactly those,
and :func:`select` answers any budget from it. Torch-free: the ``gkd-bmfi`` command imports it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.io import read_json
from pipeline.report.per_class import class_ap50, unlearned_line

#: what every candidate of reports/ship.json carries as a number
NUMBERS = ("p50_ms", "p90_ms", "mAP50", "mAP50_low", "mAP50_high")
FIX = "re-run the ship stage (dvc repro ship)"


def runtime_and_precision(backend: str) -> tuple[str, str]:
    """``onnxruntime-cpu-int8_cpu`` -> ``("onnxruntime-cpu", "int8_cpu")``; ``tensorrt-fp16`` ->
    ``("tensorrt", "fp16")`` (the benchmark's backend names, ``<runtime>-<precision>``)."""
    runtime, _, precision = backend.rpartition("-")
    return runtime, precision


def quantization(precision: str, qat_method: str | None) -> str:
    """``none`` (fp32/fp16), ``PTQ`` (post-training int8), ``QAT`` or ``QAT+<method>``."""
    if qat_method is not None:
        return "QAT" if qat_method == "none" else f"QAT+{qat_method}"
    return "PTQ" if precision.startswith("int8") else "none"


def label(c: Mapping[str, Any]) -> str:
    """``gkd_bmfi-resnet18 int8 QAT+gkd_bmfi on onnxruntime-cpu (gfl)``."""
    quant = "" if c.get("quantization", "none") == "none" else f" {c['quantization']}"
    detector = f" ({c['detector']})" if c.get("detector") else ""
    return f"{c['model']} {c['precision']}{quant} on {c['runtime']}{detector}"


def spread(c: Mapping[str, Any]) -> str:
    """``"41.2-47.9 ms"``: the p50-p90 latency spread."""
    return f"{c['p50_ms']:.1f}-{c['p90_ms']:.1f} ms"


def accuracy(c: Mapping[str, Any]) -> str:
    """``"12.47 [10.90, 14.02]"``: mAP50 with its 95% interval."""
    return f"{c['mAP50']:.2f} [{c['mAP50_low']:.2f}, {c['mAP50_high']:.2f}]"


def _interval(g: Mapping[str, Any]) -> str:
    return f"{g['gain']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}]"


def _includes_zero(g: Mapping[str, Any]) -> bool:
    return g["low"] <= 0.0 <= g["high"]


def candidate(record: Mapping[str, Any], backend: str, row: Mapping[str, Any], metrics: Mapping[str, Any],
              interval: tuple[float, float]) -> dict[str, Any]:
    """A candidate from one backend ``row`` of a benchmark ``record`` (the benchmark stage's json),
    the ``metrics`` of that backend's val detections (:func:`pipeline.metrics.evaluate_detections`)
    and the bootstrap ``interval`` of its mAP50."""
    runtime, precision = runtime_and_precision(backend)
    qat = record.get("qat_method")
    model = record.get("parent") or record["model"]
    quant = quantization(precision, qat)
    c = {"key": f"{record['detector']}/{model}/{quant}/{backend}", "dataset": record.get("dataset"),
         "detector": record["detector"], "model": model, "method": model.rpartition("-")[0],
         "backbone": record.get("backbone"), "quantization": quant, "precision": precision, "runtime": runtime,
         "backend": backend, "p50_ms": float(row["p50_ms"]), "p90_ms": float(row["p90_ms"]),
         "mAP50": float(metrics["mAP50"]), "mAP50_low": float(interval[0]), "mAP50_high": float(interval[1]),
         "per_class": {name: {"AP50": ap} for name, ap in class_ap50(metrics).items()},
         "kitti": metrics.get("kitti"), "host": record.get("host"), "cpu_threads": record.get("cpu_threads")}
    c["label"] = label(c)
    return c


def frontier(candidates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """By ascending p90, each candidate more accurate than every cheaper one: the best of any budget."""
    out: list[Mapping[str, Any]] = []
    for c in sorted(candidates, key=lambda c: (c["p90_ms"], -c["mAP50"])):
        if not out or c["mAP50"] > out[-1]["mAP50"]:
            out.append(c)
    return out


def needed_pairs(candidates: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(frontier key, cheaper key)``: every gain interval :func:`select` can need, for any budget."""
    return [(f["key"], c["key"]) for f in frontier(candidates) for c in candidates if c["p90_ms"] < f["p90_ms"]]


@dataclass(frozen=True)
class Choice:
    """What :func:`select` decided for one budget.

    Attributes:
        budget_ms: the budget (batch-1 p90, ms).
        chosen: the candidate to ship, ``None`` when nothing fits.
        best: the most accurate fitting candidate (``chosen`` unless a cheaper one ties with it).
        versus_best: gain interval of ``best`` over ``chosen`` when they differ.
        ties: ``(candidate, gain interval of best over it)`` of the other fitting candidates cheaper
            than ``best`` that cannot be told apart from it (each costlier than ``chosen``).
        next_cheaper: ``(candidate, gain interval of best over it)``: the most accurate fitting
            candidate cheaper than ``chosen`` (what the choice was measured against), if any.
        fitting: how many candidates fit.
        fastest: the candidate with the lowest p90 when nothing fits.
    """

    budget_ms: float
    chosen: Mapping[str, Any] | None
    best: Mapping[str, Any] | None
    versus_best: Mapping[str, Any] | None
    ties: tuple[tuple[Mapping[str, Any], Mapping[str, Any]], ...]
    next_cheaper: tuple[Mapping[str, Any], Mapping[str, Any] | None] | None
    fitting: int
    fastest: Mapping[str, Any] | None

    def sentence(self) -> str:
        """The decision in one plain sentence."""
        budget = f"budget {self.budget_ms:g} ms (p90)"
        if self.chosen is None:
            if self.fastest is None:
                return f"{budget}: no benchmarked variant with val detections; run the benchmark stages"
            return (f"{budget}: nothing fits; the fastest variant, {label(self.fastest)}, has p90 "
                    f"{self.fastest['p90_ms']:.1f} ms (p50-p90 {spread(self.fastest)})")
        c = self.chosen
        text = f"{budget}: ship {label(c)}, mAP50 {accuracy(c)}, latency p50-p90 {spread(c)}"
        if self.best is not None and self.best["key"] != c["key"]:
            text += (f"; the most accurate that fits, {label(self.best)} (mAP50 {self.best['mAP50']:.2f}, "
                     f"{spread(self.best)}), is not distinguishable from it (difference "
                     f"{_interval(self.versus_best)} includes 0), so the cheaper is chosen")
            if self.ties:
                text += "; also within the interval of the best, but costlier: " + ", ".join(
                    label(t) for t, _ in self.ties)
        else:
            text += f"; the most accurate of the {self.fitting} variants that fit"
        if self.next_cheaper is not None:
            other, gain = self.next_cheaper
            against = "" if gain is None else f" (the best minus it {_interval(gain)})"
            text += (f"; the next cheaper, {label(other)}, scores {other['mAP50']:.2f} at "
                     f"{spread(other)}{against}")
        return text

    def as_dict(self) -> dict[str, Any]:
        """The json record (candidates by key)."""
        key = (lambda c: None if c is None else c["key"])
        return {"budget_ms": self.budget_ms, "chosen": key(self.chosen), "best": key(self.best),
                "versus_best": self.versus_best, "fitting": self.fitting, "fastest": key(self.fastest),
                "ties": [{"key": t["key"], **g} for t, g in self.ties],
                "next_cheaper": None if self.next_cheaper is None else
                {"key": self.next_cheaper[0]["key"], "gain": self.next_cheaper[1]},
                "sentence": self.sentence()}


def _gain_index(gains: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(g["model"], g["reference"]): g for g in gains}


def select(candidates: Sequence[Mapping[str, Any]], gains: Sequence[Mapping[str, Any]], budget_ms: float) -> Choice:
    """The choice for ``budget_ms`` by the rule of this module's docstring.

    Args:
        candidates: records with ``key``, ``p50_ms``, ``p90_ms``, ``mAP50`` (and what
            :func:`label` shows).
        gains: ``{"model": key, "reference": key, "gain", "low", "high"}`` paired intervals of
            ``model``'s mAP50 minus ``reference``'s (at least :func:`needed_pairs`). A cheaper
            candidate without one is treated as distinguishable (its gap is not known to be noise).
    """
    if not candidates:
        return Choice(budget_ms, None, None, None, (), None, 0, None)
    fit = [c for c in candidates if c["p90_ms"] <= budget_ms]
    if not fit:
        return Choice(budget_ms, None, None, None, (), None, 0, min(candidates, key=lambda c: c["p90_ms"]))
    index = _gain_index(gains)
    best = max(fit, key=lambda c: (c["mAP50"], -c["p90_ms"]))
    cheaper = sorted((c for c in fit if c["p90_ms"] < best["p90_ms"]), key=lambda c: (c["p90_ms"], -c["mAP50"]))
    ties = tuple((c, index[best["key"], c["key"]]) for c in cheaper
                 if (best["key"], c["key"]) in index and _includes_zero(index[best["key"], c["key"]]))
    chosen = ties[0][0] if ties else best
    versus = ties[0][1] if ties else None
    below = [c for c in fit if c["p90_ms"] < chosen["p90_ms"]]
    nxt = max(below, key=lambda c: (c["mAP50"], -c["p90_ms"])) if below else None
    return Choice(budget_ms, chosen, best, versus, tuple(t for t in ties if t[0] is not chosen),
                  None if nxt is None else (nxt, index.get((best["key"], nxt["key"]))), len(fit), None)


def unlearned_note(c: Mapping[str, Any]) -> str | None:
    """The "has not learned" line of a candidate (per-class AP50 below 1), or ``None``."""
    return unlearned_line(label(c), class_ap50(c))


# --------------------------------------------------------------------------- reports/ship.json


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def check_ship(data: Any, path: Path) -> dict[str, Any]:
    """``data`` as the ship stage writes it, or one line naming the first field that is not."""
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise UserError(f"{path}: not the ship stage's record (an object with 'datasets'); {FIX}")
    for name, block in data["datasets"].items():
        where = f"{path}: datasets.{name}"
        if not isinstance(block, dict) or not isinstance(block.get("candidates"), list) \
                or not isinstance(block.get("gains"), list):
            raise UserError(f"{where} needs the lists 'candidates' and 'gains'; {FIX}")
        for i, c in enumerate(block["candidates"]):
            if not isinstance(c, dict) or not isinstance(c.get("key"), str):
                raise UserError(f"{where}.candidates[{i}] needs a string 'key'; {FIX}")
            for field in NUMBERS:
                if not _number(c.get(field)):
                    raise UserError(f"{where}.candidates[{i}].{field} = {c.get(field)!r} is not a finite number; {FIX}")
        for i, g in enumerate(block["gains"]):
            if not isinstance(g, dict) or not all(_number(g.get(k)) for k in ("gain", "low", "high")) \
                    or not all(isinstance(g.get(k), str) for k in ("model", "reference")):
                raise UserError(f"{where}.gains[{i}] needs 'model', 'reference' (keys) and numbers 'gain', 'low', "
                                f"'high'; {FIX}")
    return data


def read_ship(path: Path) -> dict[str, Any]:
    """``reports/ship.json``, checked (:func:`check_ship`)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file; run the ship stage (dvc repro ship) or pass --ship")
    return check_ship(read_json(path, "the ship stage (dvc repro ship)"), Path(path))
