"""Precision variants decided in the ONNX graph, as TensorRT 10/11 strongly typed networks need.

* ``fp32``: the exported graph as is.
* ``fp16``: the network part converted to float16 (:func:`convert_region_to_fp16`), inputs and
  outputs kept float32. The network is selected by op type (:func:`network_nodes`), not by the
  exporter's node names, so both detectors' layers are covered whatever the module paths: every
  Conv and Gemm (backbone, FPN, GFL's towers, Faster R-CNN's RPN head and RoI box head), their
  Relu/MaxPool/Resize/Flatten, and the Adds of residual and top-down paths. The score sigmoid,
  GFL's distribution integral (softmax expectation, GFL Eq. 5), box decoding, top-k, NMS and
  RoIAlign (boxes and all) stay float32.
* ``int8_cpu`` (``model-int8-cpu.onnx``): ONNX Runtime's fast CPU form, uint8 activations
  (asymmetric, zero points allowed) and per-channel int8 weights, int32 biases: on x86 ONNX
  Runtime fuses every such Conv into an integer kernel (with int8 activations most stay float).
  Non-zero zero points are invalid for TensorRT, hence a file of its own, for ONNX Runtime only.
* ``int8``: explicit Q/DQ from onnxruntime's post-training ``quantize_static`` (QDQ format,
  symmetric int8 activations and per-channel symmetric int8 weights, biases left float32, as
  TensorRT's ONNX parser requires: a DequantizeLinear there takes int8 input only, and
  ``quantize_static``'s default int32 bias would be rejected), on the network's ``Conv``/``Gemm``
  nodes only, calibrated on curated TRAINING images (never val); everything after the raw head
  outputs stays float32. Placement: a Q/DQ pair on each quantized node's input and a per-channel
  DequantizeLinear on its weight, none on its output (TensorRT's own convention: it fuses the
  requantization into the producer from the consumer's input scale), and only the Conv/Gemm reads
  the dequantized activation (:func:`quantized_inputs_only`: a residual Add keeps the float
  value, as in NVIDIA's QAT toolkits). Quantization-aware training (``pipeline/quant``)
  fake-quantizes exactly these inputs, so its export has the same placement.
* Both int8 variants keep the logit layers in float32 (:func:`pipeline.quant.placement.score_layers`: GFL's ``gfl_cls``
  and ``gfl_reg`` convs, Faster R-CNN's ``cls_score``): per-tensor int8 on the logits that feed
  the score sigmoid cost the distilled GFL ResNet-18 of the default 8.5 mAP50 (10.75 -> 2.30;
  uint8: 6.41); with ``gfl_cls`` in float32 the drop was 0.13.

Each recipe is a plain dict written to the manifest.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from pipeline.errors import UserError
from pipeline.quant.placement import QUANTIZED_OPS, score_layers

PRECISIONS = ("fp32", "fp16", "int8", "int8_cpu")
#: The variants meant for TensorRT (checked against its parser, built into engines); the others
#: are for ONNX Runtime on a CPU only.
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")
#: The layers of the network (post-processing has none of these ops in either detector).
LAYER_OPS = ("Conv", "Gemm", "Relu", "MaxPool", "Resize", "Flatten")


def artifact_name(precision: str) -> str:
    """ONNX file name of a precision variant: ``model.onnx`` for fp32, else ``model-<p>.onnx``
    (``int8_cpu`` -> ``model-int8-cpu.onnx``)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return "model.onnx" if precision == "fp32" else f"model-{precision.replace('_', '-')}.onnx"


def runtime_of(precision: str) -> str:
    """Which runtimes a variant is for (the manifest's ``runtime``)."""
    return "tensorrt, onnxruntime" if precision in TENSORRT_PRECISIONS else "onnxruntime-cpu"


def network_nodes(graph: onnx.ModelProto) -> list[str]:
    """Names of the network's nodes, by op type: every :data:`LAYER_OPS` node, and every ``Add``
    whose non-constant inputs all come from network nodes (residual and FPN top-down sums; a
    box-decoding Add reads decoding tensors and stays out). Everything else is post-processing."""
    nodes = list(graph.graph.node)
    constants = {t.name for t in graph.graph.initializer} | {o for n in nodes if n.op_type == "Constant" for o in n.output}
    chosen = {n.name for n in nodes if n.op_type in LAYER_OPS}
    produced_by = {o: n.name for n in nodes for o in n.output}
    changed = True
    while changed:      # an Add feeding another network Add (chains of sums)
        changed = False
        for n in nodes:
            if n.op_type != "Add" or n.name in chosen:
                continue
            sources = [produced_by.get(i) for i in n.input if i and i not in constants]
            if sources and all(s in chosen for s in sources):
                chosen.add(n.name)
                changed = True
    return [n.name for n in nodes if n.name in chosen]


# inputs that must keep their own type in a float16 region (Resize's roi and scales)
_FLOAT16_INPUTS = {"Resize": (0,), "Upsample": (0,)}
# ops left in float32 inside the network: GroupNorm's statistics (exported as
# InstanceNormalization) lose digits in float16; Cast nodes mark explicit float32 requests
_FLOAT32_OPS = ("InstanceNormalization", "Cast")


def _float_types(graph: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor name (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(graph)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def convert_region_to_fp16(graph: onnx.ModelProto, region: set[str]) -> onnx.ModelProto:
    """Run the nodes named in ``region`` in float16, everything else unchanged (float32).

    Float32 tensors entering the region are cast to float16 (initializers used only inside
    the region are converted in place); float16 tensors leaving it are cast back, so graph
    inputs and outputs keep their types. Nodes stay in topological order.
    """
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    types = _float_types(graph)
    g = graph.graph
    region = {n.name for n in g.node if n.name in region and n.op_type not in _FLOAT32_OPS}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in g.output}
    inits = {t.name: t for t in g.initializer}
    produced_in_region = {o for n in g.node if n.name in region for o in n.output if types.get(o) == FLOAT}

    def half_input(name: str, new_nodes: list, casts: dict) -> str:
        if name in produced_in_region:
            return name + "__fp16"
        if name in inits and all(c.name in region for c in consumers[name]):
            t = inits[name]
            if t.data_type == FLOAT:
                t.CopyFrom(onnx.numpy_helper.from_array(
                    onnx.numpy_helper.to_array(t).astype(np.float16), name))
            return name
        if name not in casts:
            casts[name] = name + "__to_fp16"
            new_nodes.append(onnx.helper.make_node("Cast", [name], [casts[name]], to=FLOAT16,
                                                   name=f"{name}__cast_fp16"))
        return casts[name]

    new_nodes: list[onnx.NodeProto] = []
    casts: dict[str, str] = {}
    for node in g.node:
        if node.name not in region:
            new_nodes.append(node)
            continue
        allowed = _FLOAT16_INPUTS.get(node.op_type)
        for i, name in enumerate(node.input):
            if name and types.get(name) == FLOAT and (allowed is None or i in allowed):
                node.input[i] = half_input(name, new_nodes, casts)
        new_nodes.append(node)
        for i, name in enumerate(node.output):
            if name not in produced_in_region:
                continue
            node.output[i] = name + "__fp16"
            leaves = name in outputs or any(c.name not in region for c in consumers.get(name, []))
            if leaves:
                new_nodes.append(onnx.helper.make_node("Cast", [name + "__fp16"], [name], to=FLOAT,
                                                       name=f"{name}__cast_fp32"))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    return graph


def to_fp16(src: Path, dst: Path) -> dict:
    """Write the float16 variant of ``src`` to ``dst``; returns its recipe."""
    graph = onnx.load(str(src))
    region = set(network_nodes(graph))
    converted = convert_region_to_fp16(graph, region)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(dst), save_as_external_data=False)
    halves = sum(1 for n in converted.graph.node if n.output and n.output[0].endswith("__fp16"))
    return {"precision": "fp16", "tool": "pipeline.deploy.precision.convert_region_to_fp16", "io": "float32",
            "float16_nodes": halves, "selection": f"op types {', '.join(LAYER_OPS)} and the Adds between them",
            "float32_kept": "sigmoid, distribution integral, box decode, top-k, NMS, RoIAlign, GroupNorm statistics"}


class _Reader:
    """``CalibrationDataReader``: one ``{images, image_sizes}`` feed per calibration image."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # pragma: no cover - only called by some calibrators
        raise NotImplementedError


def quantized_inputs_only(graph: onnx.ModelProto) -> int:
    """Let only the quantized Conv/Gemm read the dequantized copy of an activation: ``quantize_static`` rewires
    every consumer of a quantized tensor to its DequantizeLinear (a residual Add, an FPN Resize
    then read the int8-rounded value); this puts them back on the float tensor, so that int8
    rounding applies exactly where quantization-aware training fake-quantizes (the input of each
    quantized Conv/Gemm) and nowhere else. Returns the number of inputs rewired."""
    nodes = list(graph.graph.node)
    quantized = {n.output[0]: n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    float_of = {n.output[0]: quantized[n.input[0]] for n in nodes
                if n.op_type == "DequantizeLinear" and n.input[0] in quantized}
    weights_dq = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] not in quantized}
    rewired = 0
    for node in nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or (
                node.op_type in QUANTIZED_OPS and len(node.input) > 1 and node.input[1] in weights_dq):
            continue        # a quantized Conv/Gemm (its weight is dequantized) keeps its int8 input
        for i, name in enumerate(node.input):
            if name in float_of:
                node.input[i] = float_of[name]
                rewired += 1
    outputs = {o.name for o in graph.graph.output}
    if outputs & set(float_of):
        raise UserError("int8 export: a graph output is a dequantized activation; cannot rewire it")
    return rewired


def to_int8(src: Path, dst: Path, feeds: Iterator[dict[str, np.ndarray]], num_images: int,
            method: str = "minmax", target: str = "tensorrt", float32_layers: Iterable[str] | None = None,
            float32_rule: str = "score_layers") -> dict:
    """Write the INT8 QDQ variant of ``src`` to ``dst``, calibrated on ``feeds``.

    Args:
        feeds: training-image inputs ``{"images": [1, 3, H, W], "image_sizes": [1, 2]}``.
        num_images: how many feeds there are (for the recipe).
        method: ``minmax`` | ``percentile`` | ``entropy`` calibration.
        target: ``tensorrt`` (symmetric int8, float32 biases) or ``cpu`` (uint8 activations,
            int8 weights, int32 biases: ONNX Runtime's integer kernels).
        float32_layers: Conv/Gemm node names left in float32 (None: :func:`score_layers`; an empty
            list quantizes every Conv/Gemm); ``float32_rule`` says where they came from (recipe).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    graph = onnx.load(str(src))
    scores = set(score_layers(graph) if float32_layers is None else float32_layers)
    nodes = [n.name for n in graph.graph.node if n.op_type in QUANTIZED_OPS and n.name not in scores]
    if not nodes:       # quantize_static reads an empty node list as "every node"
        raise UserError(f"{src}: int8 export with every Conv/Gemm kept float32 ({float32_rule}) has nothing "
                        "to quantize; raise deploy.int8_max_drop or set deploy.int8_float32: score_layers")
    cpu = target == "cpu"
    options = ({"ActivationSymmetric": False, "WeightSymmetric": True} if cpu else
               {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)})
    quantize_static(
        str(src), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8, weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes, op_types_to_quantize=list(QUANTIZED_OPS), calibrate_method=methods[method],
        extra_options=options,
    )
    out = onnx.load(str(dst))
    if not cpu:
        quantized_inputs_only(out)
    out.ir_version = min(out.ir_version, graph.ir_version)
    onnx.checker.check_model(out)
    onnx.save(out, str(dst), save_as_external_data=False)
    return {"precision": "int8_cpu" if cpu else "int8", "tool": "onnxruntime.quantization.quantize_static",
            "format": "QDQ", "target": "onnxruntime-cpu" if cpu else "tensorrt",
            "activations": "uint8 asymmetric per tensor" if cpu else "int8 symmetric per tensor, inputs of Conv/Gemm",
            "weights": "int8 symmetric per channel", "bias": "int32" if cpu else "float32",
            "calibration": method, "calibration_images": num_images, "calibration_split": "train",
            "quantized_nodes": len(nodes), "float32_layers": sorted(scores), "float32_rule": float32_rule,
            "float32_kept": f"the float32_layers ({float32_rule}), sigmoid, distribution integral, box decode, "
                            "top-k, NMS"}
