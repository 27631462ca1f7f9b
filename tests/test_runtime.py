"""The deployment runtime (what vehicle code imports): no torch, same preprocessing as training,
same detections as the PyTorch model, one clear line for every bad input."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pipeline.data.dataset import read_rgb
from pipeline.config import ParityParams
from pipeline.deploy.parity import match_image
from pipeline.deploy.runtime import DeployedDetector, OnnxBackend, check_image, preprocess
from pipeline.engine.inference import predict_dataset
from pipeline.errors import UserError
from pipeline.structures import Detections

from conftest import REPO
from test_export import CLASSES, export_folder, tiny_model, world  # noqa: F401 - `world` is a fixture

pytestmark = pytest.mark.slow        # the shared export takes ~30 s once per session


def _val_images(val) -> list[np.ndarray]:
    return [read_rgb(val.image_root / record["file_name"]) for record in val.images]


def test_runtime_runs_without_importing_torch():
    code = ("import sys, numpy as np\n"
            "from pipeline.deploy.runtime import DeployedDetector\n"
            f"det = DeployedDetector({str(export_folder())!r})\n"
            "found = det.detect(np.zeros((80, 240, 3), np.uint8))\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
            "print(len(found), det.providers)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "CPUExecutionProvider" in result.stdout


def test_preprocessing_equals_the_training_dataset(world):  # noqa: F811
    _, val = world
    det = DeployedDetector(export_folder())
    for index, rgb in enumerate(_val_images(val)):
        sample = val[index]
        prepared = det.preprocess(rgb)
        np.testing.assert_array_equal(prepared.image, sample.image)
        assert prepared.size_hw == sample.image_size and prepared.orig_hw == sample.orig_size
        assert prepared.scale == pytest.approx(sample.scale)
    assert {tuple(val[i].image_size) for i in range(len(val))} == {(64, 192), (64, 142)}  # padded ones too


@pytest.mark.parametrize("artifact", ["model.onnx", "model-int8.onnx"])
def test_detections_match_the_pytorch_model_on_val_images(world, artifact):  # noqa: F811
    _, val = world
    import torch

    det = DeployedDetector(export_folder() / artifact, providers=["CPUExecutionProvider"], threads=1)
    assert det.providers == ["CPUExecutionProvider"]
    assert det.precision == ("fp32" if artifact == "model.onnx" else "int8")
    found = det.detect_batch(_val_images(val), score_threshold=0.0)
    ref = predict_dataset(tiny_model("gfl"), val, torch.device("cpu"), batch_size=4, progress=False)
    total = 0
    for record, got in zip(val.images, found):
        expected = ref[record["id"]]
        assert got.names == tuple(CLASSES[i] for i in got.labels)
        assert (got.boxes[:, 2] <= record["width"]).all() and (got.boxes[:, 3] <= record["height"]).all()
        if artifact == "model.onnx":   # fp32: the same detections, in original-image pixels
            mine = Detections(torch.from_numpy(got.boxes), torch.from_numpy(got.scores), torch.from_numpy(got.labels))
            matched, unexplained = match_image(expected, mine, ParityParams(), 0.05, 100)
            assert unexplained == 0 and matched == len(expected)
        total += len(got)
    assert total > 0


def test_images_of_the_wrong_dtype_or_channel_count_are_refused_in_one_line():
    pre = {"resize_wh": [192, 64], "pad_hw": [64, 192], "mean": [0, 0, 0], "std": [1, 1, 1]}
    cases = [(np.zeros((80, 240, 3), np.float32), "dtype is float32, expected uint8"),
             (np.zeros((80, 240, 4), np.uint8), "shape is (80, 240, 4), expected [H, W, 3]"),
             (np.zeros((80, 240), np.uint8), "shape is (80, 240), expected [H, W, 3]"),
             ([[0, 0, 0]], "must be a numpy array")]
    for image, message in cases:
        with pytest.raises(UserError, match=re.escape(message)) as info:
            preprocess(image, pre)
        assert "\n" not in str(info.value)
    assert check_image(np.zeros((2, 2, 3), np.uint8)).shape == (2, 2, 3)


@pytest.fixture
def copied(tmp_path) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(export_folder(), folder)
    return folder


def _edit(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _refused(path: Path, expected: str) -> str:
    with pytest.raises(UserError, match=expected) as info:
        DeployedDetector(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_truncated_onnx_file_is_refused(copied):
    data = (copied / "model.onnx").read_bytes()
    (copied / "model.onnx").write_bytes(data[: len(data) // 2])
    _refused(copied, "model.onnx: sha256 differs from the manifest's")
    with pytest.raises(UserError, match="onnxruntime cannot load it .*truncated"):
        OnnxBackend(copied / "model.onnx", ["CPUExecutionProvider"])


def test_missing_or_inconsistent_manifest_is_refused(copied):
    _edit(copied, lambda m: m["preprocessing"].update(pad_hw=[96, 320]))
    _refused(copied, r"preprocessing.pad_hw \[96, 320\] differs from input.shape \[64, 192\]")
    _edit(copied, lambda m: (m["preprocessing"].update(pad_hw=[96, 320]), m["input"].update(shape=["N", 3, 96, 320])))
    _refused(copied, r"graph input images \['N', 3, 64, 192\] does not match the manifest's input.shape")
    _edit(copied, lambda m: m["artifacts"].pop("model-int8.onnx"))
    _refused(copied / "model-int8.onnx", "no entry for model-int8.onnx")
    _edit(copied, lambda m: m.pop("class_names"))
    _refused(copied, "missing key 'class_names'")
    (copied / "manifest.json").write_text("{not json")
    _refused(copied, "manifest.json: not valid json")
    (copied / "manifest.json").unlink()
    _refused(copied, "manifest.json: manifest not found")


def test_unavailable_execution_provider_is_refused():
    with pytest.raises(UserError, match="execution provider NoSuchExecutionProvider is not available"):
        DeployedDetector(export_folder(), providers=["NoSuchExecutionProvider"])


def test_empty_batches_bgr_frames_and_the_score_threshold(world):  # noqa: F811
    _, val = world
    det = DeployedDetector(export_folder())
    assert det.detect_batch([]) == []
    num, boxes, scores, labels = det.run(np.zeros((0, 3, *det.input_hw), np.float32), np.zeros((0, 2), np.float32))
    assert num.shape == (0, 1) and boxes.shape == (0, 0, 4) and scores.shape == labels.shape == (0, 0)
    rgb = _val_images(val)[0]
    plain = det.detect(rgb, score_threshold=0.0)
    assert len(plain) > 0
    as_bgr = det.detect(np.ascontiguousarray(rgb[..., ::-1]), score_threshold=0.0, bgr=True)      # a camera frame in BGR
    np.testing.assert_array_equal(as_bgr.boxes, plain.boxes)
    np.testing.assert_array_equal(as_bgr.scores, plain.scores)
    cut = float(np.median(plain.scores))
    high = det.detect(rgb, score_threshold=cut)
    assert 0 < len(high) < len(plain) or len(set(plain.scores.tolist())) == 1
    assert (high.scores >= cut).all() and len(high.names) == len(high)


def test_runtime_misuse_is_refused_in_one_line():
    det = DeployedDetector(export_folder())
    h, w = det.input_hw
    images = np.zeros((2, 3, h, w), np.float32)
    cases = [(lambda: det.run(images, np.zeros((1, 2), np.float32)), "image_sizes has shape (1, 2) for 2 images"),
             (lambda: det.run(images, np.zeros((2,), np.float32)), "image_sizes has shape (2,) for 2 images"),
             (lambda: det.run(images[:, :, :8], np.zeros((2, 2), np.float32)),
              f"images has shape (2, 3, 8, {w}), expected [N, 3, {h}, {w}]"),
             (lambda: det.detect(np.zeros((20, 30, 3), np.uint8), score_threshold=1.5), "score_threshold = 1.5"),
             (lambda: det.detect_batch(np.zeros((20, 30, 3), np.uint8)), "takes a list of [H, W, 3] images"),
             (lambda: det.detect(np.zeros((20, 30, 3), np.float32), bgr=True), "dtype is float32")]
    for call, message in cases:
        with pytest.raises(UserError, match=re.escape(message)) as info:
            call()
        assert "\n" not in str(info.value)


def test_warmup_runs_and_concurrent_calls_agree(world):  # noqa: F811
    """One detector shared by threads: calls take turns (a lock), results equal a lone call."""
    from concurrent.futures import ThreadPoolExecutor

    _, val = world
    det = DeployedDetector(export_folder())
    det.warmup(iterations=2)
    image = _val_images(val)[0]
    alone = det.detect(image)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: det.detect(image), range(8)))
    for found in results:
        np.testing.assert_array_equal(found.boxes, alone.boxes)
        np.testing.assert_array_equal(found.scores, alone.scores)
