"""The ``gkd-bmfi`` console script: `info` on an export folder, `detect` drawing boxes on images."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main, summary
from pipeline.deploy.runtime import DeployedDetector

from test_export import CLASSES, built_repo, export_folder

pytestmark = pytest.mark.slow        # uses the export shared with test_export / test_runtime


def console_script() -> Path:
    return Path(sys.executable).parent / "gkd-bmfi"


def val_image_folder(tmp_path: Path) -> Path:
    root = built_repo() / "data" / "curated" / "tiny"
    coco = json.loads((root / "val.json").read_text())
    image_root = Path(coco["info"]["image_root"])
    image_root = image_root if image_root.is_absolute() else built_repo() / image_root
    folder = tmp_path / "frames"
    folder.mkdir()
    for record in coco["images"][:3]:
        shutil.copy(image_root / record["file_name"], folder / Path(record["file_name"]).name)
    return folder


def test_console_script_is_installed_and_summarises_the_manifest():
    result = subprocess.run([str(console_script()), "info", str(export_folder())], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"classes ({len(CLASSES)}): {', '.join(CLASSES)}" in text
    manifest = json.loads((export_folder() / "manifest.json").read_text())
    for name, entry in manifest["artifacts"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert f"{entry['eval']['mAP50']:.2f}" in row and entry["runtime"] in row
        if "tensorrt_readiness" in entry:
            assert ("| yes |" in row) == entry["tensorrt_readiness"]["ready"]


def test_the_command_does_not_import_torch():
    code = "import sys, pipeline.cli, pipeline.deploy.runtime; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_info_shows_benchmark_latency_when_given(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"backends": {"onnxruntime-cpu-fp32": {"p50_ms": 12.34}}}))
    row = next(line for line in summary(export_folder(), bench).splitlines() if line.startswith("| model.onnx |"))
    assert "onnxruntime 12.3 ms" in row
    bench.write_text("{not json")
    with pytest.raises(SystemExit) as info:
        main(["info", str(export_folder()), "--benchmark", str(bench)])
    assert info.value.code == 2


def test_detect_draws_the_runtime_detections(tmp_path):
    frames = val_image_folder(tmp_path)
    out = tmp_path / "out"
    main(["detect", str(export_folder()), str(frames), "--out", str(out), "--score", "0.0"])
    record = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in record["images"]] == sorted(p.name for p in frames.iterdir())
    detector = DeployedDetector(export_folder())
    drew_something = False
    for entry in record["images"]:
        source = np.asarray(Image.open(entry["image"]).convert("RGB"))
        expected = detector.detect(source, score_threshold=0.0)
        assert len(entry["detections"]) == len(expected)
        drawn = np.asarray(Image.open(out / f"{Path(entry['image']).stem}.png").convert("RGB"))
        assert drawn.shape == source.shape
        changed = np.any(drawn != source, axis=2)
        for det in entry["detections"]:
            x1, y1, x2, y2 = (int(round(v)) for v in det["box_xyxy"])
            # the rectangle's outline is drawn: pixels on the box's left edge changed
            edge = changed[max(0, y1):max(y1 + 1, min(y2, drawn.shape[0])), min(max(0, x1), drawn.shape[1] - 1)]
            assert edge.any(), det
            drew_something = True
        assert changed.any() == bool(entry["detections"])
    assert drew_something, "the tiny export found nothing on val images at score 0"


@pytest.mark.parametrize("case", ["missing", "empty_folder", "sixteen_bit"])
def test_detect_refuses_bad_images_in_one_line(tmp_path, capsys, case):
    target = tmp_path / "in"
    if case == "empty_folder":
        target.mkdir()
    elif case == "sixteen_bit":
        target.mkdir()
        Image.fromarray(np.full((40, 60), 40000, np.uint16)).save(target / "deep.png")
    with pytest.raises(SystemExit) as info:
        main(["detect", str(export_folder()), str(target), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "out").exists()
