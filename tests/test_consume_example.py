"""``examples/consume_export.py``: a consumer with only the export folder (numpy, onnxruntime,
OpenCV; no ``pipeline``) finds what :class:`DeployedDetector` finds, on val images and on
camera-sized frames (scikit-image is not installed here and nothing is downloaded: val images
stretched by OpenCV to 1242x375 and 1920x1080, scale factors that are not integers)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.images import read_rgb
from pipeline.deploy.runtime import DeployedDetector

from test_cli import val_image_folder
from test_export import export_folder

cv2 = pytest.importorskip("cv2")
pytestmark = pytest.mark.slow        # uses the export shared with test_export / test_runtime
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "consume_export.py"


def test_the_example_imports_only_numpy_onnxruntime_opencv_and_the_standard_library():
    tree = ast.parse(EXAMPLE.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules - set(sys.stdlib_module_names) == {"numpy", "onnxruntime", "cv2"}


def camera_frames(tmp_path: Path) -> list[Path]:
    out = []
    for i, path in enumerate(sorted(val_image_folder(tmp_path).iterdir())):
        out.append(path)
        bgr = cv2.imread(str(path))
        for w, h in ((1242, 375), (1920, 1080)):
            stretched = tmp_path / f"camera-{i}-{w}x{h}.png"
            cv2.imwrite(str(stretched), cv2.resize(bgr, (w, h), interpolation=cv2.INTER_CUBIC))
            out.append(stretched)
    return out


def assert_same(found: list[dict], expected, where: str) -> None:
    """Same count; each expected detection matched one-to-one by class, box within 1 px, score within 1e-3."""
    assert len(found) == len(expected), where
    free = list(found)
    for box, score, name in zip(expected.boxes, expected.scores, expected.names):
        match = next((d for d in free if d["class"] == name and abs(d["score"] - score) <= 1e-3
                      and np.abs(np.array(d["box_xyxy"]) - box).max() <= 1.0), None)
        assert match is not None, f"{where}: no match for {name} {score:.4f} {box.tolist()}"
        free.remove(match)


@pytest.mark.parametrize("model", ["model.onnx", "model-int8-cpu.onnx"])
def test_the_example_finds_what_the_runtime_finds(tmp_path, model):
    images = camera_frames(tmp_path)
    out = tmp_path / "drawn"
    result = subprocess.run([sys.executable, str(EXAMPLE), str(export_folder()), *map(str, images), "--model", model,
                             "--score", "0", "--out", str(out), "--json", str(tmp_path / "found.json")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads((tmp_path / "found.json").read_text())
    det = DeployedDetector(export_folder() / model)
    total = 0
    for path in images:
        rgb = read_rgb(path)
        expected = det.detect(rgb, score_threshold=0.0)
        assert_same(found[str(path)], expected, path.name)
        total += len(expected)
        assert cv2.imread(str(out / f"{path.name}.png")).shape[:2] == rgb.shape[:2]
    assert total > 0 and any("x" in p.name for p in images)
    assert len(result.stdout.splitlines()) == len(images)


def test_the_example_stops_on_a_manifest_it_would_misread(tmp_path):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(export_folder(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["preprocessing"]["resize_examples"][0]["out_wh"][0] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = subprocess.run([sys.executable, str(EXAMPLE), str(folder), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "resize rule disagrees with the manifest's example" in result.stderr
