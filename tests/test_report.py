"""reports/summary.md: what to ship first, then every model's accuracy per class, size and latency spread."""
from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.report.ship import select
from pipeline.report.summary import model_rows, summary


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def metrics(map50: float, rate: float, params_m: float, pedestrian: float = 20.0) -> dict:
    return {"mAP50": map50, "voc_mAP50": map50 + 1.0, "params_M": params_m, "gflops_224": 7.6,
            "eval_images_per_s": rate, "per_class": {"Car": {"AP50": 2 * map50 - pedestrian},
                                                     "Pedestrian": {"AP50": pedestrian}}}


def fill(root: Path) -> None:
    base = root / "metrics" / "synthetic" / "gfl"
    write(base / "baseline-resnet18.json", metrics(40.0, 20.0, 19.24))
    write(base / "gkd_bmfi-resnet18.json", metrics(45.5, 20.0, 19.24, pedestrian=0.04))
    write(base / "teacher-resnet101.json", metrics(50.0, 5.0, 51.26))
    write(root / "metrics" / "benchmark" / "synthetic" / "gfl" / "gkd_bmfi-resnet18.json", {
        "backends": {"onnxruntime-cpu-fp32": {"p50_ms": 12.345, "p90_ms": 13.0, "p99_ms": 14.0,
                                              "throughput_ips": 90.0, "mAP50": 45.5,
                                              "providers": ["CPUExecutionProvider"]},
                     "pytorch-cpu-fp32": {"p50_ms": 30.0, "p90_ms": 41.26, "p99_ms": 50.0, "throughput_ips": 40.0}},
        "skipped": {"tensorrt": "TensorRT is not installed"}})
    write(root / "metrics" / "benchmark" / "synthetic" / "gfl" / "qat" / "gkd_bmfi" / "gkd_bmfi-resnet18.json", {
        "backends": {"onnxruntime-cpu-int8": {"p50_ms": 20.0, "p90_ms": 22.0, "p99_ms": 25.0, "throughput_ips": 60.0,
                                              "mAP50": 47.0}}, "skipped": {}})
    write(root / "reports" / "tables" / "distill_synthetic_gfl.md", "# Distillation table\n\n| a |\n")
    write(root / "plots" / "benchmark" / "synthetic_gfl.png", "png")


def test_rows_put_the_teacher_first_then_baseline_before_methods(tmp_path):
    fill(tmp_path)
    rows = model_rows(tmp_path / "metrics" / "synthetic" / "gfl")
    assert [r["model"] for r in rows] == ["teacher-resnet101", "baseline-resnet18", "gkd_bmfi-resnet18"]


def test_summary_has_latency_spreads_per_class_tables_and_relative_links(tmp_path):
    fill(tmp_path)
    text = summary(("synthetic",), ("gfl",), tmp_path, tmp_path / "reports")
    # speed as the benchmark's p50-p90 spread, never a ratio; the teacher was not exported: no latency
    assert "| gkd_bmfi-resnet18 | 45.50 | 46.50 | 19.24 | 7.60 | 30.0-41.3 |" in text
    assert "| teacher-resnet101 | 50.00 | 51.00 | 51.26 | 7.60 | - |" in text
    assert "speed-up" not in text and not re.search(r"\d\.\d+x \|", text)
    # every mean with its classes, and the class a model has not learned said in words
    assert "| gkd_bmfi-resnet18 | 45.50 | 90.96 | 0.04 | Pedestrian |" in text
    assert "- gkd_bmfi-resnet18 has not learned Pedestrian (AP50 0.04)." in text
    assert "| gkd_bmfi-resnet18 | onnxruntime-cpu-fp32 | 12.35 |" in text
    assert "| gkd_bmfi-resnet18 QAT+gkd_bmfi | onnxruntime-cpu-int8 | 20.00 | 22.00 |" in text
    assert "- tensorrt: TensorRT is not installed" in text
    assert "#### Distillation table" in text
    assert "](../plots/benchmark/synthetic_gfl.png)" in text


def test_missing_results_show_dashes_not_errors(tmp_path):
    write(tmp_path / "metrics" / "synthetic" / "gfl" / "baseline-resnet18.json",
          {"mAP50": 30.0, "voc_mAP50": 31.0})
    text = summary(("synthetic",), ("gfl",), tmp_path, tmp_path / "reports")
    assert "| baseline-resnet18 | 30.00 | 31.00 | - | - | - |" in text
    assert "No benchmark results yet" in text
    assert "_No reports/ship.json yet (run the ship stage: dvc repro ship)._" in text


def test_what_to_ship_comes_first_with_each_budgets_choice(tmp_path):
    from test_ship import GAINS, RECORDS

    fill(tmp_path)
    write(tmp_path / "reports" / "ship.json", {"budgets_ms": [5, 60], "datasets": {"synthetic": {
        "candidates": RECORDS, "gains": GAINS, "hardware": ["x86_64 (x86_64), 2 CPU threads"], "num_val_images": 50,
        "choices": [select(RECORDS, GAINS, b).as_dict() for b in (5, 60)], "not_ranked": []}}})
    text = summary(("synthetic",), ("gfl",), tmp_path, tmp_path / "reports")
    assert text.index("## What to ship") < text.index("## synthetic / gfl")
    assert "### synthetic: 4 variants of 4 models, 50 val images" in text
    assert "| 5 ms | **nothing fits** | - | - | the fastest, tiny fp32 on onnxruntime-cpu (gfl), has p90 10.0 ms |" in text
    assert ("| 60 ms | cheap fp32 on onnxruntime-cpu (gfl) | 11.00 [9.50, 12.50] | 15.0-20.0 | ties with the most "
            "accurate, accurate fp32 on onnxruntime-cpu (gfl) (+0.40 [-0.50, +1.30] includes 0): the cheaper |") in text
    assert "- cheap fp32 on onnxruntime-cpu (gfl) has not learned Pedestrian (AP50 0.01), Cyclist (0.80)." in text
    # every exported variant of the detector with its classes
    assert "### Per class, every exported variant on the runtime timed (reports/ship.json)" in text
    assert "| accurate fp32 on onnxruntime-cpu | 11.40 | 30.00 | 2.00 | 2.20 | - |" in text
