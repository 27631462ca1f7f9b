"""ONNX export with NMS inside, precision variants and the parity gate.

Models are tiny (ResNet-18, 64-channel FPN, 64x192 input) with a raised classification bias so
that untrained heads still produce detections above the 0.05 score threshold.
"""
from __future__ import annotations

import atexit
import functools
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from PIL import Image

from pipeline.config import InputParams, ParityParams, parse_params
from pipeline.data.dataset import CuratedDataset
from pipeline.deploy import bundle
from pipeline.deploy.export_onnx import MAX_IR_VERSION, ExportInfo, export_module, export_onnx, nms_settings
from pipeline.models.gfl_head import GFLTestConfig
from pipeline.deploy.graph_ops import class_aware_nms, padded_top_k
from pipeline.deploy.manifest import read_manifest, sha256
from pipeline.deploy.parity import check_parity, match_image
from pipeline.engine.checkpoint import Arch, save_model
from pipeline.errors import UserError
from pipeline.io import atomic_dir, working_dir
from pipeline.models.factory import build_detector
from pipeline.structures import Detections
from stages import export as export_stage

CLASSES = ("Car", "Pedestrian", "Cyclist")
INPUT = InputParams(width=192, height=64, flip_prob=0.0)          # padded input 64 x 192


# ----------------------------------------------------------------------------- shared helpers
def write_world(root: Path, n_train: int = 6, n_val: int = 4, seed: int = 0) -> tuple[dict, dict]:
    """Noise images with coloured boxes (two aspect ratios, so some are padded) and curated
    train/val dicts over them."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cats = [{"id": i + 1, "name": n, "supercategory": "road"} for i, n in enumerate(CLASSES)]
    splits = {}
    ann_id = 0
    for split, count, base in (("train", n_train, 0), ("val", n_val, 100)):
        images, anns = [], []
        for k in range(count):
            w, h = (240, 80) if k % 2 == 0 else (200, 90)
            pixels = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
            for _ in range(3):
                bw, bh = rng.integers(12, 50), rng.integers(10, 40)
                x, y = rng.integers(0, w - bw), rng.integers(0, h - bh)
                pixels[y:y + bh, x:x + bw] = rng.integers(130, 255, 3, dtype=np.uint8)
                ann_id += 1
                anns.append({"id": ann_id, "image_id": base + k, "category_id": int(rng.integers(1, 4)),
                             "bbox": [int(x), int(y), int(bw), int(bh)], "area": int(bw * bh), "iscrowd": 0,
                             "ignore": 0})
            name = f"{base + k:06d}.png"
            Image.fromarray(pixels).save(root / "images" / name)
            images.append({"id": base + k, "file_name": name, "width": w, "height": h})
        splits[split] = {"info": {"dataset": "tiny", "format": "kitti", "image_root": str(root / "images"),
                                  "split": split}, "categories": cats, "images": images, "annotations": anns}
    return splits["train"], splits["val"]


def tiny_model(detector: str = "gfl", seed: int = 0) -> torch.nn.Module:
    """An untrained detector whose scores spread above the 0.05 threshold."""
    torch.manual_seed(seed)
    model = build_detector(detector, "resnet18", len(CLASSES), fpn_channels=64).eval()
    if detector == "gfl":
        torch.nn.init.normal_(model.head.gfl_cls.weight, std=0.02)
        torch.nn.init.constant_(model.head.gfl_cls.bias, -2.0)
        torch.nn.init.normal_(model.head.gfl_reg.weight, std=0.05)
    else:
        torch.nn.init.normal_(model.head.roi_head.box_predictor.cls_score.weight, std=0.05)
        torch.nn.init.normal_(model.head.roi_head.box_predictor.bbox_pred.weight, std=0.01)
    return model


def sorted_rows(boxes, scores, labels) -> np.ndarray:
    """Detections as rows (score, label, box) in a canonical order: tie-insensitive comparison."""
    rows = np.concatenate([np.asarray(scores, np.float64)[:, None], np.asarray(labels, np.float64)[:, None],
                           np.asarray(boxes, np.float64)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


PARAMS = {
    "datasets": ["tiny"], "sources": {"tiny": {"format": "kitti"}},
    "input": {"width": 192, "height": 64, "flip_prob": 0.0},
    "model": {"fpn_channels": 64}, "eval": {"batch_size": 4},
    "deploy": {"calib_images": 4, "models": ["baseline-resnet18"]},
    "benchmark": {"warmup_iters": 1, "iters": 3, "throughput_batch": 2, "throughput_iters": 1, "threads": 1},
}
RUN = ("tiny", "gfl", "baseline-resnet18")


def tiny_params(**deploy) -> object:
    """Validated params for the tiny world (deploy section overridable)."""
    return parse_params({**PARAMS, "deploy": {**PARAMS["deploy"], **deploy}})


chdir = working_dir


@functools.lru_cache(maxsize=None)
def built_repo() -> Path:
    """A repository-shaped folder, built once per test session and shared by the deploy tests:
    params.yaml, data/curated/tiny/{train,val}.json, models/tiny/gfl/baseline-resnet18.pt and
    its export (all precisions) in exports/tiny/gfl/baseline-resnet18/, written by the export stage."""
    root = Path(tempfile.mkdtemp(prefix="deploy-tests-"))
    atexit.register(shutil.rmtree, root, True)
    train, val = write_world(root / "raw")
    curated = root / "data" / "curated" / "tiny"
    curated.mkdir(parents=True)
    (curated / "train.json").write_text(json.dumps(train))
    (curated / "val.json").write_text(json.dumps(val))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    model = tiny_model("gfl")
    checkpoint = root / "models" / "tiny" / "gfl" / "baseline-resnet18.pt"
    save_model(checkpoint, model, Arch("gfl", "resnet18", len(CLASSES), CLASSES, 64))
    with chdir(root):
        export_stage.main(list(RUN))                     # the `export` stage itself, as dvc runs it
    return root


def export_folder() -> Path:
    return built_repo() / "exports" / "tiny" / "gfl" / "baseline-resnet18"


@pytest.fixture(scope="module")
def world() -> tuple[CuratedDataset, CuratedDataset]:
    curated = built_repo() / "data" / "curated" / "tiny"
    return (CuratedDataset(curated / "train.json", INPUT, train=False),
            CuratedDataset(curated / "val.json", INPUT, train=False))


def _predict(model, images: torch.Tensor, sizes: list[tuple[int, int]]) -> list[Detections]:
    from pipeline.structures import Batch

    n = images.shape[0]
    batch = Batch(images=images, boxes=[], labels=[], ignore_boxes=[], image_ids=list(range(n)),
                  scale_factors=torch.ones(n, 2), flipped=torch.zeros(n, dtype=torch.bool), image_sizes=sizes,
                  orig_sizes=sizes)
    with torch.no_grad():
        return model.predict(model.features(images), batch)


# ----------------------------------------------------------------------------- graph ops (hand-computed)
def test_class_aware_nms_suppresses_within_a_class_only_and_pads_outputs():
    boxes = torch.tensor([[[0., 0., 10., 10.], [1., 0., 11., 10.], [1., 0., 11., 10.], [50., 50., 60., 60.]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.04]])     # IoU(box0, box1) = 90/110 = 0.82 > 0.6
    labels = torch.tensor([[0, 0, 1, 0]])                # box2 is the same box as box1 in another class
    selected = class_aware_nms(boxes, scores, labels, iou_thr=0.6, score_thr=0.05, max_keep=3, class_offset=100.0)
    assert sorted(selected[:, 2].tolist()) == [0, 2]     # box1 suppressed by box0, box3 under the threshold
    num, out_boxes, out_scores, out_labels = padded_top_k(selected, boxes, scores, labels, k=3)
    assert num.tolist() == [[2]] and num.dtype == torch.int32
    assert out_scores[0].tolist() == pytest.approx([0.9, 0.7, 0.0])
    assert out_labels.tolist() == [[0, 1, -1]] and out_labels.dtype == torch.int32
    assert out_boxes[0, 1].tolist() == [1., 0., 11., 10.] and out_boxes[0, 2].tolist() == [0., 0., 0., 0.]


def test_gfl_export_settings_are_the_heads_test_defaults():
    cfg = GFLTestConfig()
    assert (cfg.score_thr, cfg.nms_iou, cfg.max_per_img, cfg.nms_pre) == (0.05, 0.6, 100, 1000)


# ----------------------------------------------------------------------------- ONNX
@pytest.mark.slow
def test_gfl_onnx_is_valid_single_file_and_matches_pytorch_with_dynamic_batch():
    model, path = tiny_model("gfl"), export_folder() / "model.onnx"
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert graph.ir_version <= MAX_IR_VERSION
    assert not path.with_name("model.onnx.data").exists()
    assert "NonMaxSuppression" in {n.op_type for n in graph.graph.node}
    assert [i.name for i in graph.graph.input] == ["images", "image_sizes"]
    assert [o.name for o in graph.graph.output] == ["num_dets", "boxes", "scores", "labels"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, *INPUT.padded_shape)
    sizes = [(64, 192), (58, 150), (64, 100)]
    num, boxes, scores, labels = session.run(None, {"images": images.numpy(),
                                                    "image_sizes": np.array(sizes, dtype=np.float32)})
    assert num.dtype == np.int32 and labels.dtype == np.int32 and boxes.shape == (3, 100, 4)
    ref = _predict(model, images, sizes)
    for i in range(3):
        k = int(num[i, 0])
        assert k == len(ref[i])
        np.testing.assert_allclose(sorted_rows(boxes[i, :k], scores[i, :k], labels[i, :k]),
                                   sorted_rows(ref[i].boxes, ref[i].scores, ref[i].labels), atol=2e-3)
        assert (boxes[i, :k, 2] <= sizes[i][1] + 1e-4).all() and (boxes[i, :k, 3] <= sizes[i][0] + 1e-4).all()
        assert (labels[i, k:] == -1).all() and (scores[i, k:] == 0).all()


@pytest.mark.slow
def test_faster_rcnn_onnx_matches_pytorch(tmp_path):
    model = tiny_model("faster_rcnn")
    info = export_onnx(model, tmp_path / "model.onnx", INPUT.padded_shape, simplify=False)   # slim: GFL test
    assert info.nms["num_proposals"] == 1000 and info.nms["iou_thr"] == 0.5
    assert_onnx_matches_pytorch(tmp_path / "model.onnx", model)


def assert_onnx_matches_pytorch(path, model) -> tuple:
    """ONNX Runtime on ``path`` and ``model`` (as configured now) detect the same on two random
    images of different sizes; returns ``(images, sizes, PyTorch detections)``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, *INPUT.padded_shape)
    sizes = [(64, 192), (58, 150)]
    num, boxes, scores, labels = session.run(None, {"images": images.numpy(),
                                                    "image_sizes": np.array(sizes, dtype=np.float32)})
    ref = _predict(model, images, sizes)
    for i in range(2):
        k = int(num[i, 0])
        assert k == len(ref[i]) > 0
        np.testing.assert_allclose(sorted_rows(boxes[i, :k], scores[i, :k], labels[i, :k]),
                                   sorted_rows(ref[i].boxes, ref[i].scores, ref[i].labels), atol=2e-3)
    return images, sizes, ref


def test_faster_rcnn_second_stage_candidates_are_capped_alike_in_pytorch_and_the_graph(tmp_path):
    from pipeline.deploy.trt_readiness import check_graph

    model = tiny_model("faster_rcnn")
    roi = model.head.roi_head
    assert roi.max_candidates == 5000                     # TensorRT's NMS limit, the default
    roi.max_candidates = 200                              # binds here: ~3000 candidates clear 0.05
    export_onnx(model, tmp_path / "capped.onnx", INPUT.padded_shape, simplify=False)
    assert check_graph(tmp_path / "capped.onnx")["nms_boxes_each"][-1] == 200    # RPN's NMS first, then the cap
    images, sizes, capped = assert_onnx_matches_pytorch(tmp_path / "capped.onnx", model)
    roi.max_candidates = 5000
    uncapped = _predict(model, images, sizes)
    assert any(len(c) != len(u) or not torch.equal(c.scores, u.scores) for c, u in zip(capped, uncapped))


def test_faster_rcnn_graph_with_many_classes_stays_within_tensorrts_nms_limit(tmp_path):
    from pipeline.deploy.trt_readiness import NMS_MAX_BOXES, check_graph

    torch.manual_seed(0)
    model = build_detector("faster_rcnn", "resnet18", 13, fpn_channels=64).eval()   # COCO-Traffic: 13 classes
    export_onnx(model, tmp_path / "model.onnx", INPUT.padded_shape, simplify=False)
    report = check_graph(tmp_path / "model.onnx")
    assert report["nms_boxes_each"][-1] == NMS_MAX_BOXES == 5000       # 1000 proposals x 13 classes, capped
    assert report["nms_boxes_per_image"] <= NMS_MAX_BOXES
    assert not [p for p in report["problems"] if "NMS" in p]


@pytest.mark.slow
def test_precision_variants_keep_post_processing_in_fp32_and_run_on_ort_cpu(world):
    train, _ = world
    folder = export_folder()
    path, fp16, int8 = folder / "model.onnx", folder / "model-fp16.onnx", folder / "model-int8.onnx"
    recipe = read_manifest(folder)["artifacts"][int8.name]["recipe"]
    assert recipe["calibration_split"] == "train" and recipe["quantized_nodes"] > 0

    def producers_dtype(graph: onnx.ModelProto, op_type: str) -> set[int]:
        """Element types flowing into every ``op_type`` node's first input."""
        inferred = onnx.shape_inference.infer_shapes(graph).graph
        types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]}
        return {types.get(n.input[0]) for n in inferred.node if n.op_type == op_type}

    half = onnx.load(str(fp16))
    float32 = onnx.TensorProto.FLOAT
    assert onnx.TensorProto.FLOAT16 in producers_dtype(half, "Conv")
    for op in ("Sigmoid", "Softmax", "NonMaxSuppression", "TopK"):
        assert producers_dtype(half, op) == {float32}, op
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [float32, float32]
    quant = onnx.load(str(int8))
    q_nodes = [n for n in quant.graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in quant.graph.initializer}
    assert all(not inits[n.input[2]].any() for n in q_nodes if len(n.input) > 2)     # symmetric: zero points 0
    dequantized = {o for n in quant.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    consumers = {n.op_type for n in quant.graph.node if set(n.input) & dequantized}
    assert "Conv" in consumers and not consumers & {"Sigmoid", "Softmax", "NonMaxSuppression", "TopK"}

    images = np.stack([train[i].image for i in range(2)])
    sizes = np.array([train[i].image_size for i in range(2)], np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images,
                                                                                       "image_sizes": sizes})
    for variant, score_tol in ((fp16, 2e-2), (int8, 0.2)):
        out = ort.InferenceSession(str(variant), providers=["CPUExecutionProvider"]).run(
            None, {"images": images, "image_sizes": sizes})
        assert out[0].dtype == np.int32 and out[1].dtype == np.float32
        top = out[2][:, 0]
        np.testing.assert_allclose(top, ref[2][:, 0], atol=score_tol)   # best score survives the precision


# ----------------------------------------------------------------------------- parity matching
def _dets(rows: list[tuple[list[float], float, int]]) -> Detections:
    return Detections(torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
                      torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows], dtype=torch.long))


def test_matching_is_tie_insensitive_and_only_boundaries_excuse_a_miss():
    tol = ParityParams(box_iou=0.99, score_tol=1e-3)
    a = _dets([([0, 0, 10, 10], 0.5, 0), ([20, 0, 30, 10], 0.5, 1), ([40, 0, 50, 10], 0.0502, 2)])
    swapped = _dets([([20, 0, 30, 10], 0.5, 1), ([0, 0, 10.001, 10], 0.5004, 0)])   # order swapped, last missing
    assert match_image(a, swapped, tol, score_thr=0.05, max_det=100) == (2, 0)     # 0.0502 sits at the threshold
    wrong_class = _dets([([20, 0, 30, 10], 0.5, 0), ([0, 0, 10, 10], 0.5, 0)])
    assert match_image(a, wrong_class, tol, 0.05, 100) == (1, 2)                   # one unmatched on each side
    moved = _dets([([0, 0, 10, 10], 0.5, 0), ([21, 0, 31, 10], 0.5, 1)])            # IoU 0.82 < 0.99
    assert match_image(a, moved, tol, 0.05, 100) == (1, 2)
    # a full top-K list on the other side excuses a miss at its last score
    full = _dets([([0, 0, 10, 10], 0.5, 0), ([20, 0, 30, 10], 0.5, 1)])
    assert match_image(a, full, tol, 0.05, max_det=2) == (2, 0)


def test_parity_gate_names_what_failed_in_one_line():
    tol = ParityParams(map50_tol=0.1, box_iou=0.99, score_tol=1e-3, max_unmatched=0.005)
    ok = {"mAP50_pytorch": 50.0, "mAP50_onnx": 50.05, "mAP50_abs_diff": 0.05, "detections": 1000,
          "matched": 998, "unexplained_unmatched": 2, "unexplained_fraction": 0.002, "images_with_mismatch": 1}
    check_parity(ok, tol, "tiny/gfl/m")
    with pytest.raises(UserError, match=r"ONNX mAP50 50\.30 vs PyTorch 50\.00") as info:
        check_parity({**ok, "mAP50_onnx": 50.3, "mAP50_abs_diff": 0.3}, tol, "tiny/gfl/m")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="10 of 1000 detections differ"):
        check_parity({**ok, "unexplained_unmatched": 10, "unexplained_fraction": 0.01}, tol, "tiny/gfl/m")
    # a split of a few images (the camera sizes): the matching is gated, its mAP50 only recorded
    check_parity({**ok, "mAP50_onnx": 50.3, "mAP50_abs_diff": 0.3}, tol, "tiny/gfl/m", map50=False)
    with pytest.raises(UserError, match="10 of 1000 detections differ"):
        check_parity({**ok, "unexplained_unmatched": 10, "unexplained_fraction": 0.01}, tol, "tiny/gfl/m", map50=False)


# ----------------------------------------------------------------------------- the bundle / stage
@pytest.mark.slow
def test_bundle_writes_gated_variants_and_manifest():
    folder = export_folder()
    manifest = read_manifest(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", "model-fp16.onnx", "model-int8-cpu.onnx", "model-int8.onnx", "model.onnx"]
    assert manifest["parity"]["mAP50_abs_diff"] <= 0.1 and manifest["parity"]["detections"] > 0
    assert manifest["parity"]["unexplained_unmatched"] == 0
    assert manifest["class_names"] == list(CLASSES)
    assert manifest["input"]["shape"] == ["N", 3, 64, 192]
    assert manifest["preprocessing"]["normalize_in_graph"] is False
    assert manifest["nms"]["score_thr"] == 0.05 and manifest["nms"]["max_per_img"] == 100
    checkpoint = built_repo() / "models" / "tiny" / "gfl" / "baseline-resnet18.pt"
    assert manifest["model"]["checkpoint_sha256"] == sha256(checkpoint)
    assert "skipped" in manifest["tensorrt"]
    for name, entry in manifest["artifacts"].items():
        assert entry["sha256"] == sha256(folder / name)
        assert entry["eval"]["providers"] == ["CPUExecutionProvider"]
        assert 0.0 <= entry["eval"]["mAP50"] <= 100.0
    assert manifest["artifacts"]["model.onnx"]["eval"]["mAP50"] == pytest.approx(manifest["pytorch"]["mAP50"],
                                                                                 abs=0.1)
    assert manifest["artifacts"]["model-int8.onnx"]["recipe"]["calibration_images"] == 4


def test_cpu_int8_variant_is_onnxruntimes_uint8_form_and_is_not_sent_to_tensorrt():
    """model-int8-cpu.onnx: uint8 activations, int8 per-channel weights (the form ONNX Runtime
    fuses into integer kernels on x86), evaluated on val like every variant, and marked for
    ONNX Runtime only: no readiness record (its zero points are invalid for TensorRT)."""
    folder = export_folder()
    entry = read_manifest(folder)["artifacts"]["model-int8-cpu.onnx"]
    assert entry["runtime"] == "onnxruntime-cpu" and "tensorrt_readiness" not in entry
    assert entry["recipe"]["activations"].startswith("uint8") and entry["recipe"]["target"] == "onnxruntime-cpu"
    assert 0.0 <= entry["eval"]["mAP50"] <= 100.0 and "delta_mAP50_vs_fp32" in entry["eval"]
    graph = onnx.load(str(folder / "model-int8-cpu.onnx")).graph
    inits = {t.name: t for t in graph.initializer}
    zero_types = {inits[n.input[2]].data_type for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    assert zero_types == {onnx.TensorProto.UINT8}
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weights, "int8 weights"


@pytest.mark.slow
def test_failed_parity_gate_leaves_no_export(world, tmp_path, monkeypatch):
    train, val = world
    real = bundle.predict_dataset

    def shifted(*args, **kwargs):
        """PyTorch's detections moved by 3 px: the exported graph no longer agrees."""
        return {k: Detections(d.boxes + 3.0, d.scores, d.labels) for k, d in real(*args, **kwargs).items()}

    monkeypatch.setattr(bundle, "predict_dataset", shifted)
    reuse_shared_graph(monkeypatch)
    with pytest.raises(UserError, match="parity gate failed") as info:
        fp32_only_bundle(tmp_path, val, train)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "exports").iterdir()) == []


def reuse_shared_graph(monkeypatch) -> None:
    """Make ``bundle.export_onnx`` copy the shared export's graph of the same weights instead of
    exporting afresh (saves ~10 s)."""
    exported = export_folder() / "model.onnx"

    def reuse(model, path, input_hw, *args, **kwargs):
        shutil.copyfile(exported, path)
        module = export_module(model, input_hw)
        return ExportInfo(17, 8, True, module.max_det, nms_settings(module), True, 0)

    monkeypatch.setattr(bundle, "export_onnx", reuse)


def fp32_only_bundle(tmp_path: Path, val, train, **deploy) -> dict:
    """``bundle.export_bundle`` of the tiny GFL model, fp32 only, into ``tmp_path/exports/m``."""
    identity = {"dataset": "tiny", "detector": "gfl", "model": "baseline-resnet18", "backbone": "resnet18"}
    checkpoint = tmp_path / "m.pt"
    checkpoint.write_bytes(b"weights")
    with atomic_dir(tmp_path / "exports" / "m") as folder:
        return bundle.export_bundle(tiny_model("gfl"), folder, tiny_params(precisions=["fp32"], **deploy), val,
                                    train, identity, checkpoint)


@pytest.mark.slow
def test_parity_gate_also_runs_val_images_at_camera_sizes():
    """Val images stretched to 1242x375, 1280x720 and 1920x1080 (scale factors that are not integers)
    pass the same gate through PyTorch and ONNX Runtime, recorded in the manifest's parity."""
    from pipeline.deploy.parity import CAMERA_IMAGES, CAMERA_SIZES

    camera = read_manifest(export_folder())["parity"]["camera_sizes"]
    assert [s["in_wh"] for s in camera["sizes"]] == [list(s) for s in sorted(CAMERA_SIZES)]
    assert camera["images"] == len(CAMERA_SIZES) * CAMERA_IMAGES
    for size in camera["sizes"]:
        (w, h), (new_w, new_h) = size["in_wh"], size["out_wh"]
        assert (new_w, new_h) == (math.floor(w * min(192 / w, 64 / h) + 0.5),
                                  math.floor(h * min(192 / w, 64 / h) + 0.5))
        assert size["sx_sy"] == [new_w / w, new_h / h] and all(1 / f != round(1 / f) for f in size["sx_sy"])
    assert camera["detections_pytorch"] > 0 and camera["detections_onnx"] > 0
    assert camera["unexplained_unmatched"] == 0 and camera["matched"] == camera["detections_pytorch"]
    assert "mAP50_pytorch" in camera and "mAP50_onnx" in camera and "not gated" in camera["gated"]


@pytest.mark.slow
def test_a_disagreement_only_at_camera_sizes_fails_the_gate(world, tmp_path, monkeypatch):
    from pipeline.deploy.parity import CAMERA_SPLIT

    train, val = world
    real = bundle.predict_dataset

    def shifted_at_camera_sizes(model, dataset, *args, **kwargs):
        found = real(model, dataset, *args, **kwargs)
        if dataset.coco["info"]["split"] != CAMERA_SPLIT:
            return found
        return {k: Detections(d.boxes + 3.0, d.scores, d.labels) for k, d in found.items()}

    monkeypatch.setattr(bundle, "predict_dataset", shifted_at_camera_sizes)
    reuse_shared_graph(monkeypatch)
    with pytest.raises(UserError, match=r"\(val images at camera sizes\): parity gate failed") as info:
        fp32_only_bundle(tmp_path, val, train)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "exports").iterdir()) == []


@pytest.mark.slow
def test_export_stops_when_the_nms_gets_more_boxes_than_the_targets_limit(world, tmp_path, monkeypatch):
    """deploy.tensorrt.nms_max_boxes (2000 on Jetson Nano/TX1/TX2) reaches the readiness check: a
    graph whose NMS gets more boxes per image than the target takes is not ready and stops the export."""
    train, val = world
    reuse_shared_graph(monkeypatch)
    count = sum(export_module(tiny_model("gfl"), INPUT.padded_shape).level_k)
    with pytest.raises(UserError, match=rf"NonMaxSuppression gets {count} boxes per image; TensorRT's NMS layer "
                                        rf"considers at most {count - 1} \(deploy.tensorrt.nms_max_boxes\)") as info:
        fp32_only_bundle(tmp_path, val, train, tensorrt={"nms_max_boxes": count - 1})
    assert "\n" not in str(info.value)
    assert fp32_only_bundle(tmp_path, val, train, tensorrt={"nms_max_boxes": count})["artifacts"]["model.onnx"][
        "tensorrt_readiness"]["ready"]


@pytest.mark.slow
def test_every_onnx_file_declares_static_output_shapes_of_max_detections():
    """The outputs' second dimension is the 100 slots in the graph itself (it was symbolic,
    ``Mulboxes_dim_1``: code preallocating from the graph saw -1); the batch stays N."""
    folder = export_folder()
    expected = {"num_dets": ["N", 1], "boxes": ["N", 100, 4], "scores": ["N", 100], "labels": ["N", 100]}
    assert read_manifest(folder)["conventions"]["output_shapes"] == expected
    for path in sorted(folder.glob("*.onnx")):
        graph = onnx.load(str(path)).graph
        declared = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
        assert declared == expected, path.name
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert {o.name: o.shape for o in session.get_outputs()} == expected, path.name


@pytest.mark.slow
def test_manifest_conventions_state_what_a_consumer_needs(world):
    """Box mapping with per-axis factors, class names by index, what a score is and the int8
    arithmetic behind every recorded mAP50, each re-run from what the manifest says."""
    from pipeline.deploy.parity import backend_detections
    from pipeline.metrics import evaluate_detections

    _, val = world
    folder = export_folder()
    manifest = read_manifest(folder)
    conv = manifest["conventions"]
    assert "x_orig = x / sx, y_orig = y / sy" in conv["boxes_to_original"]
    assert "sx = resized_w / orig_w and sy = resized_h / orig_h" in conv["boxes_to_original"]
    example = conv["boxes_to_original_example"]
    assert example["resized_wh"] == [192, 58]                  # 375 * 192 / 1242 = 57.97; 1242 * 64 / 375 > 192
    assert example["sx_sy"] == [192 / 1242, 58 / 375]
    assert example["box_orig"] == [b / f for b, f in zip(example["box"], example["sx_sy"] * 2)]
    assert conv["class_names_by_index"] == {"0": "Car", "1": "Pedestrian", "2": "Cyclist"}
    assert "-1" in conv["labels"] and "class_names" in conv["labels"]
    assert "sigmoid" in conv["scores"] and "quality" in conv["scores"] and "NMS" in conv["scores"]

    records = {r["where"]: r for r in conv["mAP50_arithmetic"]}
    evals = {name: e["eval"] for name, e in manifest["artifacts"].items()}
    assert set(records) == {f"artifacts.{name}.eval.mAP50" for name in evals} | {
        "artifacts.model-int8.onnx.eval.onnxruntime_fused_mAP50"}
    written = records["artifacts.model-int8.onnx.eval.mAP50"]
    fused = records["artifacts.model-int8.onnx.eval.onnxruntime_fused_mAP50"]
    assert written["session_config"] == {"session.disable_quant_qdq": "1"} and "as written" in written["arithmetic"]
    assert fused["session_config"] == {} and "fused" in fused["arithmetic"]
    assert records["artifacts.model-int8-cpu.onnx.eval.mAP50"]["session_config"] == {}

    class Session:
        """ONNX Runtime as the record states it, nothing of the project's runtime."""

        def __init__(self, path: Path, config: dict[str, str]) -> None:
            options = ort.SessionOptions()
            for key, value in config.items():
                options.add_session_config_entry(key, value)
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(self, images, sizes):
            return self.session.run(None, {"images": images, "image_sizes": sizes})

    for record in (written, fused, records["artifacts.model-int8-cpu.onnx.eval.mAP50"]):
        name = record["where"].split(".eval.")[0].removeprefix("artifacts.")
        dets = backend_detections(Session(folder / name, record["session_config"]), val, 4)
        assert evaluate_detections(val.coco, dets)["mAP50"] == record["value"], record["where"]
        assert record["value"] == evals[name][record["where"].split(".eval.")[1]]
    # the untrained model scores 0 either way; its raw scores show the two arithmetics differ
    images = np.stack([val[i].image for i in range(len(val))])
    sizes = np.array([val[i].image_size for i in range(len(val))], np.float32)
    as_written, default = (Session(folder / "model-int8.onnx", r["session_config"]).run(images, sizes)[2]
                           for r in (written, fused))
    assert np.abs(as_written - default).max() > 1e-4


def test_every_recorded_map50_names_the_session_options_and_arithmetic_behind_it():
    from pipeline.deploy.manifest import map50_records

    artifacts = {
        "model.onnx": {"kind": "onnx", "precision": "fp32", "eval": {"mAP50": 11.0, "qdq": "fused by onnxruntime",
                                                                     "providers": ["CPUExecutionProvider"]}},
        "model-int8.onnx": {"kind": "onnx", "precision": "int8",
                            "eval": {"mAP50": 10.8634, "qdq": "as written", "onnxruntime_fused_mAP50": 10.7954,
                                     "providers": ["CPUExecutionProvider"]}},
        "model-int8-cpu.onnx": {"kind": "onnx", "precision": "int8_cpu", "eval": {"mAP50": 10.5, "qdq": "fused by "
                                                                                  "onnxruntime"}},
        "model-fp16.onnx": {"kind": "onnx", "precision": "fp16", "eval": {"skipped": "no kernel"}},
        "model-fp32.engine": {"kind": "engine", "precision": "fp32"},
    }
    got = {r["where"]: (r["value"], r["session_config"], r["arithmetic"].split(":")[0]) for r in map50_records(artifacts)}
    assert got == {
        "artifacts.model.onnx.eval.mAP50": (11.0, {}, "fp32 as in the graph (ONNX Runtime CPU)"),
        "artifacts.model-int8.onnx.eval.mAP50": (10.8634, {"session.disable_quant_qdq": "1"}, "int8 Q/DQ as written"),
        "artifacts.model-int8.onnx.eval.onnxruntime_fused_mAP50": (10.7954, {}, "int8 fused by ONNX Runtime's default "
                                                                                 "session"),
        "artifacts.model-int8-cpu.onnx.eval.mAP50": (10.5, {}, "int8 fused by ONNX Runtime's default session"),
    }


def test_deploy_params_reject_a_precision_list_without_fp32():
    with pytest.raises(UserError, match="precisions must include fp32"):
        tiny_params(precisions=["int8"])
    with pytest.raises(UserError, match=r"deploy.models.0 = 'resnet18' is not allowed"):
        tiny_params(models=["resnet18"])


def test_export_stage_without_a_trained_model_exits_with_one_line(tmp_path, capsys):
    train, val = write_world(tmp_path / "raw", n_train=1, n_val=1)
    curated = tmp_path / "data" / "curated" / "tiny"
    curated.mkdir(parents=True)
    (curated / "train.json").write_text(json.dumps(train))
    (curated / "val.json").write_text(json.dumps(val))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    with chdir(tmp_path), pytest.raises(SystemExit) as info:
        export_stage.main(list(RUN))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: models/tiny/gfl/baseline-resnet18.pt: checkpoint not found") and "\n" not in err
    assert not (tmp_path / "exports").exists()


@pytest.mark.slow
def test_benchmark_stage_times_every_backend_with_its_accuracy_and_plots(capsys):
    from stages import benchmark as benchmark_stage
    from stages import benchmark_plot as benchmark_plot_stage
    from stages import ship as ship_stage

    root = built_repo()
    with chdir(root):
        benchmark_stage.main(["run", *RUN])
        ship_stage.main([])
        benchmark_plot_stage.main(["tiny", "gfl"])
    record = json.loads((root / "metrics" / "benchmark" / "tiny" / "gfl" / "baseline-resnet18.json").read_text())
    manifest = read_manifest(export_folder())
    assert set(record["backends"]) >= {"pytorch-cpu-fp32", "onnxruntime-cpu-fp32", "onnxruntime-cpu-int8"}
    for name, row in record["backends"].items():
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"], name
        assert row["throughput_ips"] > 0 and isinstance(row["mAP50"], float)
    assert record["backends"]["pytorch-cpu-fp32"]["mAP50"] == manifest["pytorch"]["mAP50"]
    # each ONNX Runtime row is scored on the runtime timed: the int8 file with onnxruntime's fused kernels
    int8 = manifest["artifacts"]["model-int8.onnx"]["eval"]
    assert record["backends"]["onnxruntime-cpu-int8"]["mAP50"] == pytest.approx(int8["onnxruntime_fused_mAP50"],
                                                                                 abs=0.01)
    dets = root / "detections" / "benchmark" / "tiny" / "gfl" / "baseline-resnet18"
    assert {p.stem for p in dets.glob("*.npz")} == {k for k in record["backends"] if k.startswith("onnxruntime")}
    assert record["backends"]["onnxruntime-cpu-fp32"]["providers"] == "CPUExecutionProvider"
    assert "pytorch-cuda-fp32" in record["skipped"] and "tensorrt" in record["skipped"]
    assert record["cpu_threads"] == 1 and record["throughput_batch"] == 2
    ship = json.loads((root / "reports" / "ship.json").read_text())["datasets"]["tiny"]
    ranked = {c["backend"] for c in ship["candidates"]}
    assert ranked == {k for k in record["backends"] if k.startswith("onnxruntime")}
    assert any("pytorch-cpu-fp32: no val detections" in why for why in ship["not_ranked"])   # no evaluate stage here
    png = root / "plots" / "benchmark" / "tiny_gfl.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plotted {len(ranked)} variants" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_of_a_qat_export_has_no_pytorch_row_and_is_ranked_by_the_ship_stage(tmp_path):
    """A QAT export folder holds one int8 file and the parent's name: benchmark_qat times that file
    on every runtime, keeps its val detections beside the others', and the ship stage ranks it."""
    from stages import benchmark as benchmark_stage
    from stages import ship as ship_stage

    root = tmp_path / "repo"
    shutil.copytree(built_repo(), root, symlinks=True)
    shutil.rmtree(root / "metrics", ignore_errors=True)
    qat = root / "exports" / "tiny" / "gfl" / "qat" / "gkd_bmfi" / "baseline-resnet18"
    qat.mkdir(parents=True)
    shutil.copy2(export_folder() / "model-int8.onnx", qat / "model-int8.onnx")
    manifest = read_manifest(export_folder())
    manifest["artifacts"] = {"model-int8.onnx": manifest["artifacts"]["model-int8.onnx"]}
    manifest["model"].update(model="baseline_qat_gkd_bmfi-resnet18", parent="baseline-resnet18", qat_method="gkd_bmfi")
    (qat / "manifest.json").write_text(json.dumps(manifest))
    with chdir(root):
        benchmark_stage.main(["run", "tiny", "gfl", "baseline-resnet18", "--qat", "gkd_bmfi"])
        ship_stage.main([])
    record = json.loads((root / "metrics" / "benchmark" / "tiny" / "gfl" / "qat" / "gkd_bmfi" /
                         "baseline-resnet18.json").read_text())
    assert set(record["backends"]) == {"onnxruntime-cpu-int8"} and record["qat_method"] == "gkd_bmfi"
    assert record["parent"] == "baseline-resnet18"
    dets = root / "detections" / "benchmark" / "tiny" / "gfl" / "qat" / "gkd_bmfi" / "baseline-resnet18"
    assert [p.name for p in dets.iterdir()] == ["onnxruntime-cpu-int8.npz"]
    ship = json.loads((root / "reports" / "ship.json").read_text())["datasets"]["tiny"]
    ranked = next(c for c in ship["candidates"] if c["quantization"] == "QAT+gkd_bmfi")
    assert ranked["key"] == "gfl/baseline-resnet18/QAT+gkd_bmfi/onnxruntime-cpu-int8"
    assert ranked["mAP50"] == pytest.approx(record["backends"]["onnxruntime-cpu-int8"]["mAP50"], abs=1e-6)


def dequantize_input_types(graph: onnx.ModelProto) -> dict[str, int]:
    """Element type of the first input of every DequantizeLinear node, by node name."""
    inferred = onnx.shape_inference.infer_shapes(graph).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]}
    types.update({t.name: t.data_type for t in inferred.initializer})
    return {n.name: types.get(n.input[0]) for n in inferred.node if n.op_type == "DequantizeLinear"}


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["gfl", "faster_rcnn"])
def test_int8_dequantize_nodes_take_only_int8_as_tensorrt_parses(tmp_path, detector):
    """TensorRT's ONNX parser rejects a DequantizeLinear of an int32 tensor (onnxruntime's
    default quantised Conv bias): every DQ of both detectors' int8 graphs reads int8, with zero
    zero-points, and the biases stay float32 inputs of their Conv/Gemm."""
    from pipeline.deploy.precision import to_int8

    model = tiny_model(detector)
    export_onnx(model, tmp_path / "model.onnx", INPUT.padded_shape, simplify=False)
    rng = np.random.default_rng(0)
    feeds = ({"images": rng.standard_normal((1, 3, *INPUT.padded_shape)).astype(np.float32),
              "image_sizes": np.array([INPUT.padded_shape], np.float32)} for _ in range(2))
    recipe = to_int8(tmp_path / "model.onnx", tmp_path / "model-int8.onnx", feeds, 2)
    quant = onnx.load(str(tmp_path / "model-int8.onnx"))
    types = dequantize_input_types(quant)
    assert types and recipe["bias"] == "float32"
    wrong = {name: onnx.TensorProto.DataType.Name(t) for name, t in types.items() if t != onnx.TensorProto.INT8}
    assert not wrong, f"DequantizeLinear inputs TensorRT would reject: {wrong}"
    inits = {t.name: t for t in quant.graph.initializer}
    for node in quant.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in inits:
            assert inits[node.input[2]].data_type == onnx.TensorProto.FLOAT, node.name


def test_benchmark_refuses_a_file_that_is_not_the_one_the_manifest_describes(tmp_path, capsys):
    """A fp32 graph copied over model-int8.onnx must not be timed and labelled int8."""
    from stages import benchmark as benchmark_stage

    root = tmp_path / "repo"
    shutil.copytree(built_repo(), root, symlinks=True)
    folder = root / "exports" / "tiny" / "gfl" / "baseline-resnet18"
    shutil.copy2(folder / "model.onnx", folder / "model-int8.onnx")
    shutil.rmtree(root / "metrics", ignore_errors=True)        # another test's benchmark record
    with chdir(root), pytest.raises(SystemExit) as info:
        benchmark_stage.main(["run", *RUN])
    assert info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model-int8.onnx: sha256 differs from the manifest's" in err[0]
    assert not (root / "metrics" / "benchmark" / "tiny" / "gfl" / "baseline-resnet18.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["gfl", "faster_rcnn"])
def test_reduced_precision_covers_every_conv_and_gemm_and_keeps_boxes_in_fp32(tmp_path, detector):
    """fp16 and int8 select the network by op type: every Conv and Gemm of both detectors (the
    RPN head and the RoI box head of Faster R-CNN included) runs reduced, while NMS and RoIAlign
    read float32 boxes (the name scopes used before missed the RPN and box heads)."""
    from pipeline.deploy.precision import to_fp16, to_int8
    from pipeline.quant.placement import score_layers

    export_onnx(tiny_model(detector), tmp_path / "model.onnx", INPUT.padded_shape, simplify=True)
    to_fp16(tmp_path / "model.onnx", tmp_path / "model-fp16.onnx")
    rng = np.random.default_rng(0)
    feeds = ({"images": rng.standard_normal((1, 3, *INPUT.padded_shape)).astype(np.float32),
              "image_sizes": np.array([INPUT.padded_shape], np.float32)} for _ in range(2))
    to_int8(tmp_path / "model.onnx", tmp_path / "model-int8.onnx", feeds, 2)
    layers = [n for n in onnx.load(str(tmp_path / "model.onnx")).graph.node if n.op_type in ("Conv", "Gemm")]
    gemms = sum(n.op_type == "Gemm" for n in layers)
    assert gemms == (4 if detector == "faster_rcnn" else 0)        # fc6, fc7, cls_score, bbox_pred

    half = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "model-fp16.onnx"))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*half.value_info, *half.input]}
    types.update({t.name: t.data_type for t in half.initializer})
    reduced = [n for n in half.node if n.op_type in ("Conv", "Gemm") and types.get(n.input[0]) == onnx.TensorProto.FLOAT16]
    assert len(reduced) == len(layers), f"{len(reduced)} of {len(layers)} Conv/Gemm in fp16"
    for node in half.node:
        if node.op_type in ("NonMaxSuppression", "RoiAlign"):
            assert all(types.get(i) == onnx.TensorProto.FLOAT for i in node.input[:2] if i), node.name

    quant = onnx.load(str(tmp_path / "model-int8.onnx")).graph
    dequantized = {o for n in quant.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8 = {n.name for n in quant.node if n.op_type in ("Conv", "Gemm") and n.input[1] in dequantized}  # int8 weights
    # every Conv/Gemm but the logit layers (GFL: gfl_cls and gfl_reg per level; Faster R-CNN: cls_score)
    scores = set(score_layers(onnx.load(str(tmp_path / "model.onnx"))))
    if detector == "gfl":
        assert len(scores) == 10 and all("/gfl_cls" in n or "/gfl_reg" in n for n in scores), scores
    else:
        assert scores == {"/box_predictor/cls_score/Gemm"}, scores
    assert int8 == {n.name for n in layers} - scores, f"{len(int8)} of {len(layers)} Conv/Gemm in int8"
    from pipeline.deploy.trt_readiness import check_graph
    for variant in ("model.onnx", "model-fp16.onnx", "model-int8.onnx"):      # TensorRT's parser would take all
        record = check_graph(tmp_path / variant)
        assert record["ready"], (variant, record["problems"][:3])
    for node in quant.node:     # boxes never pass through int8 (RoIAlign's features may: they are FPN outputs)
        boxes = node.input if node.op_type == "NonMaxSuppression" else node.input[1:] if node.op_type == "RoiAlign" else []
        assert not set(boxes) & dequantized, node.name
