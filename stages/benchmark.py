"""DVC stages `benchmark@<dataset>-<detector>-<model>` and `benchmark_qat@<dataset>-<detector>-<model>-<method>`.

    python stages/benchmark.py run <dataset> <detector> <model> [--qat <method>]
        -> metrics/benchmark/<dataset>/<detector>/<model>.json: per backend and precision present
           (PyTorch eager, ONNX Runtime CPU fp32/fp16/int8, ONNX Runtime CUDA/TensorRT, TensorRT
           engines) p50/p90/p99 latency at batch 1 (ms), throughput at benchmark.throughput_batch,
           the providers really used, and that artifact's mAP50 on val on that runtime; skipped
           backends with why;
        -> scores/<dataset>/<detector>/latency/<model>/<backend>.json: each backend's p50/p90 and
           mAP50 alone, the headline `dvc metrics show` lists (pipeline/report/headline.py);
        -> detections/benchmark/<dataset>/<detector>/<model>/<backend>.npz: the val detections of
           every ONNX Runtime / TensorRT backend timed (the ship stage's paired intervals).
        With --qat <method>: the QAT export exports/<dataset>/<detector>/qat/<method>/<model>/
        (its int8 file on every runtime; no PyTorch row), written under .../qat/<method>/<model>
        (headlines: scores/<dataset>/<detector>/latency/qat/<method>/<model>/).

The mAP50-against-latency plot of every variant is stage benchmark_plot (stages/benchmark_plot.py), drawn
from reports/ship.json, where each accuracy carries its interval.
"""
from __future__ import annotations

import argparse

from pipeline.artifacts import curated_path, latency_scores_dir
from pipeline.config import load_params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.deploy.benchmark_suite import run_suite
from pipeline.engine.checkpoint import load_trained
from pipeline.engine.runs import QATRun, RunId
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_dir, write_json
from pipeline.report.headline import write_latency


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    run_id = QATRun(args.dataset, args.detector, args.model, args.qat) if args.qat \
        else RunId(args.dataset, args.detector, args.model)
    folder = run_id.export_dir
    val = CuratedDataset(load_curated(curated_path(run_id.dataset, "val")), params.input, train=False)
    model = None if args.qat else load_trained(run_id, val.class_names, params.model.fpn_channels)[0]
    with atomic_dir(run_id.benchmark_detections_dir) as tmp:
        record = run_suite(model, folder, val, params.benchmark, params.eval.batch_size, tmp)
    write_json(run_id.benchmark_metrics_path, record)
    headlines = latency_scores_dir(run_id.dataset, run_id.detector, args.model, args.qat)
    write_latency(headlines, record)
    for name, row in record["backends"].items():
        acc = f"mAP50 {row['mAP50']:.2f}" if "mAP50" in row else "mAP50 n/a"
        print(f"{run_id} {name:28s} p50 {row['p50_ms']:8.2f} ms  p90 {row['p90_ms']:8.2f} ms  "
              f"{row['throughput_ips']:7.1f} img/s  {acc}  [{row['providers']}]")
    for name, why in record["skipped"].items():
        print(f"{run_id} {name:28s} skipped: {why}")
    print(f"{run_id} -> {run_id.benchmark_metrics_path}, {headlines}, {run_id.benchmark_detections_dir}")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="benchmark one exported model")
    one.add_argument("dataset")
    one.add_argument("detector")
    one.add_argument("model")
    one.add_argument("--qat", default=None, metavar="METHOD",
                     help="benchmark the QAT export of <model> fine-tuned with METHOD (a qat.methods entry)")
    one.add_argument("--params", default="params.yaml")
    one.set_defaults(func=run)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
