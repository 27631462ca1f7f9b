"""DVC stage `check_raw@<dataset>`: stop with one clear line when data/raw/<dataset> is missing.

Writes data/raw_checks/<dataset>.json (the folder checked), which `curate@<dataset>` depends on,
so this runs, and its line is read, before DVC meets the missing folder among curate's
dependencies (pipeline/data/raw_check.py). The synthetic dataset passes: the synthesize stage
writes its folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.artifacts import RAW_ROOT, raw_check_path
from pipeline.config import load_params
from pipeline.data.raw_check import GENERATED, check_raw
from pipeline.errors import exit_on_user_error
from pipeline.io import write_json


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw-root", type=Path, default=RAW_ROOT)
    parser.add_argument("--out", type=Path, default=None, help="default: data/raw_checks/<dataset>.json")
    args = parser.parse_args(argv)

    source = load_params(args.params).source(args.dataset)
    raw = args.raw_root / args.dataset
    check_raw(raw, args.dataset, source.format)
    write_json(args.out or raw_check_path(args.dataset),
               {"dataset": args.dataset, "raw": str(raw), "written_by": GENERATED.get(args.dataset, "you")})


if __name__ == "__main__":
    main()
