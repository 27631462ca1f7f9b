"""DVC stage `report`: reports/summary.md from the metrics, benchmark results, reports/ship.json, tables and plots.

"What to ship" first (the choice per latency budget, from the ship stage), then one section per
(dataset, detector) of params.yaml: every model's accuracy with its classes, size and PyTorch
latency spread, the latency of each exported artifact per backend, every variant's classes, the
distillation tables and the pictures.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.artifacts import SUMMARY_PATH
from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_file
from pipeline.report.summary import summary


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=SUMMARY_PATH)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    text = summary(params.datasets, params.model.detectors, Path("."), args.out.parent)
    with atomic_file(args.out) as handle:
        handle.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
