"""Is a dataset's raw folder there? One line saying what to download and where, before DVC's own
``[Errno 2] No such file or directory`` (stage ``check_raw@<dataset>``, which ``curate`` waits for).

DVC checks a stage's dependencies only when it reaches that stage, so a stage that runs earlier
and fails with a sentence is what a user reads first. The check runs again until it passes; after
that DVC keeps its record, and a raw folder removed later meets DVC's own error at ``curate``.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import UserError

#: Datasets whose raw folder a pipeline stage writes: nothing to check before that stage.
GENERATED = {"synthetic": "the synthesize stage"}

#: Where the well-known datasets come from, and what data/raw/<name> must then hold.
DOWNLOADS = {
    "kitti": ("download the KITTI 2D object 'left color images' (data_object_image_2.zip, 12 GB) and "
              "'training labels' (data_object_label_2.zip) from "
              "https://www.cvlibs.net/datasets/kitti/eval_object.php?obj_benchmark=2d (free registration), unzip "
              "both into one folder and link its training/ folder there: "
              "ln -s /path/to/kitti/training data/raw/kitti (so that data/raw/kitti/image_2 exists)"),
    "coco_traffic": ("download train2017.zip, val2017.zip and annotations_trainval2017.zip from "
                     "https://cocodataset.org/#download, unzip them into one folder and link it there: "
                     "ln -s /path/to/coco2017 data/raw/coco_traffic (so that data/raw/coco_traffic/annotations "
                     "exists)"),
}

#: What a folder of each source format holds, for datasets not in :data:`DOWNLOADS`.
LAYOUTS = {
    "kitti": "a KITTI-format folder holding image_2/ (images) and label_2/ (KITTI label files)",
    "coco": "a COCO-format folder holding the annotation files and image folders named in sources.<name>",
}


def raw_problem(raw: Path, name: str, source_format: str) -> str | None:
    """One line naming what is wrong with ``raw`` (the raw folder of dataset ``name``) and the fix,
    or ``None`` when it is a folder (or when a stage writes it, :data:`GENERATED`)."""
    if name in GENERATED or raw.is_dir():
        return None
    if raw.is_symlink():
        where = f"{raw} is a link to {os.readlink(raw)}, which is not a folder"
    elif raw.exists():
        where = f"{raw} is a file, not a folder"
    else:
        where = f"{raw} is missing"
    fix = DOWNLOADS.get(name) or f"put (or symlink) {LAYOUTS.get(source_format, 'the dataset')} there"
    return f"{where}: {fix} (README 'Pointing it at real data'), or drop {name!r} from params.yaml's datasets"


def check_raw(raw: Path, name: str, source_format: str) -> None:
    """Raise :class:`UserError` with :func:`raw_problem`'s line when there is one."""
    problem = raw_problem(raw, name, source_format)
    if problem:
        raise UserError(problem)
