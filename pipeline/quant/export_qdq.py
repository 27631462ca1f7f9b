"""The QAT model -> a TensorRT-valid Q/DQ ONNX graph whose scales are the trained fake quantizers'.

Steps: the caller (:func:`pipeline.deploy.bundle.export_qat_bundle`) exports the folded float
model (quantizers ``off``) with the project's exporter (NMS inside, the same graph contract as
``model.onnx``) and hands over that graph and the export module it traced; this module inserts,
in front of every quantized Conv/Gemm node,

* ``QuantizeLinear -> DequantizeLinear`` on its input: int8, zero point 0, the module's per-tensor
  ``scale = amax / 127`` (one pair per tensor and scale, shared by the consumers that agree);
* ``DequantizeLinear`` on its weight: the weight stored as int8 ``round(W / s_c)`` with per-channel
  ``s_c = max|W_c| / 127`` along axis 0, zero points 0;

and leave the bias float32. ``DequantizeLinear`` thus only ever reads int8 (TensorRT's ONNX parser
accepts nothing else there). Each graph node is tied to its module by its weight initializer, which the
exporter names after the parameter's path in the export module and writes unchanged (checked):
a quantized layer missing from the graph stops the export with one line instead of being left
silently unquantized.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline.errors import UserError
from pipeline.models.detector import Detector
from pipeline.quant.fake_quant import QMAX, QMIN, weight_scales
from pipeline.quant.placement import QUANTIZED_OPS
from pipeline.quant.qat import quantized_modules


def _weight_names(export: nn.Module, modules: dict[str, nn.Module]) -> dict[str, str]:
    """The exporter names each initializer after the parameter's path in the export module:
    ``{initializer name: quantized module name}``."""
    owner = {id(m.weight): name for name, m in modules.items()}
    return {p_name: owner[id(p)] for p_name, p in export.named_parameters() if id(p) in owner}


def insert_qdq(graph: onnx.ModelProto, model: Detector, export: nn.Module) -> dict[str, str]:
    """Insert the QAT model's Q/DQ into ``graph`` (the folded float export of ``export``, the
    model's export module) in place. Returns ``{node name: module name}`` of the quantized nodes.
    """
    g = graph.graph
    inits = {t.name: t for t in g.initializer}
    modules = quantized_modules(model)
    owners = _weight_names(export, modules)
    targets: dict[str, str] = {}
    for node in g.node:
        name = owners.get(node.input[1]) if node.op_type in QUANTIZED_OPS else None
        if name is not None:
            exported = numpy_helper.to_array(inits[node.input[1]])
            if not np.array_equal(exported, modules[name].weight.detach().cpu().numpy()):
                raise UserError(f"QAT export: node {node.name}'s weight differs from layer {name!r}'s; "
                                "the graph was not exported from this model")
            if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
                raise UserError(f"QAT export: Gemm {node.name} does not read its weight as [out, in] (transB=1)")
            targets[node.name] = name
    missing = sorted(set(modules) - set(targets.values()))
    if missing:
        raise UserError(f"QAT export: quantized layers {missing[:3]} are not in the exported graph as Conv/Gemm "
                        "with their own weights; cannot place their Q/DQ")

    new_nodes: list[onnx.NodeProto] = []
    weight_dq: dict[str, str] = {}
    act_qdq: dict[tuple[str, float], str] = {}
    for node in g.node:
        module_name = targets.get(node.name)
        if module_name is None:
            new_nodes.append(node)
            continue
        module = modules[module_name]
        w_name = node.input[1]
        if w_name not in weight_dq:
            weight_dq[w_name] = _weight_dq(g, inits[w_name], module, new_nodes)
        node.input[1] = weight_dq[w_name]
        scale = float(module.input_quant.scale)
        key = (node.input[0], scale)
        if key not in act_qdq:
            act_qdq[key] = _activation_qdq(g, node.input[0], scale, len(act_qdq), new_nodes)
        node.input[0] = act_qdq[key]
        new_nodes.append(node)
    still_used = {i for n in new_nodes for i in n.input}
    kept = [t for t in g.initializer if t.name in still_used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.node[:]
    g.node.extend(new_nodes)
    return targets


def _weight_dq(g: onnx.GraphProto, weight: onnx.TensorProto, module, nodes: list[onnx.NodeProto]) -> str:
    """Store ``weight`` as per-channel int8 with a DequantizeLinear in front; returns its output name."""
    w = numpy_helper.to_array(weight).astype(np.float32)
    scales = weight_scales(module.weight.detach().cpu()).flatten().numpy().astype(np.float32)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / scales.reshape(shape)), QMIN, QMAX).astype(np.int8)
    base = weight.name
    g.initializer.extend([numpy_helper.from_array(q, f"{base}_quantized"),
                          numpy_helper.from_array(scales, f"{base}_scale"),
                          numpy_helper.from_array(np.zeros(len(scales), np.int8), f"{base}_zero_point")])
    out = f"{base}_dequantized"
    nodes.append(helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                                  [out], name=f"{base}_DequantizeLinear", axis=0))
    return out


def _activation_qdq(g: onnx.GraphProto, tensor: str, scale: float, index: int, nodes: list[onnx.NodeProto]) -> str:
    """A per-tensor int8 QuantizeLinear -> DequantizeLinear on ``tensor``; returns the DQ output name."""
    base = f"{tensor}_qdq{index}"
    g.initializer.extend([helper.make_tensor(f"{base}_scale", TensorProto.FLOAT, [], [scale]),
                          helper.make_tensor(f"{base}_zero_point", TensorProto.INT8, [], [0])])
    nodes.append(helper.make_node("QuantizeLinear", [tensor, f"{base}_scale", f"{base}_zero_point"],
                                  [f"{base}_q"], name=f"{base}_QuantizeLinear"))
    nodes.append(helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zero_point"],
                                  [f"{base}_dq"], name=f"{base}_DequantizeLinear"))
    return f"{base}_dq"


def write_qdq(fp32: Path, dst: Path, model: Detector, export: nn.Module) -> dict:
    """Read the folded float export ``fp32`` of ``model``, insert the Q/DQ and write ``dst``;
    returns the recipe. ``export`` is the export module ``fp32`` was traced from
    (:func:`pipeline.deploy.export_onnx.export_module` of ``model``, handed over by the exporter):
    its parameter paths name the graph's weights."""
    graph = onnx.load(str(fp32))
    targets = insert_qdq(graph, model, export)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(dst), save_as_external_data=False)
    float_layers = sorted(n.name for n in graph.graph.node if n.op_type in QUANTIZED_OPS and n.name not in targets)
    return {"precision": "int8", "tool": "pipeline.quant.export_qdq (quantization-aware training)", "format": "QDQ",
            "target": "tensorrt", "activations": "int8 symmetric per tensor (trained amax)",
            "weights": "int8 symmetric per channel", "bias": "float32", "calibration_split": "train",
            "quantized_nodes": len(targets), "float32_layers": float_layers,
            "float32_kept": "score layers (logits of the sigmoid/softmax), sigmoid, distribution integral, box decode, "
                            "top-k, NMS"}
