"""DVC stage `ship`: reports/ship.json, the most accurate exported variant within each latency budget.

For every dataset of params.yaml, across its detectors, every backend row of every benchmark record
(metrics/benchmark/<dataset>/<detector>/<model>.json and .../qat/<method>/<model>.json: every
exported model and QAT export, each precision and runtime timed) becomes a candidate with
* its batch-1 p50/p90 latency from that record;
* its val accuracy on that runtime, from its val detections: the benchmark stage's
  detections/benchmark/... for ONNX Runtime and TensorRT, the evaluate stage's
  detections/<dataset>/<detector>/<model>.npz for PyTorch: mAP50, per-class AP50, KITTI AP40;
* a bootstrap 95% interval of its mAP50, and the paired intervals against every cheaper candidate
  of each frontier point, all from one joint resampling of the val images.
Then the choice for every budget of ``deploy.budgets_ms`` (pipeline/report/ship.py documents the
rule). A backend row without val detections is listed under ``not_ranked`` with why.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.artifacts import SHIP_PATH, benchmark_detections_of, benchmark_metrics_dir, curated_path
from pipeline.config import load_params
from pipeline.data.dataset import load_curated
from pipeline.engine.runs import RunId
from pipeline.errors import UserError, exit_on_user_error
from pipeline.io import read_json, write_json
from pipeline.metrics import evaluate_detections
from pipeline.metrics.bootstrap import ImageMatches, image_matches, joint_bootstrap, load_detections
from pipeline.report.per_class import UNLEARNED_AP50
from pipeline.report.ship import __doc__ as RULE
from pipeline.report.ship import candidate, needed_pairs, select

RESAMPLES = 1000


def benchmark_records(dataset: str, detector: str) -> list[tuple[Path, dict[str, Any]]]:
    """Every benchmark json of (dataset, detector): the exports', then the QAT exports'."""
    root = benchmark_metrics_dir(dataset, detector)
    files = sorted(root.glob("*.json")) + sorted(root.glob("qat/*/*.json"))
    out = []
    for path in files:
        record = read_json(path, "the benchmark stage (dvc repro)")
        if not isinstance(record, dict) or not isinstance(record.get("backends"), dict) or "detector" not in record:
            raise UserError(f"{path}: not a benchmark record (an object with 'detector' and 'backends'); delete it "
                            "and run the benchmark stage (dvc repro)")
        out.append((path, record))
    return out


def detections_path(path: Path, record: dict[str, Any], backend: str) -> Path:
    """Where the val detections of ``backend`` of the benchmark record at ``path`` are: PyTorch rows
    use the evaluate stage's, the others the benchmark stage's (same relative place under
    detections/benchmark as the record under metrics/benchmark)."""
    if backend.startswith("pytorch-"):
        return RunId(record["dataset"], record["detector"], record.get("parent") or record["model"]).detections_path
    return benchmark_detections_of(path, backend)


def dataset_block(dataset: str, detectors: tuple[str, ...], budgets: tuple[float, ...]) -> dict[str, Any]:
    """Candidates, gains and choices of one dataset."""
    val = load_curated(curated_path(dataset, "val"))
    found: list[tuple[dict, str, dict, dict]] = []
    matches: dict[str, ImageMatches] = {}
    not_ranked: list[str] = []
    hosts = set()
    for detector in detectors:
        for path, record in benchmark_records(dataset, detector):
            for backend, row in record["backends"].items():
                dets_path = detections_path(path, record, backend)
                if not dets_path.is_file():
                    not_ranked.append(f"{path} {backend}: no val detections at {dets_path}; re-run its benchmark "
                                      "stage (dvc repro)")
                    continue
                dets = load_detections(dets_path)
                key = f"{path}:{backend}"
                matches[key] = image_matches(val, dets)
                found.append((record, backend, row, evaluate_detections(val, dets)))
                host = record.get("host") or {}
                hosts.add(f"{host.get('processor', '?')} ({host.get('machine', '?')}), {record.get('cpu_threads')} "
                          f"CPU threads; onnxruntime {host.get('onnxruntime', '?')}, torch {host.get('torch', '?')}")
    boot = joint_bootstrap(matches, RESAMPLES)
    candidates, by_key = [], {}
    for (record, backend, row, metrics), key in zip(found, matches):
        interval = boot.interval(key)
        c = candidate(record, backend, row, metrics, (interval.low, interval.high))
        candidates.append(c)
        by_key[c["key"]] = key
    gains = []
    for model, reference in needed_pairs(candidates):
        g = boot.gain(by_key[model], by_key[reference])
        gains.append({"model": model, "reference": reference, "gain": g.mean, "low": g.low, "high": g.high})
    choices = [select(candidates, gains, b).as_dict() for b in budgets]
    return {"hardware": sorted(hosts), "num_val_images": len(val["images"]), "candidates": candidates,
            "gains": gains, "choices": choices, "not_ranked": not_ranked}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=SHIP_PATH)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    budgets = tuple(sorted(params.deploy.budgets_ms))
    record = {"budgets_ms": list(budgets), "level": 0.95, "resamples": RESAMPLES, "unlearned_ap50": UNLEARNED_AP50,
              "latency": "batch-1 p50/p90 of the benchmark stages on their machine", "rule": RULE.strip(),
              "datasets": {ds: dataset_block(ds, params.model.detectors, budgets) for ds in params.datasets}}
    write_json(args.out, record)
    for name, block in record["datasets"].items():
        print(f"{name}: {len(block['candidates'])} variants ranked, {len(block['not_ranked'])} without val detections")
        for choice in block["choices"]:
            print(f"  {choice['sentence']}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
