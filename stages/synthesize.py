"""DVC stage `synthesize`: write the built-in synthetic KITTI-format road scenes.

Output: data/raw/synthetic/{image_2,label_2}/ (the KITTI `training/` layout), written to a
temporary folder and renamed into place.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.artifacts import raw_dir
from pipeline.config import load_params
from pipeline.data.synthetic import write_synthetic_kitti
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_dir


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=raw_dir("synthetic"))
    args = parser.parse_args(argv)

    cfg = load_params(args.params).synthetic
    with atomic_dir(args.out) as tmp:
        write_synthetic_kitti(tmp, cfg.num_images, cfg.width, cfg.height, cfg.seed)
    print(f"synthesized {cfg.num_images} images of {cfg.width}x{cfg.height} -> {args.out}")


if __name__ == "__main__":
    main()
