"""Two DVC experiments from DVC's queue, run in parallel on the tiny profile, then compared.

    .venv/bin/python benchmarks/queue_sweep.py [--jobs 2] [--keep]

What it does, in a fresh clone of this repository's HEAD (a queued experiment starts from a
commit, so uncommitted changes are not part of it):

1. commits the tiny profile (tests/test_pipeline_e2e.py's) as params.yaml;
2. queues two experiments that differ in one parameter, as the README's sweep does:
   ``dvc exp run --queue -S train.lr=0.005`` and ``-S train.lr=0.02``;
3. ``dvc queue start -j JOBS`` and waits for the queue to drain;
4. prints ``dvc exp show`` and the wall time.

Why this is a script and not a CI test: each queued experiment runs the *whole* pipeline in its
own workspace copy (synthesize, curate, train, evaluate, distill, export, benchmark); two of them
take minutes on a 2-core CPU on top of the end-to-end test, beyond the test suite's budget.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_pipeline_e2e import TINY, merge  # noqa: E402  (the one tiny profile)


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the clone and print its path")
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    dvc = str(bin_dir / "dvc")
    root = Path(tempfile.mkdtemp(prefix="queue-sweep-"))
    try:
        run(["git", "clone", "-q", str(REPO), str(root / "repo")], REPO, env)
        repo = root / "repo"
        params = yaml.safe_load((repo / "params.yaml").read_text())
        (repo / "params.yaml").write_text(yaml.safe_dump(merge(params, TINY), sort_keys=False))
        run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "tiny profile"],
            repo, env)
        for lr in ("0.005", "0.02"):
            run([dvc, "exp", "run", "--queue", "-S", f"train.lr={lr}"], repo, env)
        start = time.perf_counter()
        run([dvc, "queue", "start", "-j", str(args.jobs)], repo, env)
        while True:
            status = run([dvc, "queue", "status"], repo, env)
            if not any(word in status for word in ("Queued", "Running")):
                break
            time.sleep(5)
        elapsed = time.perf_counter() - start
        print(status)
        if "Failed" in status:
            print(run([dvc, "queue", "logs", status.split()[-1]], repo, env)[-3000:])
        print(run([dvc, "exp", "show", "--md", "--only-changed"], repo, env))
        print(f"two queued experiments, {args.jobs} at a time: {elapsed:.0f} s wall")
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
