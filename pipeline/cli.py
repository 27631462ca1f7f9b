"""The ``gkd-bmfi`` command: choose an exported detector, look at it and run it on images.

    gkd-bmfi select --budget-ms 80 [--ship reports/ship.json] [--dataset synthetic]
    gkd-bmfi info exports/synthetic/gfl/gkd_bmfi-resnet18
    gkd-bmfi detect exports/synthetic/gfl/gkd_bmfi-resnet18 frames/ --out detections/ [--variant model-int8-cpu.onnx]
                    [--score 0.3] [--overwrite]

``select`` reads the ship stage's ``reports/ship.json`` (every exported variant's benchmarked
latency and val accuracy with paired intervals) and prints, per dataset, the most accurate
variant whose batch-1 p90 latency fits the budget, with its mAP50 interval and p50-p90 latency;
where the best and a cheaper variant cannot be told apart it prints the cheaper and says so; a
budget nothing fits is said plainly (:mod:`pipeline.report.ship` holds the rule).

``info`` summarises the export's manifest: the input and its preprocessing, the classes, and each
variant with its runtime, val mAP50, TensorRT-readiness and, when the benchmark stage has measured
it (``metrics/benchmark/<dataset>/<detector>/<model>.json``, or ``--benchmark``), its latency.
Each file is checked against the manifest's sha256: a changed or truncated one is marked in its row
and named below the table (its row describes the file the export wrote, not this one).

``detect`` runs :class:`pipeline.deploy.runtime.DeployedDetector` on an image or every image of a
folder and writes each one with its boxes, class names and scores drawn as ``<name>.png``
(``frame.jpg`` -> ``frame.png``; when two images share a name, as ``a.png`` and ``a.jpg``, both
keep their suffix: ``a.png.png``, ``a.jpg.png``), plus ``detections.json`` (each image and its
drawing) and a ``.gkd-bmfi-detect`` marker. ``--out`` must be a new or empty folder; ``--overwrite``
replaces only a folder holding that marker (an earlier ``detect`` output). Nothing else is ever
replaced: not the working directory or a folder above it, a git repository, an export folder or a
folder holding the inputs. A failed run leaves ``--out`` as it was.

No command imports torch. Bad input ends with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.data.images import read_rgb
from pipeline.deploy.manifest import artifact_mismatch, read_manifest
from pipeline.draw import class_colour, draw_boxes
from pipeline.errors import UserError, exit_on_user_error
from pipeline.io import claim_output_dir, command_output_dir, read_json, write_json
from pipeline.report.ship import read_ship, select, unlearned_note

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: The file ``detect`` writes into each output folder: ``--overwrite`` replaces only folders holding it.
MARKER = ".gkd-bmfi-detect"


def benchmark_path(manifest: dict[str, Any]) -> Path:
    """Where the benchmark stage writes the latencies of this export (relative to the repository)."""
    m = manifest["model"]
    return Path("metrics") / "benchmark" / m["dataset"] / m["detector"] / f"{m['model']}.json"


def _latency(backends: dict[str, Any], precision: str) -> str:
    """p50 of the CPU ONNX Runtime run of ``precision`` (and of its TensorRT engine when timed)."""
    found = [f"{name.split('-')[0]} {row['p50_ms']:.1f} ms" for name, row in sorted(backends.items())
             if name.endswith(f"-{precision}") and name.startswith(("onnxruntime", "tensorrt")) and "p50_ms" in row]
    return ", ".join(found) or "-"


def _timings_ok(row: object) -> bool:
    """A benchmark row: an object whose ``p50_ms``, when present, is a finite number."""
    p50 = row.get("p50_ms", 0.0) if isinstance(row, dict) else None
    return type(p50) in (int, float) and math.isfinite(p50)


def read_benchmark(path: Path) -> dict[str, dict[str, Any]]:
    """The ``backends`` of a benchmark json (backend name -> timings), or one line saying why not."""
    data = read_json(path, "the benchmark stage (dvc repro benchmark) or pass another --benchmark")
    backends = data.get("backends") if isinstance(data, dict) else None
    if not isinstance(backends, dict) or not all(_timings_ok(row) for row in backends.values()):
        raise UserError(f"{path}: backends must be an object of backend name -> timings with a number p50_ms "
                        "(as the benchmark stage writes); re-run the benchmark stage or pass another --benchmark")
    return backends


def _row(name: str, entry: dict[str, Any], mismatch: str | None, backends: dict[str, Any]) -> str:
    """The table row of one artifact; a file that is not the manifest's (``mismatch`` says why) gets
    no accuracy, readiness or latency: those describe the file the export wrote."""
    head = f"| {name} | {entry.get('precision', '-')} | {entry.get('runtime', '-')} |"
    if mismatch:
        return f"{head} - | - | - | - | NO: {mismatch.split(';')[0]} |"
    ev = entry.get("eval") or {}
    mAP = f"{ev['mAP50']:.2f}" if "mAP50" in ev else entry.get("skipped", "-")
    delta = f"{ev['delta_mAP50_vs_fp32']:+.2f}" if "delta_mAP50_vs_fp32" in ev else "-"
    ready = entry.get("tensorrt_readiness")
    problems = len((ready or {}).get("problems", []))
    verdict = "-" if ready is None else ("yes" if ready.get("ready") else f"no ({problems} problems)")
    return f"{head} {mAP} | {delta} | {verdict} | {_latency(backends, entry.get('precision', ''))} | yes |"


def summary(folder: Path, benchmark: Path | None = None) -> str:
    """The text ``gkd-bmfi info`` prints for the export in ``folder``: a warning line below the table
    for each file that is missing or differs from the manifest's sha256."""
    manifest = read_manifest(folder)
    if benchmark is not None and not benchmark.is_file():
        raise UserError(f"--benchmark {benchmark}: no such file; give the json the benchmark stage wrote")
    bench_file = benchmark or benchmark_path(manifest)
    backends = read_benchmark(bench_file) if bench_file.is_file() else {}
    m, inp, pre = manifest["model"], manifest["input"], manifest["preprocessing"]
    lines = [f"{folder}: {m['model']} ({m['detector']}, {m['backbone']}) trained on {m['dataset']}",
             f"input: {inp.get('name', 'images')} {inp['shape']} {inp.get('dtype', 'float32')} "
             f"{inp.get('layout', 'NCHW')}, dynamic batch {bool(inp.get('dynamic_batch'))}; resize into "
             f"{pre['resize_wh'][0]}x{pre['resize_wh'][1]} (w x h), pad to {pre['pad_hw'][1]}x{pre['pad_hw'][0]}, "
             f"mean {pre['mean']}, std {pre['std']}",
             f"classes ({len(manifest['class_names'])}): {', '.join(manifest['class_names'])}",
             f"latency: {bench_file if backends else 'not measured (run the benchmark stage)'}",
             "", "| file | precision | runtime | val mAP50 | vs fp32 | TensorRT-ready | p50 | matches manifest |",
             "| --- | --- | --- | ---: | ---: | --- | --- | --- |"]
    mismatches = {name: artifact_mismatch(folder, name, entry) for name, entry in manifest["artifacts"].items()}
    lines += [_row(name, entry, mismatches[name], backends) for name, entry in manifest["artifacts"].items()]
    lines += [f"warning: {folder / name}: {why}; re-export (dvc repro export) before using this file"
              for name, why in mismatches.items() if why]
    return "\n".join(lines)


def choose(ship_path: Path, budget_ms: float, dataset: str | None = None) -> str:
    """What ``gkd-bmfi select`` prints: per dataset of ``ship_path`` (or only ``dataset``), the
    choice for ``budget_ms`` in one sentence and the classes the chosen variant has not learned."""
    if not (math.isfinite(budget_ms) and budget_ms > 0):
        raise UserError(f"--budget-ms {budget_ms:g}: give a positive number of milliseconds (batch-1 p90)")
    ship = read_ship(ship_path)
    blocks = ship["datasets"]
    if dataset is not None and dataset not in blocks:
        raise UserError(f"--dataset {dataset}: {ship_path} has no such dataset (it has "
                        f"{', '.join(blocks) or 'none'}); pick one of those or re-run the ship stage")
    lines = []
    for name, block in blocks.items():
        if dataset is not None and name != dataset:
            continue
        choice = select(block["candidates"], block["gains"], budget_ms)
        lines.append(f"{name}: {choice.sentence()}.")
        note = unlearned_note(choice.chosen) if choice.chosen is not None else None
        if note:
            lines.append(f"{name}: {note}.")
    hardware = sorted({h for name, b in blocks.items() if dataset in (None, name) for h in b.get("hardware", [])})
    lines += [f"measured on {h}" for h in hardware]
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


def drawing_names(files: list[Path]) -> list[str]:
    """The file name of each image's drawing: ``<stem>.png``, or ``<name>.png`` (``a.jpg.png``) for
    images sharing their stem with another (``a.jpg``, ``a.png``); one line when names still clash."""
    stems = Counter(p.stem.casefold() for p in files)
    names = [f"{p.stem if stems[p.stem.casefold()] == 1 else p.name}.png" for p in files]
    clashes = [n for n, count in Counter(n.casefold() for n in names).items() if count > 1]
    if clashes:
        both = [str(p) for p, n in zip(files, names) if n.casefold() == clashes[0]]
        raise UserError(f"{both[0]} and {both[1]} would both be drawn as {clashes[0]}; rename one of them")
    return names


def draw_detections(detector: Any, path: Path, drawing: Path, score: float) -> dict[str, Any]:
    """Draw the detections of the image ``path`` into ``drawing``; its detections.json record."""
    rgb = read_rgb(path)
    found = detector.detect(rgb, score_threshold=score)
    picture = Image.fromarray(rgb)
    captions = [f"{n} {s:.2f}" for n, s in zip(found.names, found.scores)]
    draw_boxes(picture, found.boxes, captions, [class_colour(c) for c in found.labels])
    picture.save(drawing)
    return {"image": str(path), "drawing": drawing.name, "detections": [
        {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4), "class": n}
        for b, s, n in zip(found.boxes, found.scores, found.names)]}


def detect(folder: Path, target: Path, out: Path, variant: str | None, score: float, threads: int | None,
           overwrite: bool = False) -> int:
    """Run the export on the images of ``target``; write the drawn images and detections.json to
    ``out`` (a new or empty folder, or with ``overwrite`` an earlier output of this command)."""
    from pipeline.deploy.runtime import DeployedDetector, check_score_threshold   # onnxruntime only when detecting

    score = check_score_threshold(score, "--score")
    claim_output_dir(out, overwrite, [folder, target], MARKER)     # refused before the model loads
    detector = DeployedDetector(folder / variant if variant else folder, threads=threads)
    files = image_files(target)
    names = drawing_names(files)
    marker = {"written_by": "gkd-bmfi detect", "export": str(folder), "images": str(target)}
    with command_output_dir(out, overwrite, [folder, target], MARKER, marker) as tmp:   # checked again
        records = [draw_detections(detector, path, tmp / name, score) for path, name in zip(files, names)]
        write_json(tmp / "detections.json", {"export": str(folder), "file": detector.path.name,
                                            "score_threshold": score, "images": records})
    return sum(len(r["detections"]) for r in records)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gkd-bmfi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pick = sub.add_parser("select", help="the most accurate exported variant within a latency budget")
    pick.add_argument("--budget-ms", type=float, required=True, help="batch-1 p90 latency budget (ms)")
    pick.add_argument("--ship", type=Path, default=Path("reports") / "ship.json",
                      help="the ship stage's record (default reports/ship.json)")
    pick.add_argument("--dataset", default=None, help="only this dataset (default: each of the record)")
    info = sub.add_parser("info", help="summarise an export folder's manifest")
    info.add_argument("export", type=Path)
    info.add_argument("--benchmark", type=Path, default=None, help="benchmark json (default: the stage's)")
    run = sub.add_parser("detect", help="draw an export's detections on images")
    run.add_argument("export", type=Path)
    run.add_argument("images", type=Path, help="an image or a folder of images")
    run.add_argument("--out", type=Path, required=True,
                     help="new or empty folder for the drawn images (<stem>.png; <name>.png when two images "
                          "share a stem, e.g. a.jpg.png and a.png.png) and detections.json")
    run.add_argument("--overwrite", action="store_true",
                     help="replace --out when it holds an earlier `gkd-bmfi detect` output (its .gkd-bmfi-detect "
                          "marker); any other folder is left alone")
    run.add_argument("--variant", default=None, help="file in the export folder (default model.onnx)")
    run.add_argument("--score", type=float, default=0.3, help="minimum score drawn (default 0.3)")
    run.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "select":
        print(choose(args.ship, args.budget_ms, args.dataset))
        return
    if args.command == "info":
        print(summary(args.export, args.benchmark))
        return
    count = detect(args.export, args.images, args.out, args.variant, args.score, args.threads, args.overwrite)
    print(f"{count} detections drawn on the images of {args.images} -> {args.out}", file=sys.stdout)


if __name__ == "__main__":
    main()
