"""TensorRT: the skip record without TensorRT or a GPU, and refusing mismatched engines.

TensorRT cannot be installed on the project's machines; the pure-python parts (skip record,
manifest checks) run everywhere, the build test only where TensorRT imports.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline.deploy.manifest import artifact_entry, check_engine_compat, sha256
from pipeline.deploy.tensorrt_build import build_engines, profile_shapes, tensorrt_unavailable
from pipeline.errors import UserError

ENTRY = {"kind": "engine", "precision": "fp16", "tensorrt_version": "10.13.0.35", "gpu_name": "NVIDIA H100 PCIe",
         "compute_capability": "9.0"}


def test_without_tensorrt_the_build_writes_a_skip_record_and_no_engine(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)          # import tensorrt -> ImportError
    reason = tensorrt_unavailable()
    assert reason is not None and "tensorrt is not installed" in reason
    record, entries = build_engines(tmp_path, {"fp32": "model.onnx"}, profile_shapes([0, 3, 64, 192], True, 8, 1), 1024)
    assert record == {"skipped": reason} and entries == {}
    assert list(tmp_path.iterdir()) == []


def test_engine_from_another_tensorrt_version_or_gpu_is_refused_in_one_line():
    check_engine_compat(ENTRY, "model-fp16.engine", "10.13.0.35", "NVIDIA H100 PCIe", "9.0")   # same: accepted
    with pytest.raises(UserError, match=r"built with TensorRT 10\.13\.0\.35 but TensorRT 11\.4\.0 is installed") as e:
        check_engine_compat(ENTRY, "model-fp16.engine", "11.4.0", "NVIDIA H100 PCIe", "9.0")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"built for NVIDIA H100 PCIe \(sm 9\.0\) but this GPU is Orin \(sm 8\.7\)"):
        check_engine_compat(ENTRY, "model-fp16.engine", "10.13.0.35", "Orin", "8.7")


def _engine_folder(tmp_path: Path, entry: dict) -> Path:
    (tmp_path / "model-fp16.engine").write_bytes(b"plan bytes")
    full = {**entry, "sha256": sha256(tmp_path / "model-fp16.engine")}
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {"model-fp16.engine": full}}))
    return tmp_path


def test_engine_manifest_entry_must_carry_its_build_environment(tmp_path):
    entry = {k: v for k, v in ENTRY.items() if k != "gpu_name"}
    folder = _engine_folder(tmp_path, entry)
    manifest = json.loads((folder / "manifest.json").read_text())
    with pytest.raises(UserError, match="engine entry model-fp16.engine lacks 'gpu_name'; rebuild the engine"):
        artifact_entry(manifest, folder, "model-fp16.engine")
    manifest["artifacts"]["model-fp16.engine"]["gpu_name"] = "NVIDIA H100 PCIe"
    assert artifact_entry(manifest, folder, "model-fp16.engine")["precision"] == "fp16"


def test_loading_an_engine_without_tensorrt_says_how_to_install_it(tmp_path, monkeypatch):
    from pipeline.deploy.runtime import TensorRTBackend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError, match=r"needs TensorRT: pip install '\.\[tensorrt\]'"):
        TensorRTBackend(tmp_path / "model-fp16.engine", ENTRY)


def test_engine_build_with_tensorrt(tmp_path):  # pragma: no cover - needs TensorRT and a GPU
    pytest.importorskip("tensorrt", reason="TensorRT is not installable on this machine (NVIDIA's index)")
    if tensorrt_unavailable():
        pytest.skip(tensorrt_unavailable())
    from test_export import export_folder

    folder = tmp_path / "export"
    import shutil

    shutil.copytree(export_folder(), folder)
    record, entries = build_engines(folder, {"fp16": "model-fp16.onnx"}, profile_shapes(["N", 3, 64, 192], True, 4, 1),
                                    1024)
    assert record["engines"] == ["model-fp16.engine"]
    import tensorrt

    assert entries["model-fp16.engine"]["tensorrt_version"] == tensorrt.__version__
    assert (folder / "model-fp16.engine").read_bytes()[:4] != b"{\"ar"     # a pure plan, no json prepended


def test_profile_shapes_follow_the_export():
    """A fixed-batch export gets a fixed profile; a dynamic one 1..max with opt clamped."""
    assert profile_shapes([1, 3, 96, 320], False, 8, 1) == {"min": [1, 3, 96, 320], "opt": [1, 3, 96, 320],
                                                           "max": [1, 3, 96, 320]}
    assert profile_shapes(["N", 3, 96, 320], True, 8, 4) == {"min": [1, 3, 96, 320], "opt": [4, 3, 96, 320],
                                                            "max": [8, 3, 96, 320]}
    assert profile_shapes(["N", 3, 96, 320], True, 2, 16)["opt"] == [2, 3, 96, 320]
    with pytest.raises(UserError, match="needs a fixed batch"):
        profile_shapes(["N", 3, 96, 320], False, 8, 1)


def test_device_buffers_are_allocated_once_per_shape_and_grow_only_when_needed():
    from pipeline.deploy.runtime import DeviceBuffers

    calls, freed = [], []
    buffers = DeviceBuffers(lambda n: calls.append(n) or len(calls), freed.append)
    first = buffers.get("images", 1000)
    assert [buffers.get("images", 1000) for _ in range(5)] == [first] * 5        # steady state: no allocation
    assert buffers.get("images", 400) == first and calls == [1000]                # a smaller batch reuses it
    grown = buffers.get("images", 4000)
    assert grown != first and freed == [first] and calls == [1000, 4000]
    buffers.get("boxes", 0)                                                        # empty outputs still get a pointer
    buffers.release()
    assert sorted(freed) == sorted([first, grown, 3]) and calls[-1] == 1


def test_ort_tensorrt_provider_keeps_its_engine_cache_in_the_export_folder(tmp_path):
    from pipeline.deploy.runtime import provider_settings

    settings = provider_settings(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                                 tmp_path / "ort-trt-cache")
    name, options = settings[0]
    assert name == "TensorrtExecutionProvider" and options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "ort-trt-cache") == options["trt_timing_cache_path"]
    assert settings[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
