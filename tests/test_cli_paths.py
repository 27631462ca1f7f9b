"""``gkd-bmfi`` from anywhere: which export a path names, benchmark figures and the ship record found
from the repository wherever the command runs, QAT exports' own stages, videos, one default score."""
from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main, parser, summary
from pipeline.deploy.runtime import DEFAULT_SCORE_THRESHOLD, DeployedDetector
from pipeline.io import working_dir

from test_cli import val_image_folder
from test_export import export_folder
from test_ship import ship_file

pytestmark = pytest.mark.slow        # uses the export shared with test_export / test_runtime
REPO = Path(__file__).resolve().parents[1]
BENCH = {"backends": {"onnxruntime-cpu-fp32": {"p50_ms": 12.34}, "onnxruntime-cpu-int8": {"p50_ms": 5.67}}}


def repo_with_export(tmp_path: Path, qat: bool = False) -> tuple[Path, Path]:
    """``(repository, export folder)``: a copy of the shared export at its place in a repository;
    ``qat``: as a QAT export (``exports/<ds>/<det>/qat/none/<parent>``, manifest naming its method)."""
    root = tmp_path / "repo"
    rel = Path("exports/tiny/gfl") / ("qat/none" if qat else "") / "baseline-resnet18"
    shutil.copytree(export_folder(), root / rel)
    if qat:
        path = root / rel / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["model"].update(model="baseline_qat-resnet18", parent="baseline-resnet18", qat_method="none")
        path.write_text(json.dumps(manifest))
    return root, root / rel


def refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def dvc_stages() -> set[str]:
    return set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def test_info_takes_the_folder_a_file_in_it_or_a_folder_above_one_export(tmp_path, capsys):
    root, folder = repo_with_export(tmp_path)
    first = summary(folder).splitlines()[1:]
    capsys.readouterr()                           # whatever building the shared export printed
    for given in (folder / "model-int8.onnx", folder / "manifest.json", root, root / "exports" / "tiny"):
        main(["info", str(given)])
        assert capsys.readouterr().out.splitlines()[1:] == first, given
    shutil.copytree(folder, root / "exports/tiny/gfl/other-resnet18")
    err = refused(capsys, ["info", str(root / "exports")])
    assert f"holds 2 exports, give one of: {folder}, {root / 'exports/tiny/gfl/other-resnet18'}" in err
    (tmp_path / "empty").mkdir()
    assert "no export in this folder or below it" in refused(capsys, ["info", str(tmp_path / "empty")])
    (tmp_path / "stray.onnx").write_bytes(b"x")
    assert "not in an export folder" in refused(capsys, ["info", str(tmp_path / "stray.onnx")])


def test_info_finds_the_benchmark_from_the_export_wherever_it_runs(tmp_path):
    root, folder = repo_with_export(tmp_path)
    bench = root / "metrics/benchmark/tiny/gfl/baseline-resnet18.json"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with working_dir(elsewhere):
        assert "not measured (run dvc repro benchmark in its repository" in summary(folder)
        bench.parent.mkdir(parents=True)
        bench.write_text(json.dumps(BENCH))
        text = summary(folder)
    assert f"latency: {bench}" in text
    row = next(line for line in text.splitlines() if line.startswith("| model.onnx |"))
    assert "onnxruntime 12.3 ms" in row
    with working_dir(folder):                   # from inside the export, a relative path
        assert "onnxruntime 12.3 ms" in summary(Path("."))


def test_a_qat_export_advises_its_own_stages_and_finds_its_benchmark(tmp_path):
    root, folder = repo_with_export(tmp_path, qat=True)
    (folder / "model-fp16.onnx").write_bytes(b"changed")
    text = summary(folder)
    advised = set(re.findall(r"dvc repro (\w+)", text))
    assert advised == {"benchmark_qat", "qat_export"} and advised <= dvc_stages(), text
    bench = root / "metrics/benchmark/tiny/gfl/qat/none/baseline-resnet18.json"   # as dvc.yaml's benchmark_qat
    bench.parent.mkdir(parents=True)
    bench.write_text(json.dumps(BENCH))
    with working_dir(tmp_path):
        assert "onnxruntime 5.7 ms" in next(line for line in summary(folder).splitlines()
                                              if line.startswith("| model-int8.onnx |"))
    plain = summary(repo_with_export(tmp_path / "plain")[1])
    assert set(re.findall(r"dvc repro (\w+)", plain)) == {"benchmark"}


def test_select_finds_reports_ship_json_from_any_folder_of_the_repository(tmp_path, capsys):
    (tmp_path / "reports").mkdir()
    ship_file(tmp_path).rename(tmp_path / "reports" / "ship.json")
    (tmp_path / "a" / "b").mkdir(parents=True)
    with working_dir(tmp_path / "a" / "b"):
        main(["select", "--budget-ms", "60"])
        assert "synthetic: budget 60 ms (p90): ship cheap fp32" in capsys.readouterr().out
    main(["select", "--budget-ms", "60", "--ship", str(tmp_path)])
    assert "ship cheap fp32" in capsys.readouterr().out
    with working_dir(tmp_path / "a"):
        (tmp_path / "reports" / "ship.json").unlink()
        assert "reports/ship.json: not found here or in a folder above; run the ship stage" in \
            refused(capsys, ["select", "--budget-ms", "60"])


def test_detect_runs_the_file_it_is_given_and_refuses_a_conflicting_variant(tmp_path, capsys):
    export_folder()
    frames = val_image_folder(tmp_path)
    main(["detect", str(export_folder() / "model-int8-cpu.onnx"), str(frames), "--out", str(tmp_path / "o")])
    assert json.loads((tmp_path / "o" / "detections.json").read_text())["file"] == "model-int8-cpu.onnx"
    err = refused(capsys, ["detect", str(export_folder() / "model-int8-cpu.onnx"), str(frames), "--out",
                           str(tmp_path / "p"), "--variant", "model.onnx"])
    assert "names the file model-int8-cpu.onnx but --variant says model.onnx" in err
    assert not (tmp_path / "p").exists()


def test_one_default_score_threshold_for_the_command_and_the_api(tmp_path, capsys):
    assert DEFAULT_SCORE_THRESHOLD == 0.3
    for method in (DeployedDetector.detect, DeployedDetector.detect_batch):
        assert inspect.signature(method).parameters["score_threshold"].default == DEFAULT_SCORE_THRESHOLD
        assert "default 0.3" in method.__doc__
    detect_help = parser()._subparsers._group_actions[0].choices["detect"].format_help()
    assert "minimum score drawn (default 0.3" in " ".join(detect_help.split())
    frames = val_image_folder(tmp_path)
    main(["detect", str(export_folder()), str(frames), "--out", str(tmp_path / "o")])
    record = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert record["score_threshold"] == 0.3
    det = DeployedDetector(export_folder())
    from pipeline.data.images import read_rgb

    for entry in record["images"]:
        rgb = read_rgb(Path(entry["image"]))
        every = det.detect(rgb, score_threshold=0.0)
        default = det.detect(rgb)
        assert len(entry["detections"]) == len(default) == int((every.scores >= 0.3).sum())
    assert any(len(det.detect(read_rgb(Path(e["image"])), score_threshold=0.0)) > len(e["detections"])
               for e in record["images"]), "the default threshold should drop some of the tiny model's boxes"


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    cv2 = pytest.importorskip("cv2")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (w, h))
    assert writer.isOpened()
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))
    writer.release()


def read_video(path: Path) -> list[np.ndarray]:
    import cv2

    capture, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return out
        out.append(bgr[..., ::-1].copy())


def test_detect_reads_a_video_frame_by_frame_and_times_each(tmp_path, capsys):
    from pipeline.data.images import read_rgb

    export_folder()
    capsys.readouterr()
    stills = [read_rgb(p) for p in sorted(val_image_folder(tmp_path).iterdir())]
    h, w = stills[0].shape[:2]
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "drive.avi", [np.ascontiguousarray(s[:h, :w]) for s in stills if s.shape[:2] >= (h, w)])
    decoded = read_video(clips / "drive.avi")
    assert len(decoded) >= 2
    out = tmp_path / "out"
    main(["detect", str(export_folder()), str(clips), "--out", str(out), "--score", "0"])
    printed = capsys.readouterr().out.splitlines()
    record = json.loads((out / "detections.json").read_text())["images"]
    assert [r["frame"] for r in record] == list(range(len(decoded)))
    det = DeployedDetector(export_folder())
    for entry, rgb, line in zip(record, decoded, printed):
        expected = det.detect(rgb, score_threshold=0.0)
        assert len(entry["detections"]) == len(expected)
        np.testing.assert_allclose([d["box_xyxy"] for d in entry["detections"]], expected.boxes.reshape(-1, 4),
                                   atol=0.01)
        assert (out / entry["drawing"]).is_file() and entry["drawing"] == f"drive/{entry['frame']:06d}.png"
        assert re.fullmatch(rf"{re.escape(str(clips / 'drive.avi'))} frame {entry['frame']}: "
                            rf"{len(expected)} detections, [0-9.]+ ms", line), line
    assert re.match(rf"{len(decoded)} images/frames, {sum(len(r['detections']) for r in record)} detections; "
                    r"per image [0-9.]+ ms mean, p50 [0-9.]+, p90 [0-9.]+, max [0-9.]+ ms", printed[len(decoded)])
    (clips / "broken.mp4").write_bytes(b"not a video")
    err = refused(capsys, ["detect", str(export_folder()), str(clips / "broken.mp4"), "--out", str(tmp_path / "x")])
    assert "broken.mp4: OpenCV" in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("record, cell", [
    (None, "-"),
    ({"ready": True, "problems": [], "unverified": []}, "yes"),
    ({"ready": False, "problems": ["node X: INT32"], "unverified": []}, "no (1 problems)"),
    ({"ready": False, "problems": [], "unverified": ["nms_boxes_per_image"]}, "unverified (1 checks could not run)"),
])
def test_info_never_calls_an_unchecked_file_ready_or_failed(record, cell):
    """A readiness record whose only gap is a check that could not run reads "unverified", not
    "no (0 problems)", and never "yes"."""
    from pipeline.cli import readiness

    assert readiness(record) == cell
