"""``gkd-bmfi build`` on the target: the trtexec line, the one-line refusal without TensorRT, the
manifest record of what was built (with a fake builder), and the loader refusing an engine built
for another GPU or TensorRT version (with a fake TensorRT and GPU)."""
from __future__ import annotations

import json
import shlex
import shutil
import sys
import types
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.deploy import cuda, runtime
from pipeline.deploy.manifest import read_manifest, sha256
from pipeline.deploy.target_build import record_engines, tensorrt_sources, trtexec_command
from pipeline.errors import UserError

from test_export import export_folder

pytestmark = pytest.mark.slow        # uses the export shared with test_export / test_runtime


@pytest.fixture
def export_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "exports" / "tiny" / "gfl" / "baseline-resnet18"
    shutil.copytree(export_folder(), folder)
    return folder


def test_without_tensorrt_build_prints_the_trtexec_lines_and_one_refusal(export_copy, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)           # import tensorrt -> ImportError
    before = {p.name: sha256(p) for p in export_copy.iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["build", str(export_copy.parent), "--precision", "fp16", "int8"])   # a folder above one export
    out, err = capsys.readouterr()
    assert info.value.code == 2
    assert err.startswith(f"error: {export_copy}: cannot build TensorRT engines here: tensorrt is not installed")
    assert err.count("\n") == 1
    lines = out.splitlines()
    assert len(lines) == 2
    h, w = read_manifest(export_copy)["input"]["shape"][2:]
    for line, (onnx, engine) in zip(lines, [("model-fp16.onnx", "model-fp16.engine"),
                                            ("model-int8.onnx", "model-int8.engine")]):
        args = shlex.split(line)
        assert args[:4] == ["trtexec", f"--onnx={export_copy / onnx}", f"--saveEngine={export_copy / engine}",
                            "--stronglyTyped"]
        assert f"--minShapes=images:1x3x{h}x{w},image_sizes:1x2" in args      # the export's defaults: 1 .. 8
        assert f"--optShapes=images:1x3x{h}x{w},image_sizes:1x2" in args
        assert f"--maxShapes=images:8x3x{h}x{w},image_sizes:8x2" in args
        assert "--memPoolSize=workspace:2048M" in args and f"--timingCacheFile={export_copy / 'timing.cache'}" in args
    assert {p.name: sha256(p) for p in export_copy.iterdir()} == before      # nothing written


def test_build_refuses_a_precision_the_export_lacks(export_copy, capsys):
    manifest = read_manifest(export_copy)
    assert tensorrt_sources(manifest, None) == {"fp32": "model.onnx", "fp16": "model-fp16.onnx",
                                                "int8": "model-int8.onnx"}    # never the CPU-only int8 file
    del manifest["artifacts"]["model-fp16.onnx"]
    with pytest.raises(UserError, match=r"--precision fp16: this export has no ONNX file for TensorRT in that "
                                        r"precision \(it has fp32 \(model.onnx\), int8 \(model-int8.onnx\)\)"):
        tensorrt_sources(manifest, ["fp32", "fp16"])


def test_a_fixed_batch_export_gets_no_shape_flags():
    shapes = {k: [1, 3, 64, 192] for k in ("min", "opt", "max")}
    line = trtexec_command(Path("e/model.onnx"), Path("e/model-fp32.engine"), shapes, 512, dynamic=False)
    assert line == ("trtexec --onnx=e/model.onnx --saveEngine=e/model-fp32.engine --stronglyTyped "
                    "--memPoolSize=workspace:512M --timingCacheFile=e/timing.cache")


def fake_builder(version: str, gpu: str, capability: str):
    def build_one(onnx: Path, engine: Path, shapes, workspace, cache) -> dict:
        engine.write_bytes(b"plan of " + onnx.name.encode())
        return {"kind": "engine", "source_onnx": onnx.name, "onnx_sha256": sha256(onnx), "sha256": sha256(engine),
                "tensorrt_version": version, "gpu_name": gpu, "compute_capability": capability,
                "strongly_typed": True, "profile": shapes, "timing_cache": cache.name, "workspace_mib": workspace}
    return build_one


def test_built_engines_are_recorded_and_refused_on_another_gpu_or_tensorrt(export_copy, monkeypatch):
    manifest = read_manifest(export_copy)
    shapes = {"min": [1, 3, 64, 192], "opt": [1, 3, 64, 192], "max": [8, 3, 64, 192]}
    record_engines(export_copy, manifest, {"fp16": "model-fp16.onnx"}, shapes, 2048,
                   fake_builder("10.9.0", "Orin", "8.7"))
    written = read_manifest(export_copy)
    entry = written["artifacts"]["model-fp16.engine"]
    assert (entry["gpu_name"], entry["tensorrt_version"], entry["precision"]) == ("Orin", "10.9.0", "fp16")
    assert entry["sha256"] == sha256(export_copy / "model-fp16.engine") and entry["profile"] == shapes
    assert written["tensorrt"]["engines"] == ["model-fp16.engine"] and written["tensorrt"]["gpu_name"] == "Orin"
    assert not list(export_copy.glob(".*.tmp"))

    fake_trt = types.SimpleNamespace(__version__="10.9.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(cuda, "cudart", lambda: object())
    monkeypatch.setattr(cuda, "gpu_identity", lambda cudart: ("NVIDIA H200", "9.0"))
    with pytest.raises(UserError) as info:
        runtime.DeployedDetector(export_copy / "model-fp16.engine")
    assert str(info.value) == ("model-fp16.engine: engine built for Orin (sm 8.7) but this GPU is NVIDIA H200 "
                               "(sm 9.0); rebuild it on this machine (gkd-bmfi build <export folder>)")
    fake_trt.__version__ = "10.13.0"
    monkeypatch.setattr(cuda, "gpu_identity", lambda cudart: ("Orin", "8.7"))
    with pytest.raises(UserError, match=r"built with TensorRT 10\.9\.0 but TensorRT 10\.13\.0 is installed; "
                                        r"rebuild it on this machine \(gkd-bmfi build"):
        runtime.DeployedDetector(export_copy / "model-fp16.engine")


def test_a_failed_build_leaves_the_folder_as_it_was(export_copy):
    before = {p.name: sha256(p) for p in export_copy.iterdir()}
    good = fake_builder("10.9.0", "Orin", "8.7")

    def second_fails(onnx, engine, *rest):
        if onnx.name == "model-int8.onnx":
            raise UserError(f"{onnx}: TensorRT could not build an engine")
        return good(onnx, engine, *rest)

    with pytest.raises(UserError):
        record_engines(export_copy, read_manifest(export_copy), {"fp16": "model-fp16.onnx", "int8": "model-int8.onnx"},
                       {"min": [1, 3, 64, 192], "opt": [1, 3, 64, 192], "max": [8, 3, 64, 192]}, 2048, second_fails)
    assert {p.name: sha256(p) for p in export_copy.iterdir()} == before
    assert json.loads((export_copy / "manifest.json").read_text())["artifacts"].keys() == \
        json.loads((export_folder() / "manifest.json").read_text())["artifacts"].keys()
