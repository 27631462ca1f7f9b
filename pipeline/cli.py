"""The ``gkd-bmfi`` command: look at an exported detector and run it on images.

    gkd-bmfi info exports/synthetic/gfl/gkd_bmfi-resnet18
    gkd-bmfi detect exports/synthetic/gfl/gkd_bmfi-resnet18 frames/ --out detections/ [--variant model-int8-cpu.onnx]

``info`` summarises the export's manifest: the input and its preprocessing, the classes, and each
variant with its runtime, val mAP50, TensorRT-readiness and, when the benchmark stage has measured
it (``metrics/benchmark/<dataset>/<detector>/<model>.json``, or ``--benchmark``), its latency.
``detect`` runs :class:`pipeline.deploy.runtime.DeployedDetector` on an image or every image of a
folder and writes each one with its boxes, class names and scores drawn, plus ``detections.json``.
Neither imports torch. Bad input ends with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.data.images import check_eight_bit
from pipeline.deploy.manifest import read_manifest
from pipeline.draw import class_colour, draw_boxes
from pipeline.errors import UserError, exit_on_user_error
from pipeline.io import atomic_dir, write_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def benchmark_path(manifest: dict[str, Any]) -> Path:
    """Where the benchmark stage writes the latencies of this export (relative to the repository)."""
    m = manifest["model"]
    return Path("metrics") / "benchmark" / m["dataset"] / m["detector"] / f"{m['model']}.json"


def _latency(backends: dict[str, Any], precision: str) -> str:
    """p50 of the CPU ONNX Runtime run of ``precision`` (and of its TensorRT engine when timed)."""
    found = [f"{name.split('-')[0]} {row['p50_ms']:.1f} ms" for name, row in sorted(backends.items())
             if name.endswith(f"-{precision}") and name.startswith(("onnxruntime", "tensorrt")) and "p50_ms" in row]
    return ", ".join(found) or "-"


def summary(folder: Path, benchmark: Path | None = None) -> str:
    """The text ``gkd-bmfi info`` prints for the export in ``folder``."""
    manifest = read_manifest(folder)
    bench_file = benchmark or benchmark_path(manifest)
    backends = {}
    if bench_file.is_file():
        try:
            backends = json.loads(bench_file.read_text()).get("backends", {})
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"{bench_file}: not a benchmark json; re-run the benchmark stage or pass "
                            "--benchmark") from None
    m, inp, pre = manifest["model"], manifest["input"], manifest["preprocessing"]
    lines = [f"{folder}: {m['model']} ({m['detector']}, {m['backbone']}) trained on {m['dataset']}",
             f"input: {inp['name']} {inp['shape']} {inp['dtype']} {inp.get('layout', 'NCHW')}, "
             f"dynamic batch {bool(inp.get('dynamic_batch'))}; resize into {pre['resize_wh'][0]}x{pre['resize_wh'][1]} "
             f"(w x h), pad to {pre['pad_hw'][1]}x{pre['pad_hw'][0]}, mean {pre['mean']}, std {pre['std']}",
             f"classes ({len(manifest['class_names'])}): {', '.join(manifest['class_names'])}",
             f"latency: {bench_file if backends else 'not measured (run the benchmark stage)'}",
             "", "| file | precision | runtime | val mAP50 | vs fp32 | TensorRT-ready | p50 |",
             "| --- | --- | --- | ---: | ---: | --- | --- |"]
    for name, entry in manifest["artifacts"].items():
        ev = entry.get("eval") or {}
        mAP = f"{ev['mAP50']:.2f}" if "mAP50" in ev else entry.get("skipped", "-")
        delta = f"{ev['delta_mAP50_vs_fp32']:+.2f}" if "delta_mAP50_vs_fp32" in ev else "-"
        ready = entry.get("tensorrt_readiness")
        problems = len((ready or {}).get("problems", []))
        verdict = "-" if ready is None else ("yes" if ready.get("ready") else f"no ({problems} problems)")
        lines.append(f"| {name} | {entry.get('precision', '-')} | {entry.get('runtime', '-')} | {mAP} | {delta} | "
                     f"{verdict} | {_latency(backends, entry.get('precision', ''))} |")
    return "\n".join(lines)


def image_files(target: Path) -> list[Path]:
    """``target`` itself or the images of the folder ``target`` (sorted), or one line saying why not."""
    if target.is_file():
        return [target]
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{target}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    raise UserError(f"{target}: no such image or folder")


def read_image(path: Path) -> np.ndarray:
    """An 8-bit RGB array of ``path``; 16-bit and other modes are refused with the fix."""
    try:
        with Image.open(path) as img:
            check_eight_bit(path, img.mode)
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from None


def detect(folder: Path, target: Path, out: Path, variant: str | None, score: float, threads: int | None) -> int:
    """Run the export on the images of ``target``; write the drawn images and detections.json to ``out``."""
    from pipeline.deploy.runtime import DeployedDetector   # onnxruntime only when detecting

    detector = DeployedDetector(folder / variant if variant else folder, threads=threads)
    files = image_files(target)
    records = []
    with atomic_dir(out) as tmp:
        for path in files:
            rgb = read_image(path)
            found = detector.detect(rgb, score_threshold=score)
            picture = Image.fromarray(rgb)
            captions = [f"{n} {s:.2f}" for n, s in zip(found.names, found.scores)]
            draw_boxes(picture, found.boxes, captions, [class_colour(c) for c in found.labels])
            picture.save(tmp / f"{path.stem}.png")
            records.append({"image": str(path), "detections": [
                {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4), "class": n}
                for b, s, n in zip(found.boxes, found.scores, found.names)]})
        write_json(tmp / "detections.json", {"export": str(folder), "file": detector.path.name,
                                            "score_threshold": score, "images": records})
    return sum(len(r["detections"]) for r in records)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gkd-bmfi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="summarise an export folder's manifest")
    info.add_argument("export", type=Path)
    info.add_argument("--benchmark", type=Path, default=None, help="benchmark json (default: the stage's)")
    run = sub.add_parser("detect", help="draw an export's detections on images")
    run.add_argument("export", type=Path)
    run.add_argument("images", type=Path, help="an image or a folder of images")
    run.add_argument("--out", type=Path, required=True, help="folder for the drawn images and detections.json")
    run.add_argument("--variant", default=None, help="file in the export folder (default model.onnx)")
    run.add_argument("--score", type=float, default=0.3, help="minimum score drawn (default 0.3)")
    run.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "info":
        print(summary(args.export, args.benchmark))
        return
    count = detect(args.export, args.images, args.out, args.variant, args.score, args.threads)
    print(f"{count} detections drawn on the images of {args.images} -> {args.out}", file=sys.stdout)


if __name__ == "__main__":
    main()
