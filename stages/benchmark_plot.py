"""DVC stage `benchmark_plot@<dataset>-<detector>`: the accuracy-against-latency plot of every variant.

    python stages/benchmark_plot.py <dataset> <detector>
        -> plots/benchmark/<dataset>_<detector>.png: every exported variant of every model of that
           detector (QAT exports included) from reports/ship.json: mAP50 with its 95% interval
           against the p50-p90 latency spread, numbered labels listed under the plot, the frontier
           and the budgets of deploy.budgets_ms (pipeline/report/pareto.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.artifacts import SHIP_PATH, benchmark_plot_path
from pipeline.errors import UserError, exit_on_user_error
from pipeline.report.pareto import plot_candidates
from pipeline.report.ship import read_ship


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("--ship", type=Path, default=SHIP_PATH)
    args = parser.parse_args(argv)

    ship = read_ship(args.ship)
    block = ship["datasets"].get(args.dataset)
    if block is None:
        raise UserError(f"{args.ship}: no dataset {args.dataset!r} (it has {', '.join(ship['datasets']) or 'none'}); "
                        "run the ship stage (dvc repro ship) after adding it to datasets")
    mine = [c for c in block["candidates"] if c.get("detector") == args.detector]
    out = benchmark_plot_path(args.dataset, args.detector)
    n = plot_candidates(mine, out, f"{args.dataset} / {args.detector}: every exported variant, accuracy vs latency",
                        ship.get("budgets_ms", ()))
    print(f"plotted {n} variants -> {out}")


if __name__ == "__main__":
    main()
