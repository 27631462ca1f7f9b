"""scripts/venv: every dvc.yaml stage runs with the project's interpreter, whatever the caller's PATH."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

LAUNCHER = REPO / "scripts" / "venv"
PLAIN = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def run(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAUNCHER), *args], cwd=cwd, env=env or PLAIN, capture_output=True, text=True)


def test_finds_the_venv_in_the_working_directory_or_above(tmp_path):
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    below = tmp_path / ".dvc" / "tmp" / "exps" / "run1"        # where `dvc exp run` puts a workspace
    below.mkdir(parents=True)
    for cwd in (tmp_path, below):
        done = run(cwd, "python", "-c", "import sys, pipeline; print(sys.prefix)")
        assert done.returncode == 0, done.stderr
        assert Path(done.stdout.strip()).resolve() == Path(sys.prefix).resolve()


def test_an_explicit_environment_wins_and_a_wrong_one_is_one_line(tmp_path):
    done = run(tmp_path, "python", "-c", "import pipeline", env={**PLAIN, "GKD_BMFI_VENV": sys.prefix})
    assert done.returncode == 0, done.stderr
    wrong = run(tmp_path, "python", "-c", "0", env={**PLAIN, "GKD_BMFI_VENV": str(tmp_path)})
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "GKD_BMFI_VENV" in wrong.stderr


def test_no_environment_at_all_ends_in_one_line_with_the_fix(tmp_path):
    done = run(tmp_path, "python", "-c", "0", env={"PATH": str(tmp_path), "HOME": "/nonexistent"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "scripts/setup" in done.stderr


def test_every_stage_command_starts_with_the_launcher():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {name for name, stage in stages.items() if not stage["cmd"].startswith("scripts/venv ")} == set()
