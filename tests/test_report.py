"""reports/summary.md puts every model's accuracy, size and speed side by side."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.report.summary import model_rows, summary


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def metrics(map50: float, rate: float, params_m: float) -> dict:
    return {"mAP50": map50, "voc_mAP50": map50 + 1.0, "params_M": params_m, "gflops_224": 7.6,
            "eval_images_per_s": rate, "per_class": {}}


def fill(root: Path) -> None:
    base = root / "metrics" / "synthetic" / "gfl"
    write(base / "baseline-resnet18.json", metrics(40.0, 20.0, 19.24))
    write(base / "gkd_bmfi-resnet18.json", metrics(45.5, 20.0, 19.24))
    write(base / "teacher-resnet101.json", metrics(50.0, 5.0, 51.26))
    write(root / "metrics" / "benchmark" / "synthetic" / "gfl" / "gkd_bmfi-resnet18.json", {
        "backends": {"onnxruntime-cpu-fp32": {"p50_ms": 12.345, "p90_ms": 13.0, "p99_ms": 14.0,
                                              "throughput_ips": 90.0, "mAP50": 45.5,
                                              "providers": ["CPUExecutionProvider"]}},
        "skipped": {"tensorrt": "TensorRT is not installed"}})
    write(root / "reports" / "tables" / "distill_synthetic_gfl.md", "# Distillation table\n\n| a |\n")
    write(root / "plots" / "benchmark" / "synthetic_gfl.png", "png")


def test_rows_put_the_teacher_first_then_baseline_before_methods(tmp_path):
    fill(tmp_path)
    rows = model_rows(tmp_path / "metrics" / "synthetic" / "gfl")
    assert [r["model"] for r in rows] == ["teacher-resnet101", "baseline-resnet18", "gkd_bmfi-resnet18"]


def test_summary_has_speedups_latencies_tables_and_relative_links(tmp_path):
    fill(tmp_path)
    text = summary(("synthetic",), ("gfl",), tmp_path, tmp_path / "reports")
    assert "| gkd_bmfi-resnet18 | 45.50 | 46.50 | 19.24 | 7.60 | 20.0 | 4.00x |" in text
    assert "| teacher-resnet101 | 50.00 | 51.00 | 51.26 | 7.60 | 5.0 | 1.00x |" in text
    assert "| gkd_bmfi-resnet18 | onnxruntime-cpu-fp32 | 12.35 |" in text
    assert "- tensorrt: TensorRT is not installed" in text
    assert "#### Distillation table" in text
    assert "](../plots/benchmark/synthetic_gfl.png)" in text


def test_missing_results_show_dashes_not_errors(tmp_path):
    write(tmp_path / "metrics" / "synthetic" / "gfl" / "baseline-resnet18.json",
          {"mAP50": 30.0, "voc_mAP50": 31.0})
    text = summary(("synthetic",), ("gfl",), tmp_path, tmp_path / "reports")
    assert "| baseline-resnet18 | 30.00 | 31.00 | - | - | - | - |" in text
    assert "No benchmark results yet" in text
