"""DVC stages `kd_settings@<dataset>-<detector>-<method>` and `qat_kd_settings@...`: the resolved
settings of one KD method.

    python stages/kd_settings.py <dataset> <detector> <method> [--qat]

Writes models/<dataset>/<detector>/kd_settings/<method>.json (with ``--qat``:
models/<dataset>/<detector>/qat/kd_settings/<method>.json, where ``none``, plain QAT, reads no
``distill`` setting): every ``distill`` setting that the method's runs read for this dataset and
detector (:func:`pipeline.distill.methods.method_settings`). The distill (qat) stages of the
method depend on this file instead of on the ``distill`` section, so an edit to another method's
settings, or to another detector's or dataset's weights, rewrites the file with the same content
and DVC leaves those stages up to date.
"""
from __future__ import annotations

import argparse

from pipeline.artifacts import kd_settings_path
from pipeline.config import load_params
from pipeline.distill.methods import method_settings
from pipeline.errors import exit_on_user_error
from pipeline.io import write_json


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("method")
    parser.add_argument("--qat", action="store_true", help="for a method of qat.methods (none: plain QAT)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    path = kd_settings_path(args.dataset, args.detector, args.method, args.qat)
    plain_qat = args.qat and args.method == "none"
    write_json(path, {"method": "none"} if plain_qat
               else method_settings(args.method, args.detector, params.distill, args.dataset))
    print(f"settings of {args.method} for {args.detector} on {args.dataset} -> {path}")


if __name__ == "__main__":
    main()
