"""DVC stages `benchmark@<dataset>-<detector>-<model>` and `benchmark_plot@<dataset>-<detector>`.

    python stages/benchmark.py run <dataset> <detector> <model>
        -> metrics/benchmark/<dataset>/<detector>/<model>.json: per backend and precision present
           (PyTorch eager, ONNX Runtime CPU fp32/fp16/int8, ONNX Runtime CUDA/TensorRT, TensorRT
           engines) p50/p90/p99 latency at batch 1 (ms), throughput at benchmark.throughput_batch,
           the providers really used, and that artifact's mAP50 on val; skipped backends with why.
    python stages/benchmark.py plot <dataset> <detector>
        -> plots/benchmark/<dataset>_<detector>.png: mAP50 against latency, the Pareto view.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.deploy.benchmark import plot_pareto
from pipeline.deploy.benchmark_suite import run_suite
from pipeline.engine.runs import RunId, curated_path, load_trained
from pipeline.errors import UserError, exit_on_user_error
from pipeline.io import write_json


def metrics_path(run: RunId) -> Path:
    return Path("metrics") / "benchmark" / run.dataset / run.detector / f"{run.model}.json"


def plot_path(dataset: str, detector: str) -> Path:
    return Path("plots") / "benchmark" / f"{dataset}_{detector}.png"


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    run_id = RunId(args.dataset, args.detector, args.model)
    val = CuratedDataset(load_curated(curated_path(run_id.dataset, "val")), params.input, train=False)
    model, _ = load_trained(run_id, val.class_names, params.model.fpn_channels)
    folder = Path("exports") / run_id.dataset / run_id.detector / run_id.model
    record = run_suite(model, folder, val, params.benchmark, params.eval.batch_size)
    write_json(metrics_path(run_id), record)
    for name, row in record["backends"].items():
        acc = f"mAP50 {row['mAP50']:.2f}" if "mAP50" in row else "mAP50 n/a"
        print(f"{run_id} {name:28s} p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
              f"{row['throughput_ips']:7.1f} img/s  {acc}  [{row['providers']}]")
    for name, why in record["skipped"].items():
        print(f"{run_id} {name:28s} skipped: {why}")
    if "ort_cpu_over_pytorch_cpu_p50" in record:
        print(f"{run_id} ONNX Runtime CPU / PyTorch eager CPU p50: {record['ort_cpu_over_pytorch_cpu_p50']:.2f} "
              f"({params.benchmark.threads} threads) -> {metrics_path(run_id)}")


def plot(args: argparse.Namespace) -> None:
    folder = Path("metrics") / "benchmark" / args.dataset / args.detector
    files = sorted(folder.glob("*.json"))
    if not files:
        raise UserError(f"{folder}: no benchmark results; run the benchmark stage first (dvc repro benchmark)")
    out = plot_path(args.dataset, args.detector)
    n = plot_pareto(files, out, f"{args.dataset} / {args.detector}: accuracy vs latency")
    print(f"plotted {n} artifacts of {len(files)} models -> {out}")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="benchmark one exported model")
    one.add_argument("dataset")
    one.add_argument("detector")
    one.add_argument("model")
    one.add_argument("--params", default="params.yaml")
    one.set_defaults(func=run)
    pl = sub.add_parser("plot", help="mAP50 vs latency of every benchmarked model of a dataset and detector")
    pl.add_argument("dataset")
    pl.add_argument("detector")
    pl.set_defaults(func=plot)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
