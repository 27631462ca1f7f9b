"""The TensorRT-readiness check: what TensorRT's ONNX parser would reject is named, node by node,
and a failing variant stops the export stage with one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.deploy.trt_readiness import NMS_MAX_BOXES, check_graph, require_ready
from pipeline.errors import UserError


def _save(tmp_path, nodes, inputs, outputs, inits=(), name="g.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_int32_dequantize_and_a_nonzero_zero_point_are_named(tmp_path):
    bias = numpy_helper.from_array(np.arange(4, dtype=np.int32), "bias_q")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(3, np.int8), "z")
    nodes = [helper.make_node("DequantizeLinear", ["bias_q", "s"], ["bias"], name="bias_dq"),
             helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"], name="x_dq")]
    record = check_graph(_save(tmp_path, nodes, [_float("x", [4])], [_float("bias", [4]), _float("y", [4])],
                               [bias, scale, zero]))
    assert not record["ready"]
    text = "\n".join(record["problems"])
    assert "bias_dq (DequantizeLinear): DequantizeLinear input 'bias_q' is INT32" in text
    assert "x_q (QuantizeLinear)" in text and "x_dq (DequantizeLinear): DequantizeLinear x_zero_point" in text


def test_topk_limit_unsupported_ops_antialias_and_the_nms_box_limit(tmp_path):
    k = numpy_helper.from_array(np.array([4000], np.int64), "k")
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    boxes_n = NMS_MAX_BOXES + 1
    nodes = [helper.make_node("TopK", ["scores", "k"], ["vals", "idx"], name="topk"),
             helper.make_node("Unique", ["flat"], ["uniq"], name="uniq"),
             helper.make_node("Resize", ["img", "roi", "scales"], ["big"], name="up", mode="linear", antialias=1),
             helper.make_node("NonMaxSuppression", ["boxes", "nms_scores"], ["sel"], name="nms")]
    inputs = [_float("scores", [1, 5000]), _float("flat", [10]), _float("img", [1, 3, 8, 8]),
              _float("boxes", [1, boxes_n, 4]), _float("nms_scores", [1, 3, boxes_n])]
    outputs = [_float("vals", [1, 4000]), _float("uniq", [None]), _float("big", [1, 3, 16, 16]),
               helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])]
    record = check_graph(_save(tmp_path, nodes, inputs, outputs, [k, roi, scales]))
    text = "\n".join(record["problems"])
    assert "topk (TopK): TopK K = 4000 must be below 3840" in text
    assert "uniq (Unique): Unique is not supported" in text
    assert "up (Resize): Resize antialias is not supported" in text
    assert f"nms (NonMaxSuppression): NonMaxSuppression gets {boxes_n} boxes per image" in text
    assert record["nms_boxes_per_image"] == boxes_n and len(record["problems"]) == 4
    with pytest.raises(UserError) as info:
        require_ready(tmp_path / "g.onnx", record)
    message = str(info.value)
    assert "\n" not in message and "g.onnx: TensorRT's ONNX parser would reject node topk (TopK)" in message
    assert "(and 3 more)" in message


def _topk_nms_graph(tmp_path, k: int):
    """logits [N, 3, 40, 40] -> reshape(n, -1) with n read from the input's shape (as the tracer writes
    ``x.reshape(n, -1)``) -> TopK K=k -> NMS boxes [N, k, 4], scores [N, 1, k]: the per-image box
    count is set by the K constant, visible only once the batch is fixed."""
    consts = [numpy_helper.from_array(np.array([k], np.int64), "k"),
              numpy_helper.from_array(np.array(0, np.int64), "zero"),
              numpy_helper.from_array(np.array([-1], np.int64), "rest"),
              numpy_helper.from_array(np.array([1, 1, 4], np.int64), "reps"),
              numpy_helper.from_array(np.array([0], np.int64), "ax0"),
              numpy_helper.from_array(np.array([1], np.int64), "ax1"),
              numpy_helper.from_array(np.array([2], np.int64), "ax2")]
    nodes = [helper.make_node("Shape", ["logits"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["n"], name="n", axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="n1"),
             helper.make_node("Concat", ["n1", "rest"], ["flat_shape"], name="cat", axis=0),
             helper.make_node("Reshape", ["logits", "flat_shape"], ["scores"], name="flat"),
             helper.make_node("TopK", ["scores", "k"], ["vals", "idx"], name="topk"),
             helper.make_node("Unsqueeze", ["vals", "ax2"], ["vals3"], name="u2"),
             helper.make_node("Tile", ["vals3", "reps"], ["boxes"], name="tile"),
             helper.make_node("Unsqueeze", ["vals", "ax1"], ["nms_scores"], name="u1"),
             helper.make_node("NonMaxSuppression", ["boxes", "nms_scores"], ["sel"], name="nms")]
    return _save(tmp_path, nodes, [_float("logits", ["N", 3, 40, 40])],
                 [helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])], consts)


def test_nms_box_count_is_derived_from_the_topk_constants_and_held_to_the_targets_limit(tmp_path):
    path = _topk_nms_graph(tmp_path, 1200)
    record = check_graph(path)
    assert record["nms_boxes_each"] == [1200] and record["nms_boxes_per_image"] == 1200
    assert record["ready"] and record["unverified"] == [] and record["nms_limit"] == NMS_MAX_BOXES == 5000
    jetson = check_graph(path, nms_max_boxes=1000)            # e.g. 2000 on SM 5.3/6.2, here below the count
    assert not jetson["ready"] and jetson["nms_limit"] == 1000
    assert jetson["problems"] == ["nms (NonMaxSuppression): NonMaxSuppression gets 1200 boxes per image; TensorRT's "
                                  "NMS layer considers at most 1000 (deploy.tensorrt.nms_max_boxes) and drops the rest "
                                  "silently: lower the pre-NMS top-k or the input size"]
    with pytest.raises(UserError, match="reject node nms"):
        require_ready(path, jetson)


def test_an_nms_count_the_graph_does_not_give_is_unverified_and_never_ready(tmp_path):
    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "nms_scores"], ["sel"], name="nms")]
    path = _save(tmp_path, nodes, [_float("boxes", ["N", "M", 4]), _float("nms_scores", ["N", 1, "M"])],
                 [helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])])
    record = check_graph(path)
    assert record["ready"] is False and record["problems"] == []
    assert record["nms_boxes_each"] == [None] and record["nms_boxes_per_image"] is None
    assert record["unverified"] == ["nms (NonMaxSuppression): the boxes per image are not given by the graph's "
                                    "shapes, so the NMS layer's limit of 5000 could not be checked"]
    require_ready(path, record)                  # nothing TensorRT would reject: the export goes on, marked not ready


def test_a_clean_graph_is_ready(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    record = check_graph(_save(tmp_path, nodes, [_float("x", [2])], [_float("y", [2])]))
    assert record["ready"] and record["problems"] == [] and record["nodes"] == 1


def test_export_stops_with_one_line_when_a_variant_would_not_parse(tmp_path, monkeypatch, capsys):
    """The int8 recipe of before (onnxruntime's int32 biases) must stop the export, leaving
    no export folder behind."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from pipeline.deploy import bundle
    from stages import export as export_stage
    from test_export import RUN, built_repo, chdir

    real_to_int8 = bundle.to_int8

    def int32_bias_int8(src, dst, feeds, count, method="minmax", target="tensorrt", float32_layers=None,
                        float32_rule="score_layers"):
        from pipeline.deploy.precision import _Reader
        if float32_rule.startswith("none"):     # the sensitivity table's all-int8 calibration: the real recipe
            return real_to_int8(src, dst, feeds, count, method, target, float32_layers, float32_rule)
        quantize_static(str(src), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        return {"precision": "int8"}

    root = tmp_path / "repo"
    shutil.copytree(built_repo(), root, symlinks=True)
    shutil.rmtree(root / "exports")
    monkeypatch.setattr(bundle, "to_int8", int32_bias_int8)
    with chdir(root), pytest.raises(SystemExit) as info:
        export_stage.main(list(RUN))
    assert info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model-int8.onnx: TensorRT's ONNX parser would reject node" in err[0]
    assert "is INT32; TensorRT takes INT8" in err[0]
    assert not (root / "exports" / "tiny" / "gfl" / "baseline-resnet18").exists()


def test_the_export_records_readiness_and_runtime_per_variant():
    from test_export import export_folder

    manifest = json.loads((export_folder() / "manifest.json").read_text())
    for name, entry in manifest["artifacts"].items():
        if name == "model-int8-cpu.onnx":
            continue                                   # for ONNX Runtime on a CPU only
        assert entry["runtime"] == "tensorrt, onnxruntime", name
        assert entry["tensorrt_readiness"]["ready"] and entry["tensorrt_readiness"]["problems"] == [], name
        assert "TensorRT 10" in entry["tensorrt_readiness"]["source"]


def test_the_export_records_the_nms_box_count_derived_from_its_graph():
    """The count comes from the graph (shape inference over the TopK K constants), and equals the
    per-level top-k of the PyTorch export module: 'ready' rests on a checked count."""
    from test_export import INPUT, export_folder, tiny_model

    from pipeline.deploy.export_onnx import export_module

    count = sum(export_module(tiny_model("gfl"), INPUT.padded_shape).level_k)
    folder = export_folder()
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["artifacts"].items():
        if name == "model-int8-cpu.onnx":
            continue
        record = entry["tensorrt_readiness"]
        assert record["nms_boxes_each"] == [count] and record["nms_boxes_per_image"] == count, name
        assert record["unverified"] == [] and record["nms_limit"] == 5000 and record["ready"], name
        assert "TopK K constants" in record["nms_count_method"]
        assert not check_graph(folder / name, nms_max_boxes=count - 1)["ready"], name
