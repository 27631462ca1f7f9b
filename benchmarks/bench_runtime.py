"""ONNX Runtime CPU latency over PyTorch eager CPU latency, ResNet-18 GFL student (issue goal: <= 0.5).

    .venv/bin/python benchmarks/bench_runtime.py [--checkpoint models/synthetic/gfl/baseline-resnet18.pt]
                                                 [--threads 2] [--iters 30] [--params params.yaml]

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

from pipeline.config import load_params
from pipeline.deploy.benchmark import measure_interleaved
from pipeline.deploy.export_onnx import export_onnx
from pipeline.deploy.runtime import OnnxBackend
from pipeline.engine.checkpoint import read_model_file
from pipeline.models.factory import build_detector
from pipeline.structures import Batch


def _input(params, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    val = Path("data/curated/synthetic/val.json")
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
        feeds = (images.numpy(), np.array([size], dtype=np.float32))
        runs = {"pytorch eager": (eager, eager, None),
                "onnxruntime": (lambda: backend.run(*feeds), lambda: backend.run(*feeds), None)}
        stats = measure_interleaved(runs, 1, args.warmup, args.iters, 1)
    print(f"GFL ResNet-18 ({source}), input {hw[0]}x{hw[1]}, batch 1, {args.threads} threads, "
          f"{args.iters} timed runs each")
    for name, s in stats.items():
        print(f"  {name:14s} p50 {s['p50_ms']:7.1f} ms  p90 {s['p90_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms")
    ratio = stats["onnxruntime"]["p50_ms"] / stats["pytorch eager"]["p50_ms"]
    verdict = "met" if ratio <= 0.5 else "NOT met"
    print(f"ONNX Runtime CPU / PyTorch eager CPU (p50): {ratio:.2f}  (goal <= 0.5: {verdict})")


if __name__ == "__main__":
    main()
