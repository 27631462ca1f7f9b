"""Data-parallel training under torchrun (gloo, CPU) equals one process on the same global batch.

Each run is a real process launch: ``python`` for one process, ``torchrun --nproc-per-node=2``
for two, both running tests/distributed_worker.py through the project's training loop.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from pipeline.data.curate import curate_kitti
from pipeline.data.synthetic import write_synthetic_kitti

pytestmark = pytest.mark.slow

WORKER = REPO / "tests" / "distributed_worker.py"
# Two processes sum their gradients in another order than one process does: float32 rounding,
# grown by a few SGD steps, stays far below this; a wrong batch split or loss normalisation
# (e.g. averaging per-process losses normalised by local positives) moves weights by > 1e-3.
ATOL = 2e-5


def launch(args: list[str], nproc: int, cwd: Path) -> None:
    prefix = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([*prefix, str(WORKER), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def train_json(tmp_path_factory) -> Path:
    """Eight synthetic training scenes: two global batches of four."""
    root = tmp_path_factory.mktemp("ddp")
    write_synthetic_kitti(root / "raw", num_images=10, width=320, height=96, seed=5)
    coco = curate_kitti(root / "raw", "synthetic", val_fraction=0.2, seed=0, min_box_size=1.0).train
    assert len(coco["images"]) == 8
    path = root / "train.json"
    path.write_text(json.dumps(coco))
    return path


def max_difference(a: Path, b: Path) -> float:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].is_floating_point())


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path, train_json):
    common = ["--data", str(train_json), "--epochs", "1"]
    launch([*common, "--run-dir", "one", "--out", "one.pt"], 1, tmp_path)
    launch([*common, "--run-dir", "two", "--out", "two.pt"], 2, tmp_path)
    start = build_start(tmp_path, train_json)
    assert max_difference(tmp_path / "one.pt", start) > 1e-3, "training did not move the weights"
    assert max_difference(tmp_path / "one.pt", tmp_path / "two.pt") < ATOL


def test_resume_across_process_counts(tmp_path, train_json):
    """Epoch 1 on two processes, epoch 2 resumed on one == two epochs on one process."""
    data = ["--data", str(train_json)]
    launch([*data, "--epochs", "1", "--run-dir", "run", "--out", "half.pt", "--fingerprint", "f"], 2, tmp_path)
    launch([*data, "--epochs", "2", "--run-dir", "run", "--out", "resumed.pt", "--fingerprint", "f"], 1, tmp_path)
    launch([*data, "--epochs", "2", "--run-dir", "fresh", "--out", "straight.pt", "--fingerprint", "f"], 1,
           tmp_path)
    assert max_difference(tmp_path / "half.pt", tmp_path / "straight.pt") > 1e-3
    assert max_difference(tmp_path / "resumed.pt", tmp_path / "straight.pt") < ATOL


def build_start(tmp_path: Path, train_json: Path) -> Path:
    """The untrained weights the worker starts from (0 epochs)."""
    launch(["--data", str(train_json), "--epochs", "0", "--run-dir", "zero", "--out", "zero.pt"], 1, tmp_path)
    return tmp_path / "zero.pt"


@pytest.mark.parametrize("student_grad", ["fused", "separate"])
def test_gkd_bmfi_distillation_on_two_processes_equals_one(tmp_path, train_json, student_grad):
    """The teacher is frozen on every rank; the GKD maps and imitation terms are per image."""
    common = ["--data", str(train_json), "--epochs", "1", "--kd", "gkd_bmfi", "--student-grad", student_grad]
    launch([*common, "--run-dir", "one", "--out", "one.pt"], 1, tmp_path)
    launch([*common, "--run-dir", "two", "--out", "two.pt"], 2, tmp_path)
    launch(["--data", str(train_json), "--epochs", "1", "--run-dir", "plain", "--out", "plain.pt"], 1, tmp_path)
    assert max_difference(tmp_path / "one.pt", tmp_path / "plain.pt") > 1e-4, "the KD terms changed nothing"
    assert max_difference(tmp_path / "one.pt", tmp_path / "two.pt") < ATOL
