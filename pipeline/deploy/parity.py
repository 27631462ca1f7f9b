"""The parity gate: does the exported graph, run by ONNX Runtime, detect what PyTorch detects?

Both sides run over the val split with identical preprocessing (the curated Dataset), boxes are
mapped to original-image pixels as :func:`pipeline.engine.inference.predict_dataset` does, and
scored with :func:`pipeline.metrics.evaluate_detections`. The gate passes when

* ``|mAP50(onnx) - mAP50(torch)| <= map50_tol`` (percent points), and
* per image, detections match one-to-one (same class, IoU >= ``box_iou``, score within
  ``score_tol``), tie-insensitively: a detection left unmatched only counts against the gate
  when it is not explained by a boundary (its score within ``score_tol`` of the score threshold
  or of the last kept score of a full top-K list); at most ``max_unmatched`` of all detections
  (PyTorch's and ONNX Runtime's together) may be unexplained. A detection that moved beyond the
  tolerances is unmatched on both sides, so it counts twice, against twice the detections.

Val images may all share one integer scale factor (the synthetic set is an exact 2x downscale),
which hides resize differences, so the gate also runs :func:`camera_split`: a few val images
stretched to camera frame sizes (:data:`CAMERA_SIZES`, 1242x375 KITTI, 720p, 1080p), whose scale
factors into the network input are not integers, through both sides: their detections must match
under the same tolerances (their mAP50 over so few images is recorded, not gated).

A failed gate raises :class:`ParityError`; :func:`previous_export_note` adds what became of the
previous export.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pipeline.config import ParityParams
from pipeline.data import transforms as T
from pipeline.data.dataset import CuratedDataset, collate, spread_indices
from pipeline.data.images import read_rgb
from pipeline.errors import UserError
from pipeline.metrics import evaluate_detections
from pipeline.structures import Detections


#: Camera frame sizes ``(w, h)`` the gate stretches val images to: KITTI's, 720p and 1080p.
CAMERA_SIZES = ((1242, 375), (1280, 720), (1920, 1080))
#: Val images per camera size.
CAMERA_IMAGES = 2
CAMERA_SPLIT = "val-camera-sizes"


def camera_split(val: CuratedDataset, folder: Path, sizes: tuple[tuple[int, int], ...] = CAMERA_SIZES,
                 per_size: int = CAMERA_IMAGES) -> CuratedDataset:
    """``per_size`` val images (spread over the split) stretched to each ``(w, h)`` of ``sizes``
    (bilinear, :func:`pipeline.data.transforms.resize_bilinear`) and written as PNG into
    ``folder``, with their boxes scaled per axis (x1,y1,w,h COCO boxes, times ``w / w0`` and
    ``h / h0``): a curated split read and preprocessed exactly as val is."""
    folder = Path(folder)
    coco = val.coco
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images, annotations = [], []
    picks = spread_indices(len(val.images), per_size)
    for w, h in sizes:
        for index in picks:
            record = val.images[index]
            rgb = read_rgb(val.image_root / record["file_name"])
            fx, fy = w / rgb.shape[1], h / rgb.shape[0]
            image_id = len(images)
            name = f"{image_id:04d}_{w}x{h}.png"
            Image.fromarray(T.resize_bilinear(rgb, w, h)).save(folder / name)
            images.append({"id": image_id, "file_name": name, "width": w, "height": h,
                           "source": record["file_name"]})
            for ann in by_image.get(record["id"], []):
                x, y, bw, bh = ann["bbox"]
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": image_id,
                                    "bbox": [x * fx, y * fy, bw * fx, bh * fy], "area": bw * fx * bh * fy})
    split = {"info": {**coco["info"], "image_root": str(folder), "split": CAMERA_SPLIT},
             "categories": coco["categories"], "images": images, "annotations": annotations}
    return CuratedDataset(split, val.input, train=False)


def camera_record(split: CuratedDataset) -> dict[str, Any]:
    """What the manifest says of a :func:`camera_split`: its sizes, image count and each size's
    resized size and per-axis factors into the network input."""
    inp = split.input
    sizes = sorted({(r["width"], r["height"]) for r in split.images})
    factors = []
    for w, h in sizes:
        new_w, new_h = T.resized_size(w, h, inp.width, inp.height)
        factors.append({"in_wh": [w, h], "out_wh": [new_w, new_h], "sx_sy": [new_w / w, new_h / h]})
    return {"split": CAMERA_SPLIT, "images": len(split), "source": "val images stretched to each size (bilinear)",
            "sizes": factors, "gated": "per-detection matching under the same tolerances; mAP50 recorded, not gated "
                                       "(a few images: one detection crossing IoU 0.5 moves it by points)"}


class ParityError(UserError):
    """The exported graph does not detect what PyTorch detects (one line, as every UserError)."""


class Backend(Protocol):
    def run(self, images: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]: ...


def backend_detections(backend: Backend, dataset: CuratedDataset, batch_size: int) -> dict[int, Detections]:
    """Run ``backend`` (``run(images, sizes)`` -> padded outputs) over ``dataset``; detections per
    image id with boxes in original pixels."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)
    out: dict[int, Detections] = {}
    for batch in loader:
        sizes = np.array(batch.image_sizes, dtype=np.float32)
        num, boxes, scores, labels = backend.run(batch.images.numpy(), sizes)
        for i in range(len(batch)):
            k = int(num[i, 0])
            b = torch.from_numpy(np.ascontiguousarray(boxes[i, :k], dtype=np.float32))
            out[batch.image_ids[i]] = Detections(batch.to_original(i, b),
                                                 torch.from_numpy(scores[i, :k].astype(np.float32)),
                                                 torch.from_numpy(labels[i, :k].astype(np.int64)))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, 4]`` x ``[B, 4]`` x1,y1,x2,y2 -> ``[A, B]`` IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_image(ref: Detections, got: Detections, tol: ParityParams, score_thr: float,
                max_det: int) -> tuple[int, int]:
    """Match one image's detections; returns ``(matched, unexplained unmatched)``."""
    rb, rs, rl = ref.boxes.numpy(), ref.scores.numpy(), ref.labels.numpy()
    gb, gs, gl = got.boxes.numpy(), got.scores.numpy(), got.labels.numpy()
    iou = _iou(rb, gb) if len(rb) and len(gb) else np.zeros((len(rb), len(gb)))
    ok = (rl[:, None] == gl[None, :]) & (iou >= tol.box_iou) & (np.abs(rs[:, None] - gs[None, :]) <= tol.score_tol)
    used = np.zeros(len(gb), dtype=bool)
    ref_matched = np.zeros(len(rb), dtype=bool)
    for r in np.argsort(-rs, kind="stable"):
        cand = np.where(ok[r] & ~used)[0]
        if cand.size:
            g = cand[np.argmax(iou[r, cand])]
            used[g] = ref_matched[r] = True

    def unexplained(scores: np.ndarray, matched: np.ndarray, other: np.ndarray) -> int:
        floor = other.min() if len(other) >= max_det else -np.inf
        loose = scores[~matched]
        return int(np.sum((np.abs(loose - score_thr) > tol.score_tol) & (loose > floor + tol.score_tol)))

    bad = unexplained(rs, ref_matched, gs) + unexplained(gs, used, rs)
    return int(ref_matched.sum()), bad


def parity_report(coco: dict, ref: dict[int, Detections], got: dict[int, Detections], tol: ParityParams,
                  score_thr: float, max_det: int) -> dict[str, Any]:
    """mAP50 of both sides and the per-image matching summary (plain floats and ints)."""
    ref_m, got_m = evaluate_detections(coco, ref), evaluate_detections(coco, got)
    matched = unexplained = ref_total = got_total = 0
    images_with_mismatch = 0
    for image_id in sorted(set(ref) | set(got)):
        r = ref.get(image_id, Detections.empty())
        g = got.get(image_id, Detections.empty())
        m, bad = match_image(r, g, tol, score_thr, max_det)   # ``bad`` counts both sides' detections
        matched += m
        unexplained += bad
        ref_total += len(r)
        got_total += len(g)
        images_with_mismatch += int(bad > 0)
    total = ref_total + got_total
    return {
        "mAP50_pytorch": ref_m["mAP50"], "mAP50_onnx": got_m["mAP50"],
        "mAP50_abs_diff": abs(ref_m["mAP50"] - got_m["mAP50"]),
        "detections": total, "detections_pytorch": ref_total, "detections_onnx": got_total,
        "matched": matched, "unexplained_unmatched": unexplained,
        "unexplained_fraction": unexplained / max(total, 1), "images_with_mismatch": images_with_mismatch,
        "tolerance": tol.model_dump(),
    }


def check_parity(report: dict[str, Any], tol: ParityParams, where: str, section: str = "deploy.parity",
                 map50: bool = True) -> None:
    """Raise :class:`ParityError` (one line naming what failed) when the report misses a tolerance
    of ``tol`` (params ``section``: ``deploy.parity`` or ``qat.parity``, the same record from params
    to here); ``map50=False`` checks the per-detection matching only (a split of a few images,
    where one detection crossing IoU 0.5 with a ground truth moves mAP50 by whole points)."""
    verdict = (f"the export is wrong, or {section} is tighter than the two runtimes' rounding allows; "
               "no artifact was written")
    if map50 and report["mAP50_abs_diff"] > tol.map50_tol:
        raise ParityError(f"{where}: parity gate failed: ONNX mAP50 {report['mAP50_onnx']:.2f} vs PyTorch "
                          f"{report['mAP50_pytorch']:.2f} (allowed difference {tol.map50_tol}); {verdict}")
    if report["unexplained_fraction"] > tol.max_unmatched:
        raise ParityError(f"{where}: parity gate failed: {report['unexplained_unmatched']} of {report['detections']} "
                          f"detections differ (PyTorch's and ONNX Runtime's together: no counterpart of the same class "
                          f"with IoU >= {tol.box_iou} and score within {tol.score_tol} on the other side, and no score "
                          f"threshold or top-K boundary to explain it) on {report['images_with_mismatch']} images: "
                          f"{report['unexplained_fraction']:.2%}, more than {section}.max_unmatched = "
                          f"{tol.max_unmatched}; {verdict}")


@contextmanager
def previous_export_note(folder: Path) -> Iterator[None]:
    """Run an export of ``folder``; a :class:`ParityError` gets what became of the previous export
    appended (the atomic writer keeps it, but `dvc repro` deletes a stage's outputs before it runs)."""
    try:
        yield
    except ParityError as err:
        raise ParityError(f"{err}; a direct run leaves the previous {folder} as it was, while `dvc repro` "
                          f"deleted it before the stage ran: `dvc checkout {folder}` brings back the one dvc.lock "
                          "records") from None
