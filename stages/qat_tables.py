"""DVC stage `qat_tables@<dataset>-<detector>`: fp32 vs post-training int8 vs QAT int8 vs QAT+KD int8.

Writes reports/tables/qat_<dataset>_<detector>.md and .json (pipeline/report/qat_table.py): per
model of ``qat.models``, the float32 parent (its evaluate stage's detections), its post-training
``model-int8.onnx`` (run here over val), and every ``qat.methods`` variant (the qat_export
stages' detections), with mAP50, paired bootstrap intervals against fp32 and against
post-training int8, and ONNX Runtime CPU latency of all the files timed in one interleaved run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.artifacts import curated_path, table_paths
from pipeline.config import load_params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.deploy.benchmark_suite import onnx_cpu_timings
from pipeline.deploy.bundle import eval_batch
from pipeline.deploy.manifest import artifact_entry, read_manifest
from pipeline.deploy.parity import backend_detections
from pipeline.deploy.runtime import OnnxBackend
from pipeline.engine.runs import QATRun, RunId
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_file, read_json, write_json
from pipeline.metrics.bootstrap import image_matches, load_detections
from pipeline.report.qat_table import markdown, qat_rows, variant_label


def _files(dataset: str, detector: str, parent: str, methods: tuple[str, ...]) -> dict[str, Path]:
    """The ONNX file of each variant, checked against its manifest's sha256."""
    folder = RunId(dataset, detector, parent).export_dir
    files = {"fp32": folder / "model.onnx", "int8 PTQ": folder / "model-int8.onnx"}
    files.update({variant_label(m): QATRun(dataset, detector, parent, m).export_dir / "model-int8.onnx"
                  for m in methods})
    for path in files.values():
        artifact_entry(read_manifest(path.parent), path.parent, path.name)
    return files


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    q, bp = params.qat, params.benchmark
    val_coco = load_curated(curated_path(args.dataset, "val"))
    val = CuratedDataset(val_coco, params.input, train=False)
    batch = eval_batch(params)
    rows = []
    for parent in q.models:
        files = _files(args.dataset, args.detector, parent, q.methods)
        detections = {"fp32": load_detections(RunId(args.dataset, args.detector, parent).detections_path),
                      "int8 PTQ": backend_detections(OnnxBackend(files["int8 PTQ"], ["CPUExecutionProvider"],
                                                                 qdq_as_written=True), val, batch)}
        for method in q.methods:
            qat = QATRun(args.dataset, args.detector, parent, method)
            detections[variant_label(method)] = load_detections(qat.detections_path)
        matches = {label: image_matches(val_coco, dets) for label, dets in detections.items()}
        own_float = {variant_label(m): read_json(QATRun(args.dataset, args.detector, parent, m).metrics_path,
                                                 "the qat_export stage (dvc repro)") for m in q.methods}
        latency = onnx_cpu_timings(files, val, bp, params.deploy.dynamic_batch)
        rows += qat_rows(parent, matches, latency, own_float)

    md_path, json_path = table_paths("qat", args.dataset, args.detector)
    text = markdown(args.dataset, args.detector, rows, bp.threads)
    with atomic_file(md_path) as handle:
        handle.write(text)
    write_json(json_path, {"dataset": args.dataset, "detector": args.detector, "threads": bp.threads, "rows": rows})
    print(text)


if __name__ == "__main__":
    main()
