"""The base install is the torch-free runtime: ``pip install <repo>`` into a fresh venv (no torch,
no pipeline extra) gives ``gkd-bmfi info`` and ``detect`` on an export, and torch is not there."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from test_cli import val_image_folder
from test_export import export_folder

pytestmark = pytest.mark.slow        # a venv and a pip install (about a minute from local wheels)
REPO = Path(__file__).resolve().parents[1]
#: pip's words for "the index cannot be reached or does not have it": the test skips on those only.
OFFLINE = re.compile(r"No matching distribution|Could not find a version|NewConnectionError|Temporary failure in name "
                     r"resolution|Network is unreachable|ConnectionError|Max retries exceeded")


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A fresh venv holding the package installed with its base dependencies only."""
    root = tmp_path_factory.mktemp("runtime-install")
    source = root / "src"                       # a copy, so that building leaves the repository alone
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    try:
        venv.EnvBuilder(with_pip=True).create(root / "venv")
    except Exception as err:                     # noqa: BLE001 - no ensurepip, read-only disk, ...
        pytest.skip(f"cannot create a venv here: {err}")
    python = root / "venv" / "bin" / "python"
    result = run([str(python), "-m", "pip", "install", "--quiet", str(source)])
    if result.returncode != 0 and OFFLINE.search(result.stderr):
        pytest.skip(f"the package's base dependencies cannot be installed offline here: "
                    f"{result.stderr.strip().splitlines()[-1][:200]}")
    assert result.returncode == 0, result.stderr
    return root / "venv" / "bin"


def test_the_base_install_has_no_torch(runtime_venv):
    code = ("import importlib.util as u, pipeline, sys; "
            "print(pipeline.__file__); "
            "print([m for m in ('torch', 'torchvision', 'onnx', 'pydantic', 'yaml', 'dvc') if u.find_spec(m)])")
    result = run([str(runtime_venv / "python"), "-c", code], cwd=runtime_venv)
    assert result.returncode == 0, result.stderr
    where, present = result.stdout.splitlines()
    assert Path(where).is_relative_to(runtime_venv.parent), where      # the installed copy, not the repository
    assert present == "[]", f"the runtime install pulled in {present}"


def test_info_and_detect_run_from_the_base_install(runtime_venv, tmp_path):
    frames = val_image_folder(tmp_path)
    info = run([str(runtime_venv / "gkd-bmfi"), "info", str(export_folder())], cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "| model-int8.onnx |" in info.stdout
    detect = run([str(runtime_venv / "gkd-bmfi"), "detect", str(export_folder()), str(frames), "--out",
                  str(tmp_path / "out"), "--score", "0"], cwd=tmp_path)
    assert detect.returncode == 0, detect.stderr
    record = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(record["images"]) == len(list(frames.iterdir()))
    assert sum(len(r["detections"]) for r in record["images"]) > 0
    assert re.search(r"per image [0-9.]+ ms mean", detect.stdout)
    (tmp_path / "clip.mp4").write_bytes(b"x")
    video = run([str(runtime_venv / "gkd-bmfi"), "detect", str(export_folder()), str(tmp_path / "clip.mp4"),
                 "--out", str(tmp_path / "v")], cwd=tmp_path)
    assert video.returncode == 2 and "pip install 'gkd-bmfi[video]'" in video.stderr      # no OpenCV here
    assert video.stderr.count("\n") == 1
