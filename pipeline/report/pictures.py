"""Pictures of what an evaluated model detects (written by the evaluate stage, shown by
``dvc plots show`` and reports/summary.md):

* ``predictions.png``: a fixed set of val images (the first ``count`` by image id) with the
  ground truth in white and the detections scoring at least ``score_thr`` in their class colour,
  captioned with class and score;
* ``pr_curves.png``: per-class precision against recall at IoU 0.5, AP50 in the legend;
* ``confusion.png``: :func:`pipeline.metrics.diagnostics.confusion_matrix`, background row and column.

Each names the model it shows (``<dataset>/<detector>/<model>``) in its title, so a picture
seen alone in ``dvc plots show`` says whose it is.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.data.images import read_rgb
from pipeline.draw import TRUTH_COLOUR, class_colour, draw_boxes, tile_grid
from pipeline.metrics.diagnostics import confusion_matrix, pr_curves

FILES = ("predictions.png", "pr_curves.png", "confusion.png")


TITLE_HEIGHT = 26


def titled(picture: Image.Image, title: str) -> Image.Image:
    """``picture`` under a band holding ``title`` (white on dark, 16 px text)."""
    out = Image.new("RGB", (picture.width, picture.height + TITLE_HEIGHT), (20, 20, 20))
    out.paste(picture, (0, TITLE_HEIGHT))
    ImageDraw.Draw(out).text((6, 4), title, fill=(255, 255, 255), font=ImageFont.load_default(size=16))
    return out


def predictions_picture(coco: Mapping[str, Any], detections: Mapping[int, Any], count: int,
                        score_thr: float, title: str = "") -> Image.Image:
    """Ground truth (white, ignore regions left out) and detections >= ``score_thr`` (class colours)
    on the first ``count`` images of ``coco`` by id, under a band naming ``title`` (the model)
    when given."""
    class_names = [c["name"] for c in coco["categories"]]
    truth: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            truth.setdefault(ann["image_id"], []).append(ann)
    root = Path(coco["info"]["image_root"])
    tiles = []
    for record in sorted(coco["images"], key=lambda r: r["id"])[:count]:
        tile = Image.fromarray(read_rgb(root / record["file_name"]))
        det = detections.get(record["id"])
        if det is not None and len(det.scores):
            keep = np.flatnonzero(det.scores.numpy() >= score_thr)
            labels = det.labels.numpy()[keep]
            draw_boxes(tile, det.boxes.numpy()[keep],
                       [f"{class_names[k]} {s:.2f}" for k, s in zip(labels, det.scores.numpy()[keep])],
                       [class_colour(k) for k in labels])
        anns = truth.get(record["id"], [])    # drawn last, 1 px: visible inside a detection's 2 px edge
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        draw_boxes(tile, boxes, [""] * len(anns), [TRUTH_COLOUR] * len(anns), width=1)
        tiles.append(tile)
    grid = tile_grid(tiles)
    if not title:
        return grid
    return titled(grid, f"{title}: detections with score >= {score_thr:g} (class colours), ground truth white")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heading(title: str, what: str) -> str:
    return f"{title}\n{what}" if title else what


def save_pr_curves(coco: Mapping[str, Any], detections: Mapping[int, Any], path: Path,
                   per_class_ap50: Mapping[str, float], title: str = "") -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for index, curve in enumerate(pr_curves(coco, detections)):
        colour = np.array(class_colour(index)) / 255.0
        ap = per_class_ap50.get(curve.name)
        label = f"{curve.name} (AP50 {ap:.1f}, {curve.num_gt} gt)" if ap is not None else curve.name
        ax.step(np.concatenate([[0.0], curve.recall]), np.concatenate([[1.0], curve.precision]), where="post",
                color=colour, label=label)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=_heading(title, "Precision-recall at IoU 0.5"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_confusion(coco: Mapping[str, Any], detections: Mapping[int, Any], path: Path, score_thr: float,
                   title: str = "") -> None:
    plt = _figure()
    matrix, names = confusion_matrix(coco, detections, score_thr)
    size = 1.0 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(max(size + 1.5, 5.5), max(size, 4.2)))   # room for the titles and labels
    shown = matrix.astype(float) / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlabel="predicted (background: missed)", ylabel="true (background: false detection)",
           title=_heading(title, f"Confusion at IoU 0.5, score >= {score_thr:g}"))
    ax.title.set_fontsize(10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_pictures(folder: Path, coco: Mapping[str, Any], detections: Mapping[int, Any], metrics: Mapping[str, Any],
                   count: int, score_thr: float, title: str = "") -> None:
    """The three pictures of one evaluated model into ``folder`` (:data:`FILES`), each titled
    ``title`` (the model, e.g. ``synthetic/gfl/gkd_bmfi-resnet18``)."""
    folder = Path(folder)
    predictions_picture(coco, detections, count, score_thr, title).save(folder / FILES[0])
    per_class = {name: row["AP50"] for name, row in metrics.get("per_class", {}).items()}
    save_pr_curves(coco, detections, folder / FILES[1], per_class, title)
    save_confusion(coco, detections, folder / FILES[2], score_thr, title)
