"""The ``gkd-bmfi`` command: choose an exported detector, look at it and run it on images.

    gkd-bmfi select --budget-ms 80 [--ship reports/ship.json] [--dataset synthetic]
    gkd-bmfi info exports/synthetic/gfl/gkd_bmfi-resnet18
    gkd-bmfi build exports/synthetic/gfl/gkd_bmfi-resnet18 [--precision fp32 fp16 int8]   # on the target
    gkd-bmfi detect exports/synthetic/gfl/gkd_bmfi-resnet18 frames/ --out detections/ [--variant model-int8-cpu.onnx]
                    [--score 0.3] [--overwrite]            # frames/: images and/or videos (.mp4 .avi .mov .mkv)

An export is named by its folder, a file in it (``.../model-int8.onnx``: that variant) or a folder
above exactly one export (else the choices are listed). Benchmark figures and ``reports/ship.json``
are found from the export folder (or the working directory) up to the repository, so the commands
work from any directory.

``select`` reads the ship stage's ``reports/ship.json`` (every exported variant's benchmarked
latency and val accuracy with paired intervals) and prints, per dataset, the most accurate
variant whose batch-1 p90 latency fits the budget, with its mAP50 interval and p50-p90 latency;
where the best and a cheaper variant cannot be told apart it prints the cheaper and says so; a
budget nothing fits is said plainly (:mod:`pipeline.report.ship` holds the rule).

``info`` summarises the export's manifest: the input and its preprocessing, the classes, and each
variant with its runtime, val mAP50, TensorRT-readiness and, when the benchmark stage has measured
it (``metrics/benchmark/<dataset>/<detector>/<model>.json``, ``.../qat/<method>/<model>.json`` for
a QAT export, or ``--benchmark``), its latency.
Each file is checked against the manifest's sha256: a changed or truncated one is marked in its row
and named below the table (its row describes the file the export wrote, not this one).

``detect`` runs :class:`pipeline.deploy.runtime.DeployedDetector` on an image, a video (every
frame, read with OpenCV) or every image and video of a folder, prints each picture's time (ms:
preprocessing, inference and box mapping) and a summary, keeps detections scoring at least
``--score`` (default 0.3, the runtime's own default), and writes each one with its boxes, class
names and scores drawn as ``<name>.png`` (``frame.jpg`` -> ``frame.png``; when two images share a
name, as ``a.png`` and ``a.jpg``, both keep their suffix: ``a.png.png``, ``a.jpg.png``; a video's
frames as ``<stem>/000000.png``...), plus ``detections.json`` (each image and its
drawing) and a ``.gkd-bmfi-detect`` marker. ``--out`` must be a new or empty folder; ``--overwrite``
replaces only a folder holding that marker (an earlier ``detect`` output). Nothing else is ever
replaced: not the working directory or a folder above it, a git repository, an export folder or a
folder holding the inputs. A failed run leaves ``--out`` as it was.

``build`` builds TensorRT engines from the export's ONNX files on the machine that will run them
(:mod:`pipeline.deploy.target_build`: the export stage's settings, recorded in the manifest with
the GPU and TensorRT version) and prints the equivalent ``trtexec`` line; without TensorRT it
prints those lines and one line saying so (exit 2).

No command imports torch. Bad input ends with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.deploy.locate import find_benchmark, find_export, find_ship, stages
from pipeline.deploy.manifest import artifact_mismatch, read_manifest
from pipeline.deploy.media import is_video, media_files, pictures
from pipeline.deploy.runtime import DEFAULT_SCORE_THRESHOLD   # numpy only: onnxruntime loads when detecting
from pipeline.draw import class_colour, draw_boxes
from pipeline.errors import UserError, exit_on_user_error
from pipeline.io import claim_output_dir, command_output_dir, read_json, write_json
from pipeline.report.ship import read_ship, select, unlearned_note

#: The file ``detect`` writes into each output folder: ``--overwrite`` replaces only folders holding it.
MARKER = ".gkd-bmfi-detect"


def _latency(backends: dict[str, Any], precision: str) -> str:
    """p50 of the CPU ONNX Runtime run of ``precision`` (and of its TensorRT engine when timed)."""
    found = [f"{name.split('-')[0]} {row['p50_ms']:.1f} ms" for name, row in sorted(backends.items())
             if name.endswith(f"-{precision}") and name.startswith(("onnxruntime", "tensorrt")) and "p50_ms" in row]
    return ", ".join(found) or "-"


def _timings_ok(row: object) -> bool:
    """A benchmark row: an object whose ``p50_ms``, when present, is a finite number."""
    p50 = row.get("p50_ms", 0.0) if isinstance(row, dict) else None
    return type(p50) in (int, float) and math.isfinite(p50)


def read_benchmark(path: Path, stage: str = "benchmark") -> dict[str, dict[str, Any]]:
    """The ``backends`` of a benchmark json (backend name -> timings), or one line saying why not
    (``stage``: the DVC stage that writes it)."""
    data = read_json(path, f"the {stage} stage (dvc repro {stage}) or pass another --benchmark")
    backends = data.get("backends") if isinstance(data, dict) else None
    if not isinstance(backends, dict) or not all(_timings_ok(row) for row in backends.values()):
        raise UserError(f"{path}: backends must be an object of backend name -> timings with a number p50_ms "
                        f"(as the {stage} stage writes); re-run it (dvc repro {stage}) or pass another --benchmark")
    return backends


def readiness(record: dict[str, Any] | None) -> str:
    """The TensorRT-readiness cell: ``yes`` only when every check ran and passed; ``no (N problems)``;
    ``unverified (N checks could not run)`` when nothing failed but something went unchecked."""
    if record is None:
        return "-"
    if record.get("ready"):
        return "yes"
    problems, unverified = len(record.get("problems", [])), len(record.get("unverified", []))
    if problems:
        return f"no ({problems} problems)"
    return f"unverified ({unverified} checks could not run)" if unverified else "no"


def _row(name: str, entry: dict[str, Any], mismatch: str | None, backends: dict[str, Any]) -> str:
    """The table row of one artifact; a file that is not the manifest's (``mismatch`` says why) gets
    no accuracy, readiness or latency: those describe the file the export wrote."""
    head = f"| {name} | {entry.get('precision', '-')} | {entry.get('runtime', '-')} |"
    if mismatch:
        return f"{head} - | - | - | - | NO: {mismatch.split(';')[0]} |"
    ev = entry.get("eval") or {}
    mAP = f"{ev['mAP50']:.2f}" if "mAP50" in ev else entry.get("skipped", "-")
    delta = f"{ev['delta_mAP50_vs_fp32']:+.2f}" if "delta_mAP50_vs_fp32" in ev else "-"
    return f"{head} {mAP} | {delta} | {readiness(entry.get('tensorrt_readiness'))} | {_latency(backends, entry.get('precision', ''))} | yes |"


def summary(folder: Path, benchmark: Path | None = None) -> str:
    """The text ``gkd-bmfi info`` prints for the export ``folder`` (or a file in it, or a folder
    above exactly one export): a warning line below the table for each file that is missing or
    differs from the manifest's sha256. The benchmark json is found from the export folder up
    (:func:`pipeline.deploy.locate.find_benchmark`), wherever the command runs."""
    folder, _ = find_export(folder)
    manifest = read_manifest(folder)
    stage = stages(manifest)
    if benchmark is not None and not benchmark.is_file():
        raise UserError(f"--benchmark {benchmark}: no such file; give the json the {stage['benchmark']} stage wrote")
    bench_file = benchmark or find_benchmark(folder, manifest)
    backends = read_benchmark(bench_file, stage["benchmark"]) if bench_file is not None else {}
    m, inp, pre = manifest["model"], manifest["input"], manifest["preprocessing"]
    unmeasured = f"not measured (run dvc repro {stage['benchmark']} in its repository, or pass --benchmark)"
    lines = [f"{folder}: {m['model']} ({m['detector']}, {m['backbone']}) trained on {m['dataset']}",
             f"input: {inp.get('name', 'images')} {inp['shape']} {inp.get('dtype', 'float32')} "
             f"{inp.get('layout', 'NCHW')}, dynamic batch {bool(inp.get('dynamic_batch'))}; resize into "
             f"{pre['resize_wh'][0]}x{pre['resize_wh'][1]} (w x h), pad to {pre['pad_hw'][1]}x{pre['pad_hw'][0]}, "
             f"mean {pre['mean']}, std {pre['std']}",
             f"classes ({len(manifest['class_names'])}): {', '.join(manifest['class_names'])}",
             f"latency: {bench_file if backends else unmeasured}",
             "", "| file | precision | runtime | val mAP50 | vs fp32 | TensorRT-ready | p50 | matches manifest |",
             "| --- | --- | --- | ---: | ---: | --- | --- | --- |"]
    mismatches = {name: artifact_mismatch(folder, name, entry) for name, entry in manifest["artifacts"].items()}
    lines += [_row(name, entry, mismatches[name], backends) for name, entry in manifest["artifacts"].items()]
    lines += [f"warning: {folder / name}: {why}; re-export (dvc repro {stage['export']}) before using this file"
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


def draw(rgb: np.ndarray, found: Any, drawing: Path) -> None:
    """Save ``rgb`` with the boxes, class names and scores of ``found`` drawn, as ``drawing``."""
    picture = Image.fromarray(rgb)
    captions = [f"{n} {s:.2f}" for n, s in zip(found.names, found.scores)]
    draw_boxes(picture, found.boxes, captions, [class_colour(c) for c in found.labels])
    picture.save(drawing)


def detect_file(detector: Any, path: Path, drawing: Path, score: float,
                say: Callable[[str], object]) -> list[dict[str, Any]]:
    """Detect on the image or every frame of the video ``path``; draw each into ``drawing`` (a video's
    frames into the folder ``drawing`` without ``.png``, as ``<frame>.png``); say each picture's
    time. The detections.json records, each with ``ms``: preprocessing + inference + mapping the
    boxes back (not reading or drawing)."""
    records = []
    if is_video(path):
        drawing = drawing.with_suffix("")
        drawing.mkdir()
    for frame, rgb in pictures(path):
        start = time.perf_counter()
        found = detector.detect(rgb, score_threshold=score)
        ms = (time.perf_counter() - start) * 1e3
        target = drawing if frame is None else drawing / f"{frame:06d}.png"
        draw(rgb, found, target)
        where = str(path) if frame is None else f"{path} frame {frame}"
        say(f"{where}: {len(found)} detections, {ms:.1f} ms")
        records.append({"image": str(path), **({} if frame is None else {"frame": frame}),
                        "drawing": str(target.relative_to(drawing.parent)), "ms": round(ms, 3), "detections": [
                            {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4), "class": n}
                            for b, s, n in zip(found.boxes, found.scores, found.names)]})
    return records


def timing_summary(records: list[dict[str, Any]]) -> str:
    """One line: how many pictures and detections, and the per-picture time (mean, p50, p90, max)."""
    ms = np.array([r["ms"] for r in records])
    count = sum(len(r["detections"]) for r in records)
    return (f"{len(records)} images/frames, {count} detections; per image {ms.mean():.1f} ms mean, "
            f"p50 {np.percentile(ms, 50):.1f}, p90 {np.percentile(ms, 90):.1f}, max {ms.max():.1f} ms "
            "(preprocessing + inference + box mapping; the first includes warm-up)")


def detect(export: Path, target: Path, out: Path, variant: str | None, score: float, threads: int | None,
           overwrite: bool = False, say: Callable[[str], object] = print) -> list[dict[str, Any]]:
    """Run the export (a folder, a file in one, or a folder above exactly one) on the images and
    videos of ``target``; write the drawings and detections.json to ``out`` (a new or empty folder,
    or with ``overwrite`` an earlier output of this command). Returns the records written."""
    from pipeline.deploy.runtime import DeployedDetector, check_score_threshold   # onnxruntime only when detecting

    score = check_score_threshold(score, "--score")
    folder, named = find_export(export)
    if named and variant and named != variant:
        raise UserError(f"{export} names the file {named} but --variant says {variant}; give one of them")
    variant = variant or named
    claim_output_dir(out, overwrite, [folder, target], MARKER)     # refused before the model loads
    detector = DeployedDetector(folder / variant if variant else folder, threads=threads)
    files = media_files(target)
    names = drawing_names(files)
    marker = {"written_by": "gkd-bmfi detect", "export": str(folder), "images": str(target)}
    with command_output_dir(out, overwrite, [folder, target], MARKER, marker) as tmp:   # checked again
        records = [r for path, name in zip(files, names) for r in detect_file(detector, path, tmp / name, score, say)]
        write_json(tmp / "detections.json", {"export": str(folder), "file": detector.path.name,
                                            "score_threshold": score, "images": records})
    return records


EXPORT_HELP = ("an export folder (exports/<dataset>/<detector>/<model>), a file in it, or a folder above exactly "
               "one export")


def parser() -> argparse.ArgumentParser:
    """The command line (``gkd-bmfi --help``)."""
    top = argparse.ArgumentParser(prog="gkd-bmfi", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    pick = sub.add_parser("select", help="the most accurate exported variant within a latency budget")
    pick.add_argument("--budget-ms", type=float, required=True, help="batch-1 p90 latency budget (ms)")
    pick.add_argument("--ship", type=Path, default=None,
                      help="the ship stage's record, or a folder holding reports/ship.json (default: "
                           "reports/ship.json of the working directory or the nearest folder above with one)")
    pick.add_argument("--dataset", default=None, help="only this dataset (default: each of the record)")
    info = sub.add_parser("info", help="summarise an export folder's manifest")
    info.add_argument("export", type=Path, help=EXPORT_HELP)
    info.add_argument("--benchmark", type=Path, default=None,
                      help="benchmark json (default: the benchmark stage's, found from the export folder up)")
    run = sub.add_parser("detect", help="draw an export's detections on images and video frames")
    run.add_argument("export", type=Path, help=EXPORT_HELP + "; a file names the variant to run")
    run.add_argument("images", type=Path,
                     help="an image, a video (.mp4 .avi .mov .mkv, read frame by frame with OpenCV) or a folder of them")
    run.add_argument("--out", type=Path, required=True,
                     help="new or empty folder for the drawn images (<stem>.png; <name>.png when two images "
                          "share a stem, e.g. a.jpg.png and a.png.png; a video's frames as <stem>/<frame>.png) "
                          "and detections.json")
    run.add_argument("--overwrite", action="store_true",
                     help="replace --out when it holds an earlier `gkd-bmfi detect` output (its .gkd-bmfi-detect "
                          "marker); any other folder is left alone")
    run.add_argument("--variant", default=None, help="file in the export folder (default model.onnx)")
    run.add_argument("--score", type=float, default=DEFAULT_SCORE_THRESHOLD,
                     help=f"minimum score drawn (default {DEFAULT_SCORE_THRESHOLD}, as DeployedDetector.detect)")
    run.add_argument("--threads", type=int, default=None)
    make = sub.add_parser("build", help="build TensorRT engines from the export's ONNX files, on this machine")
    make.add_argument("export", type=Path, help=EXPORT_HELP)
    make.add_argument("--precision", nargs="+", choices=("fp32", "fp16", "int8"), default=None,
                      help="engines to build (default: every precision the export has an ONNX file for TensorRT)")
    make.add_argument("--max-batch", type=int, default=None,
                      help="largest batch of a dynamic-batch export (default: the manifest's profile, else 8)")
    make.add_argument("--opt-batch", type=int, default=None, help="batch to optimise for (default: manifest's, else 1)")
    make.add_argument("--workspace-mib", type=int, default=None, help="builder workspace (default: manifest's, else 2048)")
    return top


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "select":
        print(choose(find_ship(args.ship), args.budget_ms, args.dataset))
        return
    if args.command == "info":
        print(summary(args.export, args.benchmark))
        return
    if args.command == "build":
        from pipeline.deploy.target_build import build

        folder, _ = find_export(args.export)
        built = build(folder, args.precision, args.max_batch, args.opt_batch, args.workspace_mib,
                      say=lambda line: print(line, flush=True))
        print(f"built {', '.join(built)} in {folder}; recorded in its manifest.json")  # pragma: no cover - TensorRT
        return
    records = detect(args.export, args.images, args.out, args.variant, args.score, args.threads, args.overwrite)
    print(f"{timing_summary(records)} -> {args.out}", file=sys.stdout)


if __name__ == "__main__":
    main()
