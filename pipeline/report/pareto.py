"""The accuracy-against-latency plot of every exported variant, from ``reports/ship.json``.

Each candidate (:mod:`pipeline.report.ship`: a model, its quantization, precision and runtime)
is drawn at its batch-1 p90 latency (the budget rule's figure) and val mAP50, with

* a horizontal bar from its p50 to its p90: the latency spread, not a single figure;
* a vertical bar over its bootstrap 95% interval of mAP50;
* a number beside it, and the numbered labels listed under the plot (labels beside crowded
  points overlap; the list never does), one colour per model, one marker per runtime.

The frontier (each variant more accurate than every cheaper one: the best of some budget) is a
step line, the budgets of ``deploy.budgets_ms`` are dotted vertical lines, and the axes span the
points and intervals with a margin (the mAP50 axis at least 2 points), so noise does not fill it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.report.ship import frontier, label

MARKERS = {"pytorch": "s", "onnxruntime": "o", "tensorrt": "D"}


def _marker(runtime: str) -> str:
    return MARKERS.get(runtime.split("-")[0], "^")


def plot_candidates(candidates: Sequence[Mapping[str, Any]], png: Path, title: str,
                    budgets: Sequence[float] = ()) -> int:
    """Draw ``candidates`` into ``png`` (written atomically); returns the number of points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(candidates, key=lambda c: (c["p90_ms"], -c["mAP50"]))
    models = sorted({c["model"] for c in points})
    colour = {m: f"C{i % 10}" for i, m in enumerate(models)}
    rows = max(1, len(points))
    fig, (ax, listing) = plt.subplots(2, 1, figsize=(9, 4.6 + 0.13 * rows),
                                      gridspec_kw={"height_ratios": [4.2, 0.13 * rows + 0.1]})
    listing.axis("off")
    for i, c in enumerate(points, start=1):
        x, y = c["p90_ms"], c["mAP50"]
        ax.plot([c["p50_ms"], x], [y, y], color=colour[c["model"]], linewidth=2, alpha=0.6)
        ax.plot([x, x], [c["mAP50_low"], c["mAP50_high"]], color=colour[c["model"]], linewidth=1)
        ax.scatter([x], [y], color=colour[c["model"]], marker=_marker(c["runtime"]), zorder=3, s=30)
        ax.annotate(str(i), (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
    front = frontier(points)
    if front:
        xs = [p["p90_ms"] for p in front]
        ys = [p["mAP50"] for p in front]
        ax.step(xs + [xs[-1] * 1.05], ys + [ys[-1]], where="post", color="grey", linestyle="--", linewidth=1,
                label="frontier (best within a budget)")
    for b in budgets:
        ax.axvline(b, color="black", linestyle=":", linewidth=0.8)
        ax.annotate(f"{b:g} ms", (b, 1.0), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                    xytext=(-9, -30), textcoords="offset points")
    if points:
        hi_x = max(c["p90_ms"] for c in points)
        shown = [b for b in budgets if b <= 1.5 * hi_x]
        ax.set_xlim(0, 1.08 * max([hi_x, *shown]))
        low = min(c["mAP50_low"] for c in points)
        high = max(c["mAP50_high"] for c in points)
        pad = max(0.1 * (high - low), (2.0 - (high - low)) / 2, 0.2)
        ax.set_ylim(max(0.0, low - pad), high + pad)
        for m in models:
            ax.plot([], [], color=colour[m], linewidth=2, label=m)
        ax.legend(fontsize=7, loc="best")
        key = [f"{i:>2}  {label({**c, 'detector': None})}: mAP50 {c['mAP50']:.2f} "
               f"[{c['mAP50_low']:.2f}, {c['mAP50_high']:.2f}], {c['p50_ms']:.1f}-{c['p90_ms']:.1f} ms"
               for i, c in enumerate(points, start=1)]
        listing.text(0.0, 1.0, "\n".join(key), fontsize=7, va="top", family="monospace",
                     transform=listing.transAxes)
    else:
        ax.text(0.5, 0.5, "no benchmarked variant with val detections", ha="center", transform=ax.transAxes)
    ax.set_xlabel("batch-1 latency (ms): bar p50 to p90, marker at p90 (what a budget must hold)")
    ax.set_ylabel("val mAP50 (%) with 95% interval")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png)
    return len(points)
