"""The int8 sensitivity table (per layer group) and the ``auto`` float32 set.

Reuses tests/test_export.py's tiny world and its shared export (default params: the table is
measured, the float32 set is the score-layer rule).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pipeline.deploy import bundle
from pipeline.deploy.export_onnx import export_onnx
from pipeline.deploy.int8_sensitivity import choose_float32, keep_float32, layer_groups, sensitivity_table
from pipeline.deploy.manifest import read_manifest
from pipeline.deploy.precision import to_int8
from pipeline.errors import UserError
from pipeline.io import atomic_dir
from pipeline.quant.placement import QUANTIZED_OPS, score_layers
from test_export import export_folder, reuse_shared_graph, tiny_model, tiny_params, world  # noqa: F401

GFL_GROUPS = ["backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4", "fpn",
              "gfl.cls_tower", "gfl.reg_tower", "gfl.cls_logits", "gfl.reg_logits"]


def test_groups_cover_every_quantizable_layer_of_both_detectors(tmp_path):
    graph = onnx.load(str(export_folder() / "model.onnx"))
    groups = layer_groups(graph)
    assert list(groups) == GFL_GROUPS
    convs = [n.name for n in graph.graph.node if n.op_type in QUANTIZED_OPS]
    assert sorted(n for members in groups.values() for n in members) == sorted(convs)
    assert set(score_layers(graph)) == set(groups["gfl.cls_logits"] + groups["gfl.reg_logits"])

    export_onnx(tiny_model("faster_rcnn"), tmp_path / "frcnn.onnx", (64, 192), 17, True, True)
    groups = layer_groups(onnx.load(str(tmp_path / "frcnn.onnx")))
    assert list(groups) == ["backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3",
                            "backbone.layer4", "fpn", "rpn.conv", "rpn.logits", "roi.box_head", "roi.cls_score",
                            "roi.bbox_pred"]
    assert len(groups["roi.box_head"]) == 2 and groups["roi.cls_score"] == ["/box_predictor/cls_score/Gemm"]


def _run(path, feed) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)


def test_score_layers_put_back_in_float32_by_surgery_are_the_shipped_int8_graph(world, tmp_path):
    """The table's variants come from one all-int8 calibration by graph surgery: with the score layers
    back in float32 that is exactly the exported model-int8.onnx (same nodes, same outputs)."""
    train, _ = world
    folder = export_folder()
    fp32 = onnx.load(str(folder / "model.onnx"))
    feeds, count = bundle.calibration_feeds(train, 4)
    to_int8(folder / "model.onnx", tmp_path / "all.onnx", feeds, count, float32_layers=[])
    every = onnx.load(str(tmp_path / "all.onnx"))
    dequantized = {n.output[0] for n in every.graph.node if n.op_type == "DequantizeLinear"}
    assert all(set(n.input[:2]) <= dequantized for n in every.graph.node if n.op_type in QUANTIZED_OPS)
    rebuilt = keep_float32(every, fp32, score_layers(fp32))
    onnx.checker.check_model(rebuilt)
    onnx.save(rebuilt, str(tmp_path / "rebuilt.onnx"))
    shipped = onnx.load(str(folder / "model-int8.onnx"))
    assert sorted(n.op_type for n in rebuilt.graph.node) == sorted(n.op_type for n in shipped.graph.node)
    feed = {"images": np.stack([train[i].image for i in range(2)]),
            "image_sizes": np.array([train[i].image_size for i in range(2)], np.float32)}
    for a, b in zip(_run(tmp_path / "rebuilt.onnx", feed), _run(folder / "model-int8.onnx", feed)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(_run(tmp_path / "all.onnx", feed)[2], _run(folder / "model-int8.onnx", feed)[2])


def test_manifest_records_the_table_and_the_score_layer_set():
    """Default params: one row per layer group with both drops, measured on val; the int8 files keep
    the score layers' groups in float32, named in their recipes."""
    folder = export_folder()
    manifest = read_manifest(folder)
    record = manifest["int8_sensitivity"]
    assert [r["group"] for r in record["rows"]] == GFL_GROUPS
    for row in record["rows"]:
        assert math.isfinite(row["int8_alone_drop"]) and math.isfinite(row["float32_alone_drop"])
    assert record["split"] == "val" and record["num_images"] == 4
    assert record["fp32_mAP50"] == pytest.approx(manifest["artifacts"]["model.onnx"]["eval"]["mAP50"])
    assert record["float32"]["rule"] == "score_layers"
    assert record["float32"]["float32_groups"] == ["gfl.cls_logits", "gfl.reg_logits"]
    shipped = manifest["artifacts"]["model-int8.onnx"]
    assert shipped["recipe"]["float32_groups"] == ["gfl.cls_logits", "gfl.reg_logits"]
    assert shipped["recipe"]["float32_rule"] == "score_layers"
    # the table's score-layer variant is the shipped file on the same images (val has 4 < 50)
    assert -shipped["eval"]["delta_mAP50_vs_fp32"] == pytest.approx(record["float32"]["drop"], abs=1e-9)


def additive(costs: dict[str, float]):
    """Known drops: a set's drop is the sum of the int8 costs of the groups left in int8."""
    calls = []

    def drop(float32: frozenset[str]) -> float:
        calls.append(float32)
        return sum(c for g, c in costs.items() if g not in float32)

    return drop, calls


def test_auto_adds_the_group_whose_int8_costs_most_then_drops_what_is_not_needed():
    costs = {"stem": 0.1, "towers": 3.0, "cls_logits": 0.2, "fpn": 1.0}
    drop, _ = additive(costs)
    table = sensitivity_table(costs, drop)
    assert [r["int8_alone_drop"] for r in table["rows"]] == pytest.approx([0.1, 3.0, 0.2, 1.0])
    assert [r["float32_alone_drop"] for r in table["rows"]] == pytest.approx([4.2, 1.3, 4.1, 3.3])
    assert table["all_int8_drop"] == pytest.approx(4.3)
    choice = choose_float32(table, ["cls_logits"], drop, max_drop=0.5)
    assert [(s["action"], s["group"]) for s in choice["steps"]] == [
        ("start", None), ("add", "towers"), ("add", "fpn"), ("remove", "cls_logits")]
    assert choice["float32_groups"] == ["towers", "fpn"] and choice["drop"] == pytest.approx(0.3)
    # already within the bound: the starting group is dropped when not needed, kept when needed
    assert choose_float32(table, ["towers"], drop, max_drop=4.5)["float32_groups"] == []
    assert choose_float32(table, ["towers"], drop, max_drop=1.5)["float32_groups"] == ["towers"]


def test_auto_that_cannot_meet_the_bound_ends_in_one_line():
    drop, _ = additive({"a": 1.0, "b": 2.0})
    table = sensitivity_table(["a", "b"], drop)
    with pytest.raises(UserError, match=r"deploy.int8_max_drop = 0.5: no int8 layer group meets it") as info:
        choose_float32(table, [], drop, max_drop=0.5)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_auto_export_ships_a_set_whose_measured_drop_is_within_the_bound(world, tmp_path, monkeypatch):
    """A real tiny model, ``int8_float32: auto``: the chosen groups are the int8 file's float32 layers
    and the shipped file's own val drop (val = the table's images here) is within the bound."""
    train, val = world
    reuse_shared_graph(monkeypatch)
    bound = 1.0
    identity = {"dataset": "tiny", "detector": "gfl", "model": "baseline-resnet18", "backbone": "resnet18"}
    (tmp_path / "m.pt").write_bytes(b"weights")
    params = tiny_params(precisions=["fp32", "int8"], int8_float32="auto", int8_max_drop=bound)
    with atomic_dir(tmp_path / "exports" / "m") as folder:
        manifest = bundle.export_bundle(tiny_model("gfl"), folder, params, val, train, identity, tmp_path / "m.pt")
    record = manifest["int8_sensitivity"]["float32"]
    assert record["rule"] == "auto" and record["drop"] <= bound
    assert record["steps"][0]["float32_groups"] == ["gfl.cls_logits", "gfl.reg_logits"]
    groups = layer_groups(onnx.load(str(export_folder() / "model.onnx")))
    shipped = manifest["artifacts"]["model-int8.onnx"]
    assert shipped["recipe"]["float32_rule"] == "auto"
    assert sorted(shipped["recipe"]["float32_layers"]) == sorted(n for g in record["float32_groups"]
                                                                 for n in groups[g])
    assert -shipped["eval"]["delta_mAP50_vs_fp32"] <= bound + 1e-9


@pytest.mark.parametrize("key, value, words", [
    ("int8_float32", "fastest", "deploy.int8_float32"),
    ("int8_max_drop", -0.5, "deploy.int8_max_drop"),
    ("int8_max_drop", "nan", "deploy.int8_max_drop"),
    ("int8_sensitivity_images", 0, "deploy.int8_sensitivity_images"),
])
def test_bad_sensitivity_params_end_in_one_line(key, value, words):
    with pytest.raises(UserError, match=words) as info:
        tiny_params(**{key: value})
    assert "\n" not in str(info.value)


def test_summary_shows_each_exported_models_table():
    from pipeline.report.summary import section

    root = export_folder().parents[3]
    text = section("tiny", "gfl", root, root / "reports")
    table = text.split("### int8 sensitivity per layer group")[1]
    record = read_manifest(export_folder())["int8_sensitivity"]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| layer", "| ---"))]
    assert [r.split(" | ")[0][2:] for r in rows] == GFL_GROUPS
    logits = next(r for r in rows if r.startswith("| gfl.cls_logits "))
    row = next(r for r in record["rows"] if r["group"] == "gfl.cls_logits")
    assert f"| {row['int8_alone_drop']:.2f} | {row['float32_alone_drop']:.2f} | yes |" in logits
    assert "(`deploy.int8_float32: score_layers`): gfl.cls_logits, gfl.reg_logits, drop" in table
