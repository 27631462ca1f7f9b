"""ONNX Runtime CPU latency over PyTorch eager CPU latency, ResNet-18 GFL student (issue goal: <= 0.5).

    .venv/bin/python benchmarks/bench_runtime.py [--checkpoint models/synthetic/gfl/baseline-resnet18.pt]
                                                 [--threads 2] [--iters 30] [--params params.yaml]
                                                 [--sweep] [--profile]

``--sweep`` times ONNX Runtime under each graph optimisation level (basic: constant folding and
redundant-node removal; extended: also operator fusions; all: also the NCHWc layout transform of
the x86 kernels) and with the intra-op thread pool spinning or not, every variant interleaved with
PyTorch in the same rounds. ``--profile`` prints where ONNX Runtime's time goes, per operator type
(its own profiler, default session settings).

Input size: params' padded input shape (the default 96 x 320). Both backends get the same
normalised batch of one image, run end to end (network, decode, NMS) with the same pinned thread
count; the image is a real synthetic val image when the curated split exists, else noise. With no
checkpoint the untrained weights are used (the NMS then has fewer boxes: pass the trained student).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import curated_path
from pipeline.config import load_params
from pipeline.deploy.benchmark import measure_interleaved
from pipeline.deploy.export_onnx import export_onnx
from pipeline.deploy.runtime import OnnxBackend
from pipeline.engine.checkpoint import read_model_file
from pipeline.models.factory import build_detector
from pipeline.structures import Batch


def _input(params, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    val = curated_path("synthetic", "val")
    if val.is_file():
        from pipeline.data.dataset import CuratedDataset

        sample = CuratedDataset(val, params.input, train=False)[0]
        return torch.from_numpy(sample.image[None]), tuple(sample.image_size)
    return torch.randn(1, 3, *hw), hw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="models/synthetic/gfl/baseline-resnet18.pt")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--sweep", action="store_true", help="time each optimisation level and spinning setting")
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime's time per operator type")
    args = parser.parse_args()
    params = load_params(args.params)
    hw = params.input.padded_shape
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_file():
        arch, state, _ = read_model_file(checkpoint)
        model = build_detector(arch.detector, arch.backbone, arch.num_classes, "none", arch.fpn_channels)
        model.load_state_dict(state)
        source = str(checkpoint)
    else:
        model = build_detector("gfl", "resnet18", 3, "none", params.model.fpn_channels)
        source = "untrained weights (no checkpoint)"
    model.eval()
    torch.set_num_threads(args.threads)
    images, size = _input(params, hw)
    batch = Batch(images=images, boxes=[], labels=[], ignore_boxes=[], image_ids=[0], scale_factors=torch.ones(1, 2),
                  flipped=torch.zeros(1, dtype=torch.bool), image_sizes=[size], orig_sizes=[size])

    def eager():
        with torch.no_grad():
            return model.predict(model.features(images), batch)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, hw)
        backend = OnnxBackend(path, ["CPUExecutionProvider"], args.threads)
        feeds = {"images": images.numpy(), "image_sizes": np.array([size], dtype=np.float32)}
        runs = {"pytorch eager": (eager, eager, None),
                "onnxruntime": (lambda: backend.run(*feeds.values()), lambda: backend.run(*feeds.values()), None)}
        if args.sweep:
            for name, session in sweep_sessions(path, args.threads).items():
                runs[name] = (lambda s=session: s.run(None, feeds), lambda s=session: s.run(None, feeds), None)
        stats = measure_interleaved(runs, 1, args.warmup, args.iters, 1)
        if args.profile:
            print_profile(path, feeds, args.threads, args.iters)
    print(f"GFL ResNet-18 ({source}), input {hw[0]}x{hw[1]}, batch 1, {args.threads} threads, "
          f"{args.iters} timed runs each")
    eager_p50 = stats["pytorch eager"]["p50_ms"]
    for name, s in stats.items():
        print(f"  {name:34s} p50 {s['p50_ms']:7.1f} ms  p90 {s['p90_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms  "
              f"/ eager {s['p50_ms'] / eager_p50:.2f}")
    ratio = stats["onnxruntime"]["p50_ms"] / eager_p50
    verdict = "met" if ratio <= 0.5 else "NOT met"
    print(f"ONNX Runtime CPU (the runtime's settings) / PyTorch eager CPU (p50): {ratio:.2f}  (goal <= 0.5: {verdict})")


def _options(threads: int, level, spinning: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = level
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def sweep_sessions(path: Path, threads: int) -> dict:
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    return {f"ort {name}, spinning {'on' if spin else 'off'}":
            ort.InferenceSession(str(path), _options(threads, level, spin), providers=["CPUExecutionProvider"])
            for name, level in levels.items() for spin in (True, False)}


def print_profile(path: Path, feeds: dict, threads: int, iters: int) -> None:
    import json
    from collections import Counter

    import onnxruntime as ort

    options = _options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, True)
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "ort-profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(iters):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    times, nodes = Counter(), Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    total = sum(times.values())
    print(f"ONNX Runtime time per operator type (optimised graph, {iters} runs, kernel time "
          f"{total / iters / 1000:.1f} ms per run):")
    for op, us in times.most_common(10):
        print(f"  {op:24s} {100 * us / total:5.1f}%  {nodes[op] // iters:3d} nodes")


if __name__ == "__main__":
    main()
