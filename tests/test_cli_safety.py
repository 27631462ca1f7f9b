"""What ``gkd-bmfi`` and the runtime refuse: an ``--out`` that is not the command's own to replace,
inputs and manifests of the wrong type, files that are not the export's. Each refusal is one line
(exit status 2 from the command), and nothing is left half-written."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import MARKER, main, summary
from pipeline.deploy.manifest import FORMAT, preprocessing_record, read_manifest, sha256
from pipeline.errors import UserError
from pipeline.io import atomic_dir, working_dir

# ------------------------------------------------------------------------------------------ helpers


def refused(capsys, argv: list[str]) -> str:
    """Run the command, which must end with exit status 2 and one line; that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (itself included) with the bytes of the files: what must not change."""
    paths = [folder, *sorted(folder.rglob("*"))] if folder.is_dir() else [folder]
    return {str(p): (p.read_bytes() if p.is_file() else None) for p in paths}


def leftovers(folder: Path) -> list[str]:
    """Temporaries of the atomic writers left in ``folder``."""
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def minimal_export(folder: Path, **changes) -> Path:
    """An export folder holding a manifest and a stand-in ``model.onnx`` (bytes, not a graph): enough
    for ``read_manifest`` and ``gkd-bmfi info``; ``changes`` replace top-level manifest fields."""
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"stand-in graph " * 64)
    manifest = {
        "format": FORMAT,
        "model": {"dataset": "tiny", "detector": "gfl", "model": "baseline-resnet18", "backbone": "resnet18"},
        "class_names": ["Car", "Pedestrian"],
        "input": {"name": "images", "shape": ["N", 3, 64, 192], "dtype": "float32"},
        "preprocessing": preprocessing_record(192, 64, (64, 192), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear"),
        "outputs": {}, "nms": {},
        "artifacts": {"model.onnx": {"kind": "onnx", "precision": "fp32", "runtime": "onnxruntime CPU",
                                     "sha256": sha256(folder / "model.onnx"), "eval": {"mAP50": 0.5},
                                     "tensorrt_readiness": {"ready": True, "problems": []}}},
        **changes,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def edited(folder: Path, change) -> Path:
    """``folder``'s manifest changed in place by ``change(manifest)``."""
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels and holds none (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------- atomic_dir (every stage's output)


@pytest.mark.parametrize("final", [".", ".."])
def test_atomic_dir_refuses_the_working_directory_and_its_parents(tmp_path, final):
    cwd = tmp_path / "repo" / "work"
    cwd.mkdir(parents=True)
    (cwd / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    with working_dir(cwd), pytest.raises(UserError, match="working directory") as info:
        with atomic_dir(Path(final)) as out:
            (out / "x").write_text("new")
    assert "\n" not in str(info.value)
    assert snapshot(tmp_path) == before


def test_atomic_dir_keeps_the_previous_output_when_the_swap_fails(tmp_path, monkeypatch):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("previous")
    real_replace = os.replace
    calls = []

    def failing(src, dst):           # the new folder's rename onto ``final`` fails (once)
        if Path(dst) == final and not calls:
            calls.append(src)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        with atomic_dir(final) as out:
            (out / "new.txt").write_text("new")
    assert (final / "old.txt").read_text() == "previous" and not (final / "new.txt").exists()
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ manifest, info (no model needed)


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(artifacts=[]), "artifacts is []"),
    (lambda m: m["input"].pop("shape"), "input.shape is missing"),
    (lambda m: m["input"].update(shape=["N", 3, "64", 192]), "input.shape"),
    (lambda m: m["preprocessing"].update(resize_wh=[400, 64]), "preprocessing.resize_wh [400, 64] (w, h) does not fit"),
    (lambda m: m["preprocessing"].update(pad_hw=[64]), "preprocessing.pad_hw is [64]"),
    (lambda m: m["preprocessing"].update(mean="123"), 'preprocessing.mean is "123"'),
    (lambda m: m["preprocessing"].update(std=[1.0, 0.0, 1.0]), "preprocessing.std is [1.0, 0.0, 1.0]"),
    (lambda m: m.update(class_names=["Car", 7]), "class_names is"),
    (lambda m: m.update(model="gfl"), "model is"),
])
def test_manifest_fields_of_the_wrong_type_are_refused_in_one_line(tmp_path, change, field):
    folder = edited(minimal_export(tmp_path / "export"), change)
    with pytest.raises(UserError, match=re.escape(field)) as info:
        read_manifest(folder)
    message = str(info.value)
    assert "\n" not in message and "manifest.json" in message and "re-run the export stage" in message


def test_minimal_export_is_a_valid_manifest(tmp_path):
    assert read_manifest(minimal_export(tmp_path / "export"))["class_names"] == ["Car", "Pedestrian"]


def test_info_marks_a_file_that_differs_from_the_manifest(tmp_path):
    folder = minimal_export(tmp_path / "export")
    assert "| yes | - | yes |" in summary(folder)
    with open(folder / "model.onnx", "r+b") as handle:      # as `truncate -s` does
        handle.truncate(100)
    text = summary(folder)
    row = next(line for line in text.splitlines() if line.startswith("| model.onnx |"))
    assert "NO: sha256 differs" in row and "0.50" not in row and "yes" not in row
    warnings = [line for line in text.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {folder / 'model.onnx'}: sha256 differs from the manifest's; the file was "
                        "changed or truncated; re-export (dvc repro export) before using this file"]


@pytest.mark.parametrize("content", [{"backends": []}, {"backends": {"onnxruntime-cpu-fp32": 5}},
                                     {"backends": {"onnxruntime-cpu-fp32": {"p50_ms": "fast"}}}])
def test_info_refuses_a_benchmark_json_of_the_wrong_shape(tmp_path, capsys, content):
    folder = minimal_export(tmp_path / "export")
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(content))
    err = refused(capsys, ["info", str(folder), "--benchmark", str(bench)])
    assert f"{bench}: backends must be an object" in err


# --------------------------------------------------------------------- detect (the shared export)

slow = pytest.mark.slow        # uses the export shared with test_export / test_runtime / test_cli


def shared_export() -> Path:
    from test_export import export_folder

    return export_folder()


@pytest.fixture
def frames(tmp_path) -> Path:
    """Two val images of the shared export's world in ``tmp_path/frames``."""
    from test_cli import val_image_folder

    folder = val_image_folder(tmp_path)
    for extra in sorted(folder.iterdir())[2:]:
        extra.unlink()
    return folder


@pytest.fixture
def export_copy(tmp_path) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(shared_export(), folder)
    return folder


@slow
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("case", ["images_folder", "image_file", "export", "other_folder", "git_repository"])
def test_detect_never_replaces_what_it_did_not_write(tmp_path, capsys, frames, export_copy, case, overwrite):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / "README").write_text("mine")
    out = {"images_folder": frames, "image_file": sorted(frames.iterdir())[0], "export": export_copy,
           "other_folder": other, "git_repository": tmp_path / "repo"}[case]
    before = snapshot(tmp_path)
    err = refused(capsys, ["detect", str(export_copy), str(frames), "--out", str(out)]
                  + ["--overwrite"] * overwrite)
    assert f"--out {out}: " in err
    assert snapshot(tmp_path) == before


@slow
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("out", [".", ".."])
def test_detect_refuses_the_working_directory_and_its_parents(tmp_path, capsys, frames, out, overwrite):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    with working_dir(cwd):
        err = refused(capsys, ["detect", str(shared_export()), str(frames), "--out", out] + ["--overwrite"] * overwrite)
    assert f"--out {out}: is " in err and "working directory" in err
    assert snapshot(tmp_path) == before


@slow
def test_overwrite_replaces_only_an_earlier_detect_output(tmp_path, capsys, frames):
    out = tmp_path / "out"
    out.mkdir()                                          # an existing empty folder may be used
    main(["detect", str(shared_export()), str(frames), "--out", str(out)])
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "gkd-bmfi detect"
    err = refused(capsys, ["detect", str(shared_export()), str(frames), "--out", str(out)])
    assert f"--out {out}: exists and is not empty" in err and "--overwrite" in err
    (out / "stale.png").write_text("from the first run")
    main(["detect", str(shared_export()), str(frames), "--out", str(out), "--overwrite", "--score", "0.5"])
    assert not (out / "stale.png").exists() and (out / MARKER).is_file()
    assert json.loads((out / "detections.json").read_text())["score_threshold"] == 0.5
    assert leftovers(tmp_path) == []


@slow
def test_images_sharing_a_stem_get_a_drawing_each(tmp_path, frames):
    source = sorted(frames.iterdir())
    pair = tmp_path / "pair"
    pair.mkdir()
    shutil.copy(source[0], pair / "a.png")
    Image.open(source[1]).convert("RGB").save(pair / "a.jpg", quality=95)
    out = tmp_path / "out"
    main(["detect", str(shared_export()), str(pair), "--out", str(out), "--score", "0"])
    record = json.loads((out / "detections.json").read_text())
    assert [(Path(r["image"]).name, r["drawing"]) for r in record["images"]] == [("a.jpg", "a.jpg.png"),
                                                                                  ("a.png", "a.png.png")]
    for entry in record["images"]:
        drawn = Image.open(out / entry["drawing"])
        assert drawn.size == Image.open(entry["image"]).size
    assert sorted(p.name for p in out.glob("*.png")) == ["a.jpg.png", "a.png.png"]


@slow
@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys, frames, where):
    image = sorted(frames.iterdir())[0]
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    out = Path("/proc/gkd-bmfi-x/y") if where == "proc" else image / "sub"
    before = snapshot(frames)
    err = refused(capsys, ["detect", str(shared_export()), str(frames), "--out", str(out)])
    expected = "cannot write there" if where == "proc" else f"{image} is a file, not a folder"
    assert f"--out {out}: " in err and expected in err
    assert snapshot(frames) == before


@slow
@pytest.mark.parametrize("call, code", [("mkdir", errno.EROFS), ("mkdir", errno.EACCES), ("replace", errno.EROFS),
                                        ("replace", errno.EACCES)])
def test_an_unwritable_out_is_one_line_and_leaves_nothing(tmp_path, capsys, frames, monkeypatch, call, code):
    out = tmp_path / "results" / "out"
    real = getattr(os, call)

    def refusing(*args, **kwargs):
        if str(tmp_path / "results") in str(args[-1] if call == "replace" else args[0]):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, refusing)
    err = refused(capsys, ["detect", str(shared_export()), str(frames), "--out", str(out)])
    assert err == f"error: --out {out}: cannot write there ({os.strerror(code)}); give a folder you can write to"
    assert not (tmp_path / "results").exists()


@slow
def test_a_decompression_bomb_is_one_line(tmp_path, capsys, frames):
    bomb = header_only_png(frames / "huge.png", 20000, 20000)
    out = tmp_path / "out"
    err = refused(capsys, ["detect", str(shared_export()), str(frames), "--out", str(out)])
    assert str(bomb) in err
    assert not out.exists() and leftovers(tmp_path) == []


@slow
def test_class_names_shorter_than_the_models_classes_are_refused(tmp_path, capsys, frames, export_copy):
    from pipeline.deploy.runtime import DeployedDetector

    labels = {int(j) for f in frames.iterdir()
              for j in DeployedDetector(export_copy).detect(np.asarray(Image.open(f).convert("RGB")), 0.0).labels}
    assert max(labels) >= 1, "the tiny export should find more than its first class at score 0"
    edited(export_copy, lambda m: m.update(class_names=m["class_names"][:1]))
    err = refused(capsys, ["detect", str(export_copy), str(frames), "--out", str(tmp_path / "out"), "--score", "0"])
    assert f"{export_copy / 'manifest.json'}: class_names lists 1 classes" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@slow
@pytest.mark.parametrize("score", [None, "0.3"])
def test_a_score_threshold_that_is_not_a_number_is_one_line(score):
    from pipeline.deploy.runtime import DeployedDetector

    det = DeployedDetector(shared_export())
    with pytest.raises(UserError, match=re.escape(f"score_threshold = {score!r} must be a number in [0, 1]")) as info:
        det.detect(np.zeros((20, 30, 3), np.uint8), score_threshold=score)
    assert "\n" not in str(info.value)


@slow
@pytest.mark.parametrize("images, sizes, message", [
    ("uint8", [[64, 192]], "images dtype is uint8, expected float32"),
    ("uint16", [[64, 192]], "images dtype is uint16, expected float32"),
    ("float32", [[np.nan, np.nan]], "image_sizes[0] = [nan, nan]"),
    ("float32", [[-64, -192]], "image_sizes[0] = [-64.0, -192.0]"),
    ("float32", [[0, 192]], "image_sizes[0] = [0.0, 192.0]"),
    ("float32", [[640, 1920]], "at most the input's 64x192"),
    ("float32", [["64", "192"]], "image_sizes dtype is <U3"),
])
def test_run_refuses_raw_pixels_and_impossible_sizes(images, sizes, message):
    from pipeline.deploy.runtime import DeployedDetector

    det = DeployedDetector(shared_export())
    pixels = np.full((1, 3, *det.input_hw), 100, dtype=images)
    size_array = np.array(sizes, dtype=None if isinstance(sizes[0][0], str) else np.float32)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        det.run(pixels, size_array)
    assert "\n" not in str(info.value)
