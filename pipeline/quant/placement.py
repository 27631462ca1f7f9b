"""Where int8 goes: the one placement rule of both int8 paths.

Post-training int8 (:func:`pipeline.deploy.precision.to_int8`, ``model-int8.onnx``) and
quantization-aware training (:func:`pipeline.quant.qat.prepare_qat`, then
:mod:`pipeline.quant.export_qdq`) read the rule from here:

* int8 is placed on the input and the weight of every :data:`QUANTIZED_OPS` node (Conv, Gemm),
  nothing on outputs;
* except the score layers, kept in float32: in an ONNX graph, the Conv/Gemm nodes whose output
  reaches a Sigmoid or Softmax (:func:`score_layers`); in a PyTorch detector, the modules of
  :data:`FLOAT32_LAYERS` (the same layers by module name: GFL's ``gfl_cls`` and ``gfl_reg``,
  Faster R-CNN's ``cls_score``). ``tests/test_qat.py`` checks the two name the same graph nodes.

Pure onnx (no torch, no onnxruntime).
"""
from __future__ import annotations

import onnx

#: What int8 quantises (TensorRT runs these in int8 given Q/DQ on their inputs).
QUANTIZED_OPS = ("Conv", "Gemm")

#: Module names kept in float32 per detector: the layers :func:`score_layers` finds in its export.
FLOAT32_LAYERS = {"gfl": ("head.gfl_cls", "head.gfl_reg"),
                  "faster_rcnn": ("head.roi_head.box_predictor.cls_score",)}


#: Ops that only move, reshape or rescale values (GFL's per-level Scale is a Mul): a score layer may
#: reach its sigmoid/softmax through them.
_SHAPE_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split", "Gather",
              "Identity", "Mul")


def score_layers(graph: onnx.ModelProto) -> list[str]:
    """The Conv/Gemm nodes whose output reaches a Sigmoid or Softmax through shape-only ops: the
    logits of the scores and of GFL's box distributions (small layers whose int8 rounding moves
    every score and every box edge)."""
    nodes = list(graph.graph.node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def reaches_score(tensor: str, depth: int = 0) -> bool:
        for c in consumers.get(tensor, []):
            if c.op_type in ("Sigmoid", "Softmax"):
                return True
            if c.op_type in _SHAPE_OPS and depth < 8 and any(reaches_score(o, depth + 1) for o in c.output):
                return True
        return False

    return [n.name for n in nodes if n.op_type in QUANTIZED_OPS and reaches_score(n.output[0])]
