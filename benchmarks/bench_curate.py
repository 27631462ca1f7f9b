"""Curation throughput: synthetic KITTI-format images curated per second.

    .venv/bin/python benchmarks/bench_curate.py [--images 500]

Generates the images once (not timed), then times `curate_kitti` (reading labels and
image headers, grouping, splitting) and the json writing, best of three.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pipeline.data.curate import curate_kitti
from pipeline.data.synthetic import write_synthetic_kitti


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=192)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"
        start = time.perf_counter()
        write_synthetic_kitti(root, args.images, args.width, args.height, seed=0)
        generate = time.perf_counter() - start
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            curated = curate_kitti(root, "synthetic", 0.2, 0, 1.0)
            for split in (curated.train, curated.val):
                (Path(tmp) / "out.json").write_text(json.dumps(split))
            best = min(best, time.perf_counter() - start)
    objects = sum(1 for a in curated.train["annotations"] + curated.val["annotations"] if not a["iscrowd"])
    print(f"synthetic generation: {args.images} images {args.width}x{args.height} in {generate:.2f} s "
          f"({args.images / generate:.1f} images/s)")
    print(f"curation: {args.images} images, {objects} objects in {best:.3f} s (best of 3) "
          f"= {args.images / best:.0f} images/s")


if __name__ == "__main__":
    main()
