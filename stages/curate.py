"""DVC stage `curate@<dataset>`: data/raw/<dataset> -> data/curated/<dataset>/.

Writes train.json, val.json, split.json and preview.png all at once (a temporary folder
renamed into place), so a failure leaves no partial curated dataset.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.artifacts import CURATED_ROOT, RAW_ROOT
from pipeline.config import load_params
from pipeline.data.curate import curate
from pipeline.data.preview import preview_grid
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_dir


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw-root", type=Path, default=RAW_ROOT)
    parser.add_argument("--out-root", type=Path, default=CURATED_ROOT)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    source = params.source(args.dataset)
    cur = params.curate
    curated = curate(args.raw_root / args.dataset, args.dataset, source,
                     cur.val_fraction, cur.seed, cur.min_box_size)
    with atomic_dir(args.out_root / args.dataset) as tmp:
        for name, data in (("train", curated.train), ("val", curated.val), ("split", curated.split)):
            (tmp / f"{name}.json").write_text(json.dumps(data) + "\n")
        preview_grid(curated.train, cur.preview_images).save(tmp / "preview.png")
    n_obj = sum(1 for a in curated.train["annotations"] if not a["iscrowd"])
    print(f"curated {args.dataset}: {len(curated.train['images'])} train / {len(curated.val['images'])} val images, "
          f"{n_obj} train objects -> {args.out_root / args.dataset}")
    clipped = curated.split.get("boxes_clipped_to_image", 0)
    if clipped:
        print(f"note: {clipped} boxes reached outside their image and were clipped to it; "
              f"{curated.split['boxes_outside_image_dropped']} of them lay entirely outside and were dropped "
              "(counts in split.json)")


if __name__ == "__main__":
    main()
