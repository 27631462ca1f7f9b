"""Run an exported detector with nothing but its folder: numpy, onnxruntime and OpenCV, no `pipeline`.

    python examples/consume_export.py exports/kitti/gfl/gkd_bmfi-resnet18 frame.png [more.png ...] \
        [--model model-int8.onnx] [--score 0.3] [--out drawn/] [--json detections.json]

Everything comes from the export folder's manifest.json:
  preprocessing  keep-ratio resize into resize_wh with out = floor(x * scale + 0.5),
                 scale = min(resize_w / w, resize_h / h) (halves round up), bilinear at half-pixel
                 centres as its `interpolation` states (numpy below, bit-exact; cv2.INTER_LINEAR
                 is within one grey level), RGB, (x - mean) / std, zero padding at the bottom and
                 right to pad_hw; the graph takes images [N, 3, H, W] and image_sizes [N, 2] (h, w
                 of the resized image before padding)
  conventions    outputs num_dets, boxes (x1, y1, x2, y2 in network-input pixels), scores, labels;
                 boxes map back as x / sx, y / sy with sx = resized_w / orig_w, sy = resized_h /
                 orig_h, clipped to the image; labels index class_names_by_index
Before running, the script checks itself against the manifest's worked examples (resize_examples,
boxes_to_original_example), so a manifest it misreads stops it instead of giving wrong boxes.

Prints one line per image (class, score, box in the image's own pixels), draws the boxes into
--out and writes --json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort


def resized_size(w: int, h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The manifest's resize rule: floor(x * scale + 0.5), at least 1."""
    scale = min(box_w / w, box_h / h)
    return max(1, math.floor(w * scale + 0.5)), max(1, math.floor(h * scale + 0.5))


def bilinear(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """preprocessing.interpolation in numpy: src = (dst + 0.5) * in / out - 0.5 clamped to
    [0, in - 1], no antialiasing, rows then columns in float32, rounded half up to uint8. (OpenCV's
    cv2.INTER_LINEAR samples the same points with fixed-point weights: within one grey level.)"""
    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
        low = np.floor(src).astype(np.int64)
        return low, np.minimum(low + 1, n_in - 1), (src - low).astype(np.float32)

    (top, bottom, fy), (left, right, fx) = taps(rgb.shape[0], out_h), taps(rgb.shape[1], out_w)
    x = rgb.astype(np.float32)
    rows = x[top] * (1 - fy)[:, None, None] + x[bottom] * fy[:, None, None]
    out = rows[:, left] * (1 - fx)[None, :, None] + rows[:, right] * fx[None, :, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def to_original(boxes: np.ndarray, sx: float, sy: float, orig_w: int, orig_h: int) -> np.ndarray:
    """Network-input boxes -> the original image's pixels (conventions.boxes_to_original)."""
    out = boxes.astype(np.float32) / np.array([sx, sy, sx, sy], dtype=np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, orig_w)
    out[:, 1::2] = out[:, 1::2].clip(0, orig_h)
    return out


def check_manifest(manifest: dict) -> None:
    """Stop on a manifest this script does not read right: its worked examples must come out."""
    pre, conv = manifest["preprocessing"], manifest["conventions"]
    if pre["normalize_in_graph"] or pre["channel_order"] != ["R", "G", "B"]:
        sys.exit("error: this script expects RGB input normalised outside the graph")
    for example in pre["resize_examples"]:
        if list(resized_size(*example["in_wh"], *pre["resize_wh"])) != example["out_wh"]:
            sys.exit(f"error: resize rule disagrees with the manifest's example {example}")
    ex = conv["boxes_to_original_example"]
    (orig_w, orig_h), (sx, sy) = ex["orig_wh"], ex["sx_sy"]
    got = to_original(np.array([ex["box"]]), sx, sy, orig_w, orig_h)[0]
    if not np.allclose(got, ex["box_orig"], atol=1e-3):
        sys.exit(f"error: box mapping disagrees with the manifest's example {ex}")


def preprocess(rgb: np.ndarray, pre: dict) -> tuple[np.ndarray, tuple[int, int], tuple[float, float]]:
    """``[3, H, W]`` float32 network input, resized ``(h, w)`` and ``(sx, sy)`` of an RGB uint8 image."""
    h, w = rgb.shape[:2]
    new_w, new_h = resized_size(w, h, *pre["resize_wh"])
    resized = bilinear(rgb, new_w, new_h)
    normed = (resized.astype(np.float32) - np.float32(pre["mean"])) / np.float32(pre["std"])
    pad_h, pad_w = pre["pad_hw"]
    chw = np.full((3, pad_h, pad_w), pre["pad_value"], dtype=np.float32)
    chw[:, :new_h, :new_w] = normed.transpose(2, 0, 1)
    return chw, (new_h, new_w), (new_w / w, new_h / h)


def detect(session: ort.InferenceSession, manifest: dict, bgr: np.ndarray, score: float) -> list[dict]:
    """The detections of one OpenCV (BGR) image scoring at least ``score``, in its own pixels."""
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    image, (new_h, new_w), (sx, sy) = preprocess(rgb, manifest["preprocessing"])
    num, boxes, scores, labels = session.run(["num_dets", "boxes", "scores", "labels"], {
        "images": image[None], "image_sizes": np.array([[new_h, new_w]], dtype=np.float32)})
    k = int(num[0, 0])
    keep = scores[0, :k] >= score
    names = manifest["conventions"]["class_names_by_index"]
    mapped = to_original(boxes[0, :k][keep], sx, sy, rgb.shape[1], rgb.shape[0])
    return [{"class": names[str(int(label))], "label": int(label), "score": float(s), "box_xyxy": b.tolist()}
            for b, s, label in zip(mapped, scores[0, :k][keep], labels[0, :k][keep])]


def draw(bgr: np.ndarray, found: list[dict]) -> np.ndarray:
    out = bgr.copy()
    for det in found:
        x1, y1, x2, y2 = (int(round(v)) for v in det["box_xyxy"])
        colour = [(0, 200, 255), (255, 120, 0), (60, 220, 60), (200, 60, 200)][det["label"] % 4]
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(out, f"{det['class']} {det['score']:.2f}", (x1, max(12, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, colour, 1, cv2.LINE_AA)
    return out


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("export", type=Path, help="the export folder (holds manifest.json)")
    args.add_argument("images", type=Path, nargs="+")
    args.add_argument("--model", default="model.onnx", help="ONNX file in the folder (default model.onnx)")
    args.add_argument("--score", type=float, default=0.3, help="minimum score (default 0.3)")
    args.add_argument("--out", type=Path, default=None, help="folder for the drawn images")
    args.add_argument("--json", type=Path, default=None, help="write every image's detections here")
    a = args.parse_args()
    manifest = json.loads((a.export / "manifest.json").read_text())
    check_manifest(manifest)
    session = ort.InferenceSession(str(a.export / a.model), providers=["CPUExecutionProvider"])
    results = {}
    for path in a.images:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            sys.exit(f"error: {path}: OpenCV cannot read this image")
        found = detect(session, manifest, bgr, a.score)
        results[str(path)] = found
        print(f"{path}: " + ("; ".join(f"{d['class']} {d['score']:.3f} [{', '.join(f'{v:.1f}' for v in d['box_xyxy'])}]"
                                       for d in found) or "nothing"))
        if a.out is not None:
            a.out.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(a.out / f"{path.name}.png"), draw(bgr, found))
    if a.json is not None:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
