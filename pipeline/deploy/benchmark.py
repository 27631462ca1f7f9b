"""Latency and throughput of one callable (the mAP-versus-latency plot: :mod:`pipeline.report.pareto`).

Protocol (docs/deployment.md, 'Benchmark and what to ship'): ``warmup`` untimed calls, then ``iters`` calls timed one by one
with ``time.perf_counter`` (GPU backends pass ``sync`` so the clock stops when the device is
done); p50/p90/p99 in milliseconds; throughput = batch / p50 of the batched call. Several
backends are timed in alternating rounds (:func:`measure_interleaved`).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


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
    background load during the run hits every backend alike (their spreads stay comparable).

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
