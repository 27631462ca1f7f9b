"""The export manifest: ``exports/<dataset>/<detector>/<model>/manifest.json``.

One json beside the ONNX files and engines says everything a consumer needs and nothing is
prepended to the artifacts themselves (TensorRT plans stay pure)::

    format          "gkd-bmfi-export/1"
    model           dataset, detector, model, backbone, checkpoint path and sha256
    class_names     label index -> name
    input           images: shape [N|1, 3, H, W] float32 NCHW; image_sizes: [N, 2] float32 (h, w)
    preprocessing   RGB uint8 -> keep-ratio resize into resize_wh (interpolation: half-pixel
                    bilinear, no antialias, as cv2.INTER_LINEAR) -> (x - mean) / std -> pad_value
                    0 at bottom/right to pad_hw; channel_order RGB; normalize_in_graph false
    outputs         num_dets [N,1] int32, boxes [N,K,4] float32 x1,y1,x2,y2 input pixels,
                    scores [N,K] float32, labels [N,K] int32 (-1 = empty slot)
    nms             score/IoU thresholds, K, pre-NMS top-k, class-aware
    exporter        torch / onnx versions, opset, IR version, simplified
    parity          the parity gate's result and tolerances
    artifacts       file name -> {kind: onnx|engine, precision, sha256, recipe, eval | skipped, runtime
                    (what the file is for), tensorrt_readiness (ONNX files: the TensorRT 10 parser
                    check, pipeline/deploy/trt_readiness.py), profile (engines), ...}
    tensorrt        {"skipped": why} or the build environment (version, GPU, compute capability)

Pure python and json only: the runtime imports this module, and the runtime must not import torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.io import file_sha256 as sha256  # noqa: F401  (re-exported: the manifest's file identity)

FORMAT = "gkd-bmfi-export/1"
MANIFEST = "manifest.json"
REQUIRED = ("format", "model", "class_names", "input", "preprocessing", "outputs", "nms", "artifacts")
PREPROCESSING_KEYS = ("resize_wh", "mean", "std", "pad_hw", "normalize_in_graph", "interpolation")
ENGINE_KEYS = ("precision", "sha256", "tensorrt_version", "gpu_name", "compute_capability")


def preprocessing_record(width: int, height: int, pad_hw: tuple[int, int], mean: tuple[float, ...],
                         std: tuple[float, ...], interpolation: str) -> dict[str, Any]:
    """The preprocessing contract (``params.input``), as training, evaluation and the runtime apply
    it, in numbers another implementation (C++, CUDA/NPP) can follow."""
    return {
        "color": "RGB", "channel_order": ["R", "G", "B"], "dtype": "uint8 HxWx3 in, float32 NCHW out",
        "resize": "keep aspect ratio: scale = min(resize_w / w, resize_h / h); out size = round(w * scale), "
                  "round(h * scale), at least 1",
        "interpolation": interpolation,
        "resize_wh": [int(width), int(height)], "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "normalize": "(x - mean) / std per channel, float32, after the resize",
        "pad": "bottom and right, after normalisation", "pad_value": 0.0, "pad_hw": [int(pad_hw[0]), int(pad_hw[1])],
        "normalize_in_graph": False,
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json`` (the caller's folder is already a temporary one)."""
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and check ``folder/manifest.json``: one clear line for a missing or malformed one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: manifest not found; an export folder needs the manifest.json written by "
                        "the export stage beside the model (re-run `dvc repro export`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid json ({err}); re-run the export stage") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a json object; re-run the export stage")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(f"{path}: missing key {missing[0]!r}; re-run the export stage")
    if data["format"] != FORMAT:
        raise UserError(f"{path}: format {data['format']!r} is not {FORMAT!r}; re-export with this version")
    pre = data["preprocessing"]
    absent = [k for k in PREPROCESSING_KEYS if k not in pre]
    if absent:
        raise UserError(f"{path}: preprocessing.{absent[0]} missing; re-run the export stage")
    if not isinstance(data["class_names"], list) or not data["class_names"]:
        raise UserError(f"{path}: class_names must be a non-empty list; re-run the export stage")
    return data


def artifact_entry(manifest: dict[str, Any], folder: Path, file_name: str) -> dict[str, Any]:
    """The manifest's entry of ``file_name``, checked against the file on disk (sha256)."""
    path = Path(folder) / file_name
    entry = manifest["artifacts"].get(file_name)
    if entry is None:
        listed = ", ".join(sorted(manifest["artifacts"])) or "none"
        raise UserError(f"{Path(folder) / MANIFEST}: no entry for {file_name} (lists {listed}); "
                        "the file does not belong to this export, re-run the export stage")
    if not path.is_file():
        raise UserError(f"{path}: listed in the manifest but missing; re-run the export stage")
    if entry.get("sha256") != sha256(path):
        raise UserError(f"{path}: sha256 differs from the manifest's; the file was changed or truncated, "
                        "re-run the export stage")
    if entry.get("kind") == "engine":
        missing = [k for k in ENGINE_KEYS if k not in entry]
        if missing:
            raise UserError(f"{Path(folder) / MANIFEST}: engine entry {file_name} lacks {missing[0]!r}; "
                            "rebuild the engine")
    return entry


def check_engine_compat(entry: dict[str, Any], file_name: str, tensorrt_version: str, gpu_name: str,
                        compute_capability: str) -> None:
    """Refuse an engine built with another TensorRT version or on another GPU (one line).

    TensorRT plans are tied to the exact TensorRT version and the GPU architecture they were
    built for; loading a mismatched one fails deep inside TensorRT or gives wrong results.
    """
    if entry["tensorrt_version"] != tensorrt_version:
        raise UserError(f"{file_name}: engine built with TensorRT {entry['tensorrt_version']} but TensorRT "
                        f"{tensorrt_version} is installed; rebuild it on this machine (dvc repro export)")
    if entry["compute_capability"] != compute_capability or entry["gpu_name"] != gpu_name:
        raise UserError(f"{file_name}: engine built for {entry['gpu_name']} (sm {entry['compute_capability']}) "
                        f"but this GPU is {gpu_name} (sm {compute_capability}); rebuild it on this machine")
