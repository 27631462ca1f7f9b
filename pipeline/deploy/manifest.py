"""The export manifest: ``exports/<dataset>/<detector>/<model>/manifest.json``.

One json beside the ONNX files and engines says everything a consumer needs and nothing is
prepended to the artifacts themselves (TensorRT plans stay pure)::

    format          "gkd-bmfi-export/1"
    model           dataset, detector, model, backbone, checkpoint path and sha256
    class_names     label index -> name
    input           images: shape [N|1, 3, H, W] float32 NCHW; image_sizes: [N, 2] float32 (h, w)
    preprocessing   RGB uint8 -> keep-ratio resize into resize_wh (size floor(x * scale + 0.5),
                    resize_examples in numbers; interpolation: half-pixel bilinear, no antialias, as
                    cv2.INTER_LINEAR) -> (x - mean) / std -> pad_value 0 at bottom/right to pad_hw;
                    channel_order RGB; normalize_in_graph false
    outputs         num_dets [N,1] int32, boxes [N,K,4] float32 x1,y1,x2,y2 input pixels,
                    scores [N,K] float32, labels [N,K] int32 (-1 = empty slot)
    nms             score/IoU thresholds, K, pre-NMS top-k, class-aware
    exporter        torch / onnx versions, opset, IR version, simplified
    parity          the parity gate's result and tolerances
    artifacts       file name -> {kind: onnx|engine, precision, sha256, recipe, eval | skipped, runtime
                    (what the file is for), tensorrt_readiness (ONNX files: the TensorRT 10 parser
                    check, pipeline/deploy/trt_readiness.py), profile (engines), ...}
    tensorrt        {"skipped": why} or the build environment (version, GPU, compute capability)
    int8_sensitivity  (int8 exports) per layer group the mAP50 drop alone int8 / alone float32, the
                    float32 groups of the int8 files, rule and steps (pipeline.deploy.int8_sensitivity)
    conventions     what a consumer needs beyond shapes (:func:`conventions_record`): box format and
                    the mapping to the original image, label -> class name, what a score is, the
                    outputs' static shapes, and the arithmetic (runtime, session options) behind
                    every recorded mAP50

Pure python, numpy and json only: the runtime imports this module, and the runtime must not import torch.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.data.transforms import SIZE_RULE, resized_size
from pipeline.errors import UserError
from pipeline.io import file_sha256 as sha256  # noqa: F401  (re-exported: the manifest's file identity)

FORMAT = "gkd-bmfi-export/1"
MANIFEST = "manifest.json"
REQUIRED = ("format", "model", "class_names", "input", "preprocessing", "outputs", "nms", "artifacts")
PREPROCESSING_KEYS = ("resize_wh", "mean", "std", "pad_hw", "normalize_in_graph", "interpolation")
IDENTITY_KEYS = ("dataset", "detector", "model", "backbone")
ENGINE_KEYS = ("precision", "sha256", "tensorrt_version", "gpu_name", "compute_capability")


#: Camera frame sizes ``(w, h)`` of the manifest's worked resize examples (KITTI, 720p, 1080p).
EXAMPLE_SIZES = ((1242, 375), (1280, 720), (1920, 1080))


def resize_examples(width: int, height: int) -> list[dict[str, Any]]:
    """Worked examples of :func:`pipeline.data.transforms.resized_size` into ``width x height``:
    two sizes whose scaled width ends in exactly .5 (``2w - 1`` and ``2w - 3`` by ``2h``: one of
    them rounds differently half to even) and :data:`EXAMPLE_SIZES`; ``in_wh``, ``out_wh`` and the
    per-axis factors ``sx_sy`` = out / in."""
    out = []
    for w, h in ((2 * width - 1, 2 * height), (2 * width - 3, 2 * height), *EXAMPLE_SIZES):
        if w < 1:
            continue
        new_w, new_h = resized_size(w, h, width, height)
        out.append({"in_wh": [w, h], "out_wh": [new_w, new_h], "sx_sy": [new_w / w, new_h / h]})
    return out


def preprocessing_record(width: int, height: int, pad_hw: tuple[int, int], mean: tuple[float, ...],
                         std: tuple[float, ...], interpolation: str) -> dict[str, Any]:
    """The preprocessing contract (``params.input``), as training, evaluation and the runtime apply
    it, in numbers another implementation (C++, CUDA/NPP) can follow."""
    return {
        "color": "RGB", "channel_order": ["R", "G", "B"], "dtype": "uint8 HxWx3 in, float32 NCHW out",
        "resize": f"keep aspect ratio into resize_wh: {SIZE_RULE}",
        "resize_examples": resize_examples(width, height),
        "interpolation": interpolation,
        "resize_wh": [int(width), int(height)], "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "normalize": "(x - mean) / std per channel, float32, after the resize",
        "pad": "bottom and right, after normalisation", "pad_value": 0.0, "pad_hw": [int(pad_hw[0]), int(pad_hw[1])],
        "normalize_in_graph": False,
    }


#: What each detector's ``scores`` output is.
SCORE_MEANING = {
    "gfl": "sigmoid of the class logit: GFL's joint classification-IoU quality score (Generalized Focal Loss, "
           "Eq. 1), not a probability of the class alone; the score of each box kept by class-aware NMS",
    "faster_rcnn": "softmax probability of the class (background excluded) of each box kept by class-aware NMS",
}
#: The arithmetic of a recorded mAP50, by precision of the file and how ONNX Runtime ran its Q/DQ.
_QDQ_AS_WRITTEN = {"session.disable_quant_qdq": "1"}


def _arithmetic(precision: str, as_written: bool) -> str:
    if precision in ("fp32", "fp16"):
        return f"{precision} as in the graph (ONNX Runtime CPU)"
    if as_written:
        return ("int8 Q/DQ as written: each QuantizeLinear/DequantizeLinear pair rounds and clamps to int8 and the "
                "Conv runs in float32 on the dequantized values (ONNX Runtime session option "
                "session.disable_quant_qdq = 1), the arithmetic TensorRT implements")
    return ("int8 fused by ONNX Runtime's default session: Q/DQ pairs folded into its integer CPU kernels "
            "(requantization in between), which moves scores by up to about 0.013 from the graph as written")


def map50_records(artifacts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every mAP50 recorded under ``artifacts.<file>.eval`` with the runtime, session options and
    arithmetic that produced it: ``where`` (the dotted key), ``value``, ``runtime``,
    ``session_config`` (ONNX Runtime session config entries; ``{}`` = the default session),
    ``arithmetic``."""
    out = []
    for name, entry in artifacts.items():
        evaluation = entry.get("eval") or {}
        if entry.get("kind") != "onnx" or "mAP50" not in evaluation:
            continue
        precision = entry.get("precision", "")
        as_written = evaluation.get("qdq") == "as written"
        runs = [("mAP50", as_written)]
        if "onnxruntime_fused_mAP50" in evaluation:
            runs.append(("onnxruntime_fused_mAP50", False))
        for key, written in runs:
            out.append({"where": f"artifacts.{name}.eval.{key}", "value": evaluation[key],
                        "runtime": "onnxruntime " + ", ".join(evaluation.get("providers", [])),
                        "session_config": dict(_QDQ_AS_WRITTEN) if written else {},
                        "arithmetic": _arithmetic(precision, written)})
    return out


def conventions_record(detector: str, class_names: list[str], output_shapes: dict[str, list[Any]],
                       resize_wh: tuple[int, int], artifacts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest's ``conventions``: how to read the outputs (box format, mapping to the
    original image with a worked example, label -> class name, score meaning, static output
    shapes) and the arithmetic behind each recorded mAP50 (:func:`map50_records`)."""
    orig_w, orig_h = 1242, 375
    new_w, new_h = resized_size(orig_w, orig_h, *resize_wh)
    sx, sy = new_w / orig_w, new_h / orig_h
    box = [10.0, 20.0, float(new_w) / 2, float(new_h) - 1.0]
    return {
        "boxes": "x1, y1, x2, y2 float32 in network-input pixels (those of the resized image before padding): "
                 "continuous coordinates from the top-left corner of the top-left pixel, x2/y2 at the right/bottom "
                 "edges (a whole image is [0, 0, w, h]); only the first num_dets slots are detections",
        "boxes_to_original": "x_orig = x / sx, y_orig = y / sy, then clip to [0, orig_w] x [0, orig_h], with the "
                             "per-axis factors sx = resized_w / orig_w and sy = resized_h / orig_h of "
                             "preprocessing.resize (not the keep-ratio scale: the rounded size makes sx and sy "
                             "differ from it and from each other)",
        "boxes_to_original_example": {"orig_wh": [orig_w, orig_h], "resized_wh": [new_w, new_h], "sx_sy": [sx, sy],
                                      "box": box, "box_orig": [box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy]},
        "labels": "labels[n, i] is a 0-based index into class_names; -1 marks an empty slot (past num_dets)",
        "class_names_by_index": {str(i): name for i, name in enumerate(class_names)},
        "scores": f"{SCORE_MEANING.get(detector, 'class score of each box kept by class-aware NMS')}; float32 in "
                  "[0, 1], descending within an image, 0 in empty slots",
        "output_shapes": output_shapes,
        "output_shapes_note": "as declared in every ONNX file: the second dimension is nms.max_per_img, a fixed "
                              "number in the graph; the first is the batch (N: dynamic)",
        "mAP50": "COCO AP at IoU 0.5 in percent over the val split (pipeline.metrics), boxes mapped to the original "
                 "images as boxes_to_original says",
        "mAP50_arithmetic": map50_records(artifacts),
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json`` (the caller's folder is already a temporary one)."""
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _is_int(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _list_of(value: Any, length: int, ok: Callable[[Any], bool]) -> bool:
    return isinstance(value, list) and len(value) == length and all(ok(v) for v in value)


#: (field, check, what it must be): the types and values the runtime and ``gkd-bmfi info`` rely on.
FIELD_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("model", lambda v: isinstance(v, dict) and all(isinstance(v.get(k), str) for k in IDENTITY_KEYS),
     f"an object with the strings {', '.join(IDENTITY_KEYS)}"),
    ("artifacts", lambda v: isinstance(v, dict) and all(isinstance(e, dict) for e in v.values()),
     "an object of file name -> entry object"),
    ("class_names", lambda v: isinstance(v, list) and bool(v) and all(isinstance(n, str) and n for n in v),
     "a non-empty list of class name strings"),
    ("input", lambda v: isinstance(v, dict), "an object"),
    ("input.shape", lambda v: isinstance(v, list) and len(v) == 4 and (v[0] == "N" or _is_int(v[0]))
     and _is_int(v[1]) and v[1] == 3 and _is_int(v[2]) and _is_int(v[3]),
     "[N or batch size, 3, height, width] with positive ints"),
    ("preprocessing", lambda v: isinstance(v, dict), "an object"),
    *((f"preprocessing.{key}", lambda v: _list_of(v, 2, _is_int), "a pair of positive ints")
      for key in ("resize_wh", "pad_hw")),
    ("preprocessing.mean", lambda v: _list_of(v, 3, _is_number), "a list of 3 finite numbers"),
    ("preprocessing.std", lambda v: _list_of(v, 3, lambda x: _is_number(x) and x > 0),
     "a list of 3 finite numbers above 0"),
)
_MISSING = object()


def _field(data: dict[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"`` (``_MISSING`` when absent)."""
    for key in dotted.split("."):
        data = data.get(key, _MISSING) if isinstance(data, dict) else _MISSING
    return data


def _shown(value: Any) -> str:
    """``value`` as json, cut to one short line for a message."""
    text = "missing" if value is _MISSING else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_manifest_fields(path: Path, data: dict[str, Any]) -> None:
    """Refuse a manifest whose fields have the wrong types or values (one line naming the field)."""
    for field, ok, what in FIELD_RULES:
        value = _field(data, field)
        if value is _MISSING or not ok(value):
            raise UserError(f"{path}: {field} is {_shown(value)}, must be {what}; re-run the export stage")
        if field == "preprocessing":
            absent = [k for k in PREPROCESSING_KEYS if k not in value]
            if absent:
                raise UserError(f"{path}: preprocessing.{absent[0]} missing; re-run the export stage")
    (resize_w, resize_h), (pad_h, pad_w) = data["preprocessing"]["resize_wh"], data["preprocessing"]["pad_hw"]
    if resize_w > pad_w or resize_h > pad_h:
        raise UserError(f"{path}: preprocessing.resize_wh {[resize_w, resize_h]} (w, h) does not fit in pad_hw "
                        f"{[pad_h, pad_w]} (h, w); re-run the export stage")


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
    check_manifest_fields(path, data)
    return data


def artifact_mismatch(folder: Path, file_name: str, entry: dict[str, Any]) -> str | None:
    """Why ``folder/file_name`` is not the file the manifest's ``entry`` describes (missing, or its
    sha256 differs), or None when it is."""
    path = Path(folder) / file_name
    if not path.is_file():
        return "listed in the manifest but missing"
    if entry.get("sha256") != sha256(path):
        return "sha256 differs from the manifest's; the file was changed or truncated"
    return None


def artifact_entry(manifest: dict[str, Any], folder: Path, file_name: str) -> dict[str, Any]:
    """The manifest's entry of ``file_name``, checked against the file on disk (sha256)."""
    path = Path(folder) / file_name
    entry = manifest["artifacts"].get(file_name)
    if entry is None:
        listed = ", ".join(sorted(manifest["artifacts"])) or "none"
        raise UserError(f"{Path(folder) / MANIFEST}: no entry for {file_name} (lists {listed}); "
                        "the file does not belong to this export, re-run the export stage")
    mismatch = artifact_mismatch(folder, file_name, entry)
    if mismatch:
        raise UserError(f"{path}: {mismatch}; re-run the export stage")
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
                        f"{tensorrt_version} is installed; rebuild it on this machine (gkd-bmfi build <export folder>)")
    if entry["compute_capability"] != compute_capability or entry["gpu_name"] != gpu_name:
        raise UserError(f"{file_name}: engine built for {entry['gpu_name']} (sm {entry['compute_capability']}) "
                        f"but this GPU is {gpu_name} (sm {compute_capability}); rebuild it on this machine "
                        "(gkd-bmfi build <export folder>)")
