"""Latency and throughput of one callable, and the mAP-versus-latency (Pareto) plot.

Protocol (DEPLOY.md section 5): ``warmup`` untimed calls, then ``iters`` calls timed one by one
with ``time.perf_counter`` (GPU backends pass ``sync`` so the clock stops when the device is
done); p50/p90/p99 in milliseconds; throughput = batch / p50 of the batched call. Several
backends are timed in alternating rounds (:func:`measure_interleaved`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import read_json


def time_calls(fn: Callable[[], object], warmup: int, iters: int,
               sync: Callable[[], None] | None = None) -> np.ndarray:
    """``[iters]`` wall-clock milliseconds of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = np.empty(iters, dtype=np.float64)
    for i in range(iters):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        out[i] = (time.perf_counter() - start) * 1000.0
    return out


def latency_summary(ms: np.ndarray) -> dict[str, float]:
    """p50/p90/p99 and mean of ``[iters]`` milliseconds (numpy's linear interpolation)."""
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean())}


def _split(n: int, rounds: int) -> list[int]:
    """``n`` iterations over ``rounds`` rounds as evenly as possible, earlier rounds first."""
    return [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]


def measure_interleaved(contestants: dict[str, tuple[Callable[[], object], Callable[[], object],
                                                     Callable[[], None] | None]],
                        batch: int, warmup: int, iters: int, batch_iters: int, rounds: int = 3) -> dict[str, dict]:
    """:func:`measure` for several backends, timed in alternating rounds so that a change of
    background load during the run hits every backend alike (ratios stay meaningful).

    Args:
        contestants: name -> ``(single call, batched call, sync or None)``.
    """
    single: dict[str, list[np.ndarray]] = {k: [] for k in contestants}
    batched: dict[str, list[np.ndarray]] = {k: [] for k in contestants}
    for one, many, sync in contestants.values():
        time_calls(one, warmup, 0, sync)
        time_calls(many, 1, 0, sync)
    for n_one, n_many in zip(_split(iters, rounds), _split(batch_iters, rounds)):
        for key, (one, many, sync) in contestants.items():
            single[key].append(time_calls(one, 0, n_one, sync))
            batched[key].append(time_calls(many, 0, n_many, sync))
    out = {}
    for key in contestants:
        result = latency_summary(np.concatenate(single[key]))
        p50 = float(np.percentile(np.concatenate(batched[key]), 50))
        result.update({"batch_p50_ms": p50, "throughput_ips": batch * 1000.0 / p50})
        out[key] = result
    return out


def pareto_points(records: list[dict[str, Any]]) -> list[tuple[str, str, float, float]]:
    """``(model, backend, p50_ms, mAP50)`` of every benchmarked artifact that has both numbers."""
    points = []
    for rec in records:
        for backend, row in rec.get("backends", {}).items():
            if "p50_ms" in row and "mAP50" in row:
                points.append((rec["model"], backend, float(row["p50_ms"]), float(row["mAP50"])))
    return points


def pareto_front(points: list[tuple[str, str, float, float]]) -> list[tuple[str, str, float, float]]:
    """Points not beaten by another that is both faster (or equal) and more accurate (or equal)."""
    front = []
    for p in points:
        dominated = any(q[2] <= p[2] and q[3] >= p[3] and (q[2] < p[2] or q[3] > p[3]) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p[2])


def plot_pareto(json_files: list[Path], png: Path, title: str) -> int:
    """Scatter mAP50 against batch-1 p50 latency (log x) for every artifact in ``json_files``,
    one colour per model, the Pareto front as a line; returns the number of points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [read_json(Path(f), "the benchmark stage (dvc repro)") for f in sorted(json_files)]
    points = pareto_points(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted({p[0] for p in points})
    for i, model in enumerate(models):
        mine = [p for p in points if p[0] == model]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], label=model, color=f"C{i}")
        for _, backend, x, y in mine:
            ax.annotate(backend, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(points)
    if front:
        ax.plot([p[2] for p in front], [p[3] for p in front], color="grey", linestyle="--", linewidth=1,
                label="Pareto front")
    if points:
        from matplotlib.ticker import FormatStrFormatter

        ax.set_xscale("log")
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(FormatStrFormatter("%g"))
        ax.legend(fontsize=8)
    ax.set_xlabel("latency p50 at batch 1 (ms, log scale)")
    ax.set_ylabel("mAP50 on val (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png)
    return len(points)
