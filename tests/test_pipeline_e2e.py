"""End to end: `dvc repro` on a tiny profile in a fresh copy of the repository."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from pipeline.deploy.runtime import DeployedDetector
from pipeline.replicas import merge

pytestmark = pytest.mark.slow

#: What `env -i` leaves a newcomer's shell: no virtualenv, no pyenv shims first.
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"

TINY = {
    "synthetic": {"num_images": 10, "width": 320, "height": 96, "seed": 1},
    "input": {"width": 160, "height": 48},
    "model": {"train": ["teacher-resnet18", "baseline-resnet18"]},
    "train": {"epochs": 1, "batch_size": 4, "warmup_iters": 2, "lr_steps": [], "num_workers": 0},
    "curate": {"preview_images": 2},
    "distill": {"teacher": "teacher-resnet18", "students": ["resnet18"], "methods": ["inherit_only", "gkd_bmfi"],
                "gradmap_images": 1, "extra_seeds": [1]},
    "deploy": {"models": ["baseline-resnet18", "gkd_bmfi-resnet18"], "precisions": ["fp32", "int8"],
               "calib_images": 2},
    "qat": {"models": ["gkd_bmfi-resnet18"], "methods": ["none", "gkd_bmfi"], "epochs": 1},
    "benchmark": {"warmup_iters": 1, "iters": 3, "throughput_batch": 2, "throughput_iters": 1},
}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and (REPO / line).is_file()]


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """A fresh copy of the repo with the tiny profile, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("clone")
    for name in tracked_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(params, TINY), sort_keys=False))
    # README command 1 in a newcomer's shell: `.venv/bin/dvc repro` with no virtualenv active and a
    # plain system PATH; .venv is this test's environment, where scripts/setup would have made it
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    # PYTHONPATH: the stages import the copy's own code, as a clone's editable install would
    env = {"HOME": os.environ.get("HOME", str(root)), "PATH": PLAIN_PATH, "OMP_NUM_THREADS": "2",
           "LANG": "C.UTF-8", "PYTHONPATH": str(root)}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for key, value in (("user.name", "e2e test"), ("user.email", "e2e@example.invalid")):
        subprocess.run(["git", "config", key, value], cwd=root, check=True)   # this repository only
    result = subprocess.run([str(root / ".venv" / "bin" / "dvc"), "repro"], cwd=root, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, env


def test_dvc_repro_curates_trains_and_evaluates(repro):
    root, _ = repro
    curated = root / "data" / "curated" / "synthetic"
    assert {p.name for p in curated.iterdir()} >= {"train.json", "val.json", "split.json", "preview.png"}
    for model in ("teacher-resnet18", "baseline-resnet18"):
        assert (root / "models" / "synthetic" / "gfl" / f"{model}.pt").is_file()
        metrics = json.loads((root / "metrics" / "synthetic" / "gfl" / f"{model}.json").read_text())
        assert 0.0 <= metrics["mAP50"] <= 100.0 and 0.0 <= metrics["voc_mAP50"] <= 100.0
        assert metrics["params_M"] == pytest.approx(19.243404)
        assert set(metrics["per_class"]) == {"Car", "Pedestrian", "Cyclist"}
        assert "kitti" in metrics
    distilled = json.loads((root / "metrics" / "synthetic" / "gfl" / "gkd_bmfi-resnet18.json").read_text())
    assert 0.0 <= distilled["mAP50"] <= 100.0
    balance = distilled["kd_balance"]                      # distill.balance: auto_terms, recorded end to end
    assert balance["mode"] == "auto_terms" and set(balance["group_ratios"]) == {"gkd", "bmfi"}
    for group, target in balance["target_group_ratios"].items():
        assert balance["group_ratios"][group] == pytest.approx(target, rel=0.05)
    drift = json.loads((root / "logs" / "kd_balance" / "synthetic" / "gfl" / "gkd_bmfi-resnet18.json").read_text())
    assert [row["epoch"] for row in drift] == [0, 1] and all(row["kd_task_grad_ratio"] > 0 for row in drift)
    table = (root / "reports" / "tables" / "distill_synthetic_gfl.md").read_text()
    assert "| inherit_only | R18 |" in table and "vs inherit-only" in table and "auto_terms gkd x" in table
    rows = json.loads((root / "reports" / "tables" / "distill_synthetic_gfl.json").read_text())["rows"]
    gkd = next(r for r in rows if r["model"] == "gkd_bmfi-resnet18")
    assert gkd["ci_vs_control"] is not None and gkd["ci_vs_baseline"]["low"] <= gkd["ci_vs_baseline"]["high"]
    # the seed-1 replica (stage replica) trained the baseline and both methods again: two seeds per row
    replica = root / "metrics" / "synthetic" / "gfl" / "seed1" / "resnet18"
    assert sorted(p.name for p in replica.iterdir()) == ["baseline-resnet18.json", "gkd_bmfi-resnet18.json",
                                                          "inherit_only-resnet18.json"]
    assert all(r["seeds"] == 2 and r["mAP50_std"] is not None for r in rows if r["role"] != "teacher")
    seed1 = json.loads((replica / "gkd_bmfi-resnet18.json").read_text())["mAP50"]
    assert gkd["mAP50_mean"] == pytest.approx((distilled["mAP50"] + seed1) / 2, abs=1e-6)
    assert "2 seeds" in table
    manifest = json.loads((root / "exports" / "synthetic" / "gfl" / "gkd_bmfi-resnet18" / "manifest.json").read_text())
    assert manifest["parity"]["mAP50_onnx"] == pytest.approx(manifest["parity"]["mAP50_pytorch"], abs=0.1)
    bench = json.loads((root / "metrics" / "benchmark" / "synthetic" / "gfl" / "gkd_bmfi-resnet18.json").read_text())
    assert "onnxruntime-cpu-fp32" in bench["backends"]
    summary = (root / "reports" / "summary.md").read_text()
    assert "| gkd_bmfi-resnet18 |" in summary and "### Distillation" in summary


def test_dvc_repro_quantization_aware_training(repro):
    root, _ = repro
    for method in ("none", "gkd_bmfi"):
        folder = root / "exports" / "synthetic" / "gfl" / "qat" / method / "gkd_bmfi-resnet18"
        manifest = json.loads((folder / "manifest.json").read_text())
        entry = manifest["artifacts"]["model-int8.onnx"]
        assert entry["tensorrt_readiness"]["ready"] and entry["recipe"]["tool"].startswith("pipeline.quant")
        assert manifest["model"]["qat_method"] == method and manifest["model"]["parent"] == "gkd_bmfi-resnet18"
        assert manifest["parity"]["tolerance"]["box_iou"] == 0.9           # qat.parity, not deploy.parity
        detector = DeployedDetector(folder)                                   # the folder's only file: int8
        assert detector.precision == "int8" and detector.detect(np.zeros((96, 320, 3), np.uint8)) is not None
    meta = json.loads((root / "metrics" / "synthetic" / "gfl" / "qat" / "gkd_bmfi" / "gkd_bmfi-resnet18.json")
                      .read_text())
    assert meta["kd_balance"]["mode"] == "auto_terms" and meta["tensorrt_ready"]
    rows = json.loads((root / "reports" / "tables" / "qat_synthetic_gfl.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["fp32", "int8 PTQ", "int8 QAT", "int8 QAT+gkd_bmfi"]
    assert all("vs_ptq" in r and r["p50_ms"] > 0 for r in rows[2:]) and "vs_fp32" in rows[1]
    assert "### Quantization-aware training (int8)" in (root / "reports" / "summary.md").read_text()
    # the QAT exports are benchmarked and ranked with every other exported variant
    ship = json.loads((root / "reports" / "ship.json").read_text())["datasets"]["synthetic"]
    keys = {c["key"] for c in ship["candidates"]}
    assert {"gfl/gkd_bmfi-resnet18/QAT/onnxruntime-cpu-int8", "gfl/gkd_bmfi-resnet18/QAT+gkd_bmfi/onnxruntime-cpu-int8",
            "gfl/baseline-resnet18/none/pytorch-cpu-fp32", "gfl/gkd_bmfi-resnet18/PTQ/onnxruntime-cpu-int8"} <= keys
    assert len(ship["choices"]) == 3 and (root / "plots" / "benchmark" / "synthetic_gfl.png").is_file()
    assert (root / "reports" / "summary.md").read_text().startswith("# Summary") and \
        "## What to ship" in (root / "reports" / "summary.md").read_text()


def test_second_repro_is_up_to_date_and_metrics_are_listed(repro):
    root, env = repro
    dvc = str(root / ".venv" / "bin" / "dvc")
    status = subprocess.run([dvc, "status"], cwd=root, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    shown = subprocess.run([dvc, "metrics", "show", "--json"], cwd=root, env=env, capture_output=True, text=True)
    assert "baseline-resnet18.json" in shown.stdout and "mAP50" in shown.stdout
    # the table a person reads: headline figures only (scores/), one row per model and per variant
    table = subprocess.run([dvc, "metrics", "show"], cwd=root, env=env, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(map(len, lines)) <= 200, table.stdout
    header = lines[0].split()
    assert header[0] == "Path" and {"mAP50", "AP50.Car", "kitti_moderate", "p50_ms", "p90_ms"} <= set(header), header
    assert all(line.startswith("scores/") for line in lines[1:] if line.strip()), table.stdout
    assert any("latency/qat/gkd_bmfi/gkd_bmfi-resnet18/onnxruntime-cpu-int8.json" in line for line in lines)


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` ran, from its "Running stage '<name>':" lines."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_experiments_and_clones_restore_from_the_cache(repro, tmp_path):
    """After `dvc repro` and a commit of dvc.lock, a benchmark setting in a temporary-workspace
    experiment reruns only the stages that time and what reads them (no training: its outputs come
    from DVC's cache, the checkpoints are not needed), and a git clone sharing the cache is up to date."""
    root, env = repro
    dvc = str(root / ".venv" / "bin" / "dvc")
    git = ["git", "-C", str(root)]
    subprocess.run([*git, "add", "-A", "--", ".", ":!.venv"], check=True)
    subprocess.run([*git, "commit", "-qm", "tiny profile after dvc repro"], check=True)
    ran = subprocess.run([dvc, "exp", "run", "--temp", "-S", "benchmark.iters=4"], cwd=root, env=env,
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    names = stages_run(ran.stdout + ran.stderr)
    timing = {n for n in names if n.split("@")[0] in {"benchmark", "benchmark_qat"}}
    assert len(timing) == 4, names               # 2 exports and 2 QAT exports
    readers = {"benchmark", "benchmark_qat", "qat_tables", "ship", "benchmark_plot", "report"}
    assert all(n.split("@")[0] in readers for n in names), sorted(names)
    # a clone: git plus the first repository's DVC cache, no checkpoints/ and no dvclive/ of its own
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    (clone / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    cache = subprocess.run([dvc, "cache", "dir"], cwd=root, env=env, capture_output=True, text=True, check=True)
    for args in (["cache", "dir", "--local", cache.stdout.strip()], ["config", "--local", "cache.type", "hardlink,copy"],
                 ["checkout", "--quiet"]):
        done = subprocess.run([dvc, *args], cwd=clone, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (clone / "checkpoints").exists()
    status = subprocess.run([dvc, "status", "--json"], cwd=clone, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout[-3000:]


def stale_stages(root: Path, env: dict, edit) -> set[str]:
    """Names of the stages `dvc status` reports after ``edit(params)`` is applied to params.yaml
    (restored afterwards)."""
    path = root / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = subprocess.run([str(root / ".venv" / "bin" / "dvc"), "status", "--json"], cwd=root, env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return set(json.loads(out.stdout or "{}"))
    finally:
        path.write_text(original)


def test_edits_rerun_only_the_stages_they_change(repro):
    root, env = repro
    # a new model in deploy.models adds its own export and benchmark; every existing stage stays put
    added = stale_stages(root, env, lambda p: p["deploy"]["models"].append("inherit_only-resnet18"))
    assert added == {"export@synthetic-gfl-inherit_only-resnet18", "benchmark@synthetic-gfl-inherit_only-resnet18"}
    # benchmark.iters touches the stages that time: the benchmarks (QAT exports' too) and the QAT table
    iters = stale_stages(root, env, lambda p: p["benchmark"].update(iters=4))
    assert iters == {"benchmark@synthetic-gfl-baseline-resnet18", "benchmark@synthetic-gfl-gkd_bmfi-resnet18",
                     "benchmark_qat@synthetic-gfl-gkd_bmfi-resnet18-none",
                     "benchmark_qat@synthetic-gfl-gkd_bmfi-resnet18-gkd_bmfi", "qat_tables@synthetic-gfl"}
    # a latency budget changes the choice only
    assert stale_stages(root, env, lambda p: p["deploy"].update(budgets_ms=[1000])) == {"ship"}
    # qat.lr retrains the QAT students only
    lr = stale_stages(root, env, lambda p: p["qat"].update(lr=0.002))
    assert lr == {"qat@synthetic-gfl-gkd_bmfi-resnet18-none", "qat@synthetic-gfl-gkd_bmfi-resnet18-gkd_bmfi"}
    # the worker count does not change the trained weights: nothing reruns
    assert stale_stages(root, env, lambda p: p["train"].update(num_workers=2)) == set()
    # flips are training-only: training stages rerun, evaluation-only stages do not depend on them
    flips = stale_stages(root, env, lambda p: p["input"].update(flip_prob=0.3))
    assert flips and all(name.split("@")[0] in {"train", "distill", "replica", "qat"} for name in flips), flips


def test_settings_of_another_method_or_detector_leave_the_stages_up_to_date(repro):
    root, env = repro
    fgd = stale_stages(root, env, lambda p: p["distill"].update(baselines={"fgd": {"gfl": {"alpha": 0.002}}}))
    settings = {"kd_settings", "qat_kd_settings"}
    assert fgd and all(name.split("@")[0] in settings for name in fgd), fgd
    # the default trains GFL only: Faster R-CNN's GKD weights leave every stage up to date, the
    # settings stages included (each reads its own detector's weights only)
    rcnn = stale_stages(root, env, lambda p: p["distill"]["gkd"].update(
        faster_rcnn={"gkd_weight": 0.2, "beta": 1e-4, "alpha": 1.0}))
    assert rcnn == set(), rcnn
    # and GFL's own weights reach its settings stages, which then rerun (nothing else yet)
    gfl = stale_stages(root, env, lambda p: p["distill"]["gkd"].update(
        gfl={"gkd_weight": 0.2, "beta": 1e-3, "alpha": 0.5}))
    assert gfl and all(name.split("@")[0] in settings for name in gfl), gfl
    # and after the settings stages run, every distill stage is still up to date
    params = root / "params.yaml"
    original = params.read_text()
    edited = yaml.safe_load(original)
    edited["distill"]["baselines"] = {"fgd": {"gfl": {"alpha": 0.002}}}
    params.write_text(yaml.safe_dump(edited, sort_keys=False))
    dvc = str(root / ".venv" / "bin" / "dvc")
    try:
        ran = subprocess.run([dvc, "repro"], cwd=root, env=env, capture_output=True, text=True)
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
        assert "stages/distill.py" not in ran.stdout and "stages/train.py" not in ran.stdout, ran.stdout
    finally:
        params.write_text(original)
        subprocess.run([dvc, "repro"], cwd=root, env=env, capture_output=True, text=True)


def test_a_new_synthetic_dataset_retrains_the_models(repro):
    """Last in this module: it changes the workspace. Before the resume key held the data's content,
    a finished checkpoint of the old data was "resumed" and the models came back unchanged."""
    root, env = repro
    models = {name: root / "models" / "synthetic" / "gfl" / f"{name}.pt"
              for name in ("teacher-resnet18", "baseline-resnet18", "inherit_only-resnet18")}
    before = {name: path.read_bytes() for name, path in models.items()}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["synthetic"]["seed"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    targets = ["train@synthetic-gfl-teacher-resnet18", "train@synthetic-gfl-baseline-resnet18",
               "distill@synthetic-gfl-resnet18-inherit_only"]
    ran = subprocess.run([str(root / ".venv" / "bin" / "dvc"), "repro", *targets], cwd=root, env=env,
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    changed = [name for name, path in models.items() if path.read_bytes() != before[name]]
    assert changed == list(models), f"not retrained: {sorted(set(models) - set(changed))}"
