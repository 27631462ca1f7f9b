"""Benchmark one exported model on every backend and precision present on this machine.

Backends (a name is ``<runtime>-<device>-<precision>``):

* ``pytorch-cpu-fp32`` (eager, ``torch.set_num_threads(threads)``), ``pytorch-cuda-fp32`` with a GPU;
* ``onnxruntime-cpu-<p>`` for every ONNX variant (``intra_op_num_threads = threads``);
* ``onnxruntime-cuda-<p>`` / ``onnxruntime-tensorrt-<p>`` when onnxruntime offers those providers
  AND the session really uses them (``session.get_providers()``; onnxruntime-gpu without a GPU
  silently falls back to CPU, which is then reported as skipped);
* ``tensorrt-<p>`` for every ``model-<p>.engine`` of the export.

What is timed: one call of the model on already preprocessed inputs (network, decode, NMS;
GPU backends include the host-device copies of inputs and outputs); image decoding and
resizing are excluded. Backends are timed in alternating rounds, so background load hits all
alike. Each row carries the mAP50 of that artifact on the val split, on the runtime timed: for
``pytorch-cpu`` the number the export stage measured (``mAP50_source: export``); every ONNX
Runtime and TensorRT backend runs over val in this run (``this run``) and, given a folder, its
detections are written there as ``<backend>.npz`` (:func:`pipeline.metrics.bootstrap.save_detections`)
for the paired intervals of the ship stage. A TensorRT-targeted int8 file on ONNX Runtime CPU is
thus scored with onnxruntime's fused integer kernels, which is what was timed (the export's
manifest scores it with its Q/DQ as written, the arithmetic TensorRT implements).

A QAT export (``model=None``) has no PyTorch backend: its fake-quant model is a training device,
not a deployment runtime.
"""
from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from pipeline.config import BenchmarkParams
from pipeline.data.dataset import CuratedDataset, collate
from pipeline.deploy.benchmark import measure_interleaved
from pipeline.deploy.manifest import artifact_entry, read_manifest
from pipeline.deploy.parity import backend_detections
from pipeline.deploy.runtime import DeployedDetector, OnnxBackend
from pipeline.engine.inference import evaluate_model
from pipeline.errors import UserError
from pipeline.metrics import evaluate_detections
from pipeline.metrics.bootstrap import save_detections
from pipeline.models.detector import Detector
from pipeline.structures import Batch

GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass
class Contestant:
    """One backend to time: its calls, the providers it really uses and its accuracy: either an
    mAP50 measured earlier (``accuracy``) or its val detections, computed only if it runs."""

    single: Callable[[], object]
    batched: Callable[[], object]
    sync: Callable[[], None] | None
    providers: list[str]
    accuracy: Callable[[], float | None]     # mAP50 on val, computed only if the backend runs
    source: str                              # where that mAP50 comes from
    detections: Callable[[], dict] | None = None   # image id -> Detections over val on this backend


def _known(value: float | None) -> float | None:
    """An accuracy measured earlier (the export stage's)."""
    return value


def _torch_map50(model: Detector, val: CuratedDataset, device: torch.device,
                 batch: int) -> float:  # pragma: no cover - GPU only
    return evaluate_model(model, val, device, batch, progress=False)["mAP50"]


def _inputs(val: CuratedDataset, batch: int) -> Batch:
    """The first ``batch`` val images (repeated if the split is smaller) as a :class:`Batch`."""
    return collate([val[i % len(val)] for i in range(batch)])


def _array_calls(run: Callable, small: Batch, big: Batch, dynamic: bool) -> tuple[Callable, Callable]:
    """Batch-1 and batched calls of ``run(images, sizes)``; a static-batch graph gets the batch as
    consecutive single-image calls."""
    one = (small.images.numpy(), np.array(small.image_sizes, dtype=np.float32))
    images, sizes = big.images.numpy(), np.array(big.image_sizes, dtype=np.float32)
    if dynamic:
        return (lambda: run(*one)), (lambda: run(images, sizes))
    return (lambda: run(*one)), (lambda: [run(images[i:i + 1], sizes[i:i + 1]) for i in range(len(images))])


def _torch(model: Detector, manifest: dict, val: CuratedDataset, small: Batch, big: Batch, eval_batch: int,
           out: dict, skipped: dict) -> None:
    """PyTorch eager on CPU and, with a GPU, on CUDA."""
    for device in ("cpu", "cuda"):
        key = f"pytorch-{device}-fp32"
        if device == "cuda" and not torch.cuda.is_available():
            skipped[key] = "no CUDA GPU visible to PyTorch"
            continue
        dev = torch.device(device)
        net = model if device == "cpu" else _cuda_copy(model)
        b1, bn = small.to(dev), big.to(dev)

        def call(batch: Batch, net: Detector = net):
            with torch.no_grad():
                return net.predict(net.features(batch.images), batch)

        if device == "cpu":
            accuracy, source = partial(_known, manifest["pytorch"]["mAP50"]), "export"
        else:  # pragma: no cover - needs a GPU
            accuracy, source = partial(_torch_map50, net, val, dev, eval_batch), "this run"
        out[key] = Contestant(lambda b1=b1, call=call: call(b1), lambda bn=bn, call=call: call(bn),
                              torch.cuda.synchronize if device == "cuda" else None,
                              [f"torch {torch.__version__} {device}"], accuracy, source)


def _cuda_copy(model: Detector) -> Detector:  # pragma: no cover - needs a GPU
    import copy

    return copy.deepcopy(model).cuda().eval()


def _onnx(folder: Path, manifest: dict, val: CuratedDataset, small: Batch, big: Batch, bp: BenchmarkParams,
          eval_batch: int, out: dict, skipped: dict) -> None:
    """ONNX Runtime on CPU and, where really available, on the CUDA / TensorRT providers.

    Each file's sha256 is checked against the manifest first: a file replaced after the export
    (say a fp32 graph copied over ``model-int8.onnx``) ends the benchmark with one line instead
    of being timed under the wrong label."""
    available = ort.get_available_providers()
    dynamic = bool(manifest["input"].get("dynamic_batch", True))
    for name, entry in manifest["artifacts"].items():
        if entry.get("kind") != "onnx":
            continue
        artifact_entry(manifest, folder, name)   # the file timed is the file the manifest describes
        for device, provider in [("cpu", "CPUExecutionProvider"), *GPU_PROVIDERS.items()]:
            key = f"onnxruntime-{device}-{entry['precision']}"
            if provider not in available:
                skipped[key] = f"{provider} is not in this onnxruntime build (onnxruntime-gpu adds it)"
                continue
            wanted = [provider] if device == "cpu" else [provider, "CPUExecutionProvider"]
            try:
                backend = OnnxBackend(folder / name, wanted, bp.threads if device == "cpu" else None)
            except UserError as err:
                skipped[key] = str(err)
                continue
            if backend.providers[0] != provider:
                skipped[key] = f"{provider} listed but the session runs on {backend.providers[0]} (no GPU?)"
                continue
            one, many = _array_calls(backend.run, small, big, dynamic)
            out[key] = Contestant(one, many, None, backend.providers, partial(_known, None), "this run",
                                  partial(backend_detections, backend, val, eval_batch if dynamic else 1))


def _engines(folder: Path, manifest: dict, val: CuratedDataset, small: Batch, big: Batch, eval_batch: int,
             out: dict, skipped: dict) -> None:
    """TensorRT engines of the export (none without TensorRT and a GPU: the skip record says why)."""
    engines = [n for n, e in manifest["artifacts"].items() if e.get("kind") == "engine"]
    if not engines:
        skipped["tensorrt"] = manifest.get("tensorrt", {}).get("skipped", "no engine in the export")
        return
    for name in engines:  # pragma: no cover - needs TensorRT and a GPU
        det = DeployedDetector(folder / name)
        one, many = _array_calls(det.run, small, big, True)
        batch = min(eval_batch, det.max_batch)
        out[f"tensorrt-{det.precision}"] = Contestant(one, many, None, det.providers, partial(_known, None),
                                                      "this run", partial(backend_detections, det, val, batch))


def onnx_cpu_timings(files: dict[str, Path], val: CuratedDataset, bp: BenchmarkParams,
                     dynamic: bool) -> dict[str, dict[str, float]]:
    """Latency of several ONNX files on ONNX Runtime CPU (``bp.threads`` threads) in one
    interleaved run, as :func:`run_suite` times its backends: ``{label: timings}`` for ``files``
    (label -> file). ``dynamic``: the graphs take a batch (else the batch is timed as consecutive
    single-image calls)."""
    small, big = _inputs(val, 1), _inputs(val, bp.throughput_batch)
    contestants = {}
    for label, path in files.items():
        backend = OnnxBackend(path, ["CPUExecutionProvider"], bp.threads)
        one, many = _array_calls(backend.run, small, big, dynamic)
        contestants[label] = (one, many, None)
    return measure_interleaved(contestants, len(big), bp.warmup_iters, bp.iters, bp.throughput_iters)


def run_suite(model: Detector | None, folder: Path, val: CuratedDataset, bp: BenchmarkParams,
              eval_batch: int, detections_dir: Path | None = None) -> dict[str, Any]:
    """Benchmark the export in ``folder`` (and ``model``, its PyTorch source; ``None`` for a QAT
    export); the metrics record. ``detections_dir``: where each ONNX Runtime / TensorRT backend's
    val detections are written (``<backend>.npz``)."""
    manifest = read_manifest(folder)
    torch.set_num_threads(bp.threads)
    small, big = _inputs(val, 1), _inputs(val, bp.throughput_batch)
    found: dict[str, Contestant] = {}
    skipped: dict[str, str] = {}
    if model is not None:
        _torch(model.eval().cpu(), manifest, val, small, big, eval_batch, found, skipped)
    _onnx(folder, manifest, val, small, big, bp, eval_batch, found, skipped)
    _engines(folder, manifest, val, small, big, eval_batch, found, skipped)
    runnable = {}
    for key, c in found.items():
        try:
            c.single()
        except Exception as err:  # noqa: BLE001 - e.g. a kernel missing for fp16 on this CPU fails at run time
            skipped[key] = f"cannot run: {str(err).strip().splitlines()[0][:200] if str(err).strip() else err!r}"
            continue
        runnable[key] = c
    timings = measure_interleaved({k: (c.single, c.batched, c.sync) for k, c in runnable.items()},
                                  len(big), bp.warmup_iters, bp.iters, bp.throughput_iters)
    rows: dict[str, dict[str, Any]] = {}
    for key, c in runnable.items():
        row: dict[str, Any] = {**timings[key], "providers": ",".join(c.providers)}
        map50 = c.accuracy()
        if c.detections is not None:
            dets = c.detections()
            map50 = evaluate_detections(val.coco, dets)["mAP50"]
            if detections_dir is not None:
                save_detections(Path(detections_dir) / f"{key}.npz", dets)
        if map50 is not None:
            row.update({"mAP50": float(map50), "mAP50_source": c.source})
        rows[key] = row
    record: dict[str, Any] = {
        **{k: manifest["model"][k] for k in ("dataset", "detector", "model", "backbone", "parent", "qat_method")
           if k in manifest["model"]},
        "input_hw": list(manifest["input"]["shape"][2:]),
        "cpu_threads": bp.threads, "warmup_iters": bp.warmup_iters, "iters": bp.iters,
        "throughput_batch": bp.throughput_batch, "throughput_iters": bp.throughput_iters,
        "timed": "one model call on preprocessed inputs: network + decode + NMS (GPU: with host-device copies); "
                 "image decode and resize excluded; backends interleaved in rounds",
        "nms": manifest["nms"],
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "torch": torch.__version__, "onnxruntime": ort.__version__},
        "backends": rows,
        "skipped": skipped,
    }
    return record
