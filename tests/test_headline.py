"""The headline files DVC shows: a few shared keys per model and per deployed variant."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.artifacts import latency_scores_dir as latency_dir, score_path as accuracy_path
from pipeline.report.headline import accuracy, write_accuracy, write_latency


def evaluation(kitti: bool) -> dict:
    record = {"mAP50": 41.23456, "mAP": 20.1, "voc_mAP50": 42.0, "num_images": 50, "num_detections": 300,
              "per_class": {"Car": {"AP50": 60.129, "AP": 30.0, "voc_AP50": 61.0, "num_gt": 90},
                            "Pedestrian": {"AP50": 22.3, "AP": 9.0, "voc_AP50": 23.0, "num_gt": 40}},
              "params_M": 19.2, "kd_balance": {"mode": "auto", "ratio": 0.5}}
    if kitti:
        record["kitti"] = {"Car_moderate": 50.0, "mAP_easy": 40.0, "mAP_moderate": 38.456, "mAP_hard": 30.0}
    return record


def test_accuracy_headline_keeps_map50_per_class_ap50_and_kitti_moderate_rounded():
    assert accuracy(evaluation(kitti=True)) == {"mAP50": 41.23, "AP50": {"Car": 60.13, "Pedestrian": 22.3},
                                                "kitti_moderate": 38.46}
    assert "kitti_moderate" not in accuracy(evaluation(kitti=False))     # COCO-style data: no KITTI column


def test_latency_headlines_are_one_file_per_backend_with_the_same_keys(tmp_path):
    record = {"dataset": "synthetic", "detector": "gfl", "model": "gkd_bmfi-resnet18", "host": {"torch": "2"},
              "backends": {"pytorch-cpu-fp32": {"p50_ms": 30.004, "p90_ms": 41.256, "p99_ms": 50.0,
                                                "throughput_ips": 40.0, "providers": "torch"},
                           "onnxruntime-cpu-int8": {"p50_ms": 12.345, "p90_ms": 13.0, "p99_ms": 14.0,
                                                    "throughput_ips": 90.0, "mAP50": 45.5, "mAP50_source": "val",
                                                    "providers": "CPUExecutionProvider"}},
              "skipped": {"tensorrt": "not installed"}}
    folder = tmp_path / latency_dir("synthetic", "gfl", "gkd_bmfi-resnet18")
    (folder / "stale-backend.json").parent.mkdir(parents=True)
    (folder / "stale-backend.json").write_text("{}")            # a backend of an earlier run is gone
    write_latency(folder, record)
    files = {p.name: json.loads(p.read_text()) for p in folder.iterdir()}
    assert files == {"pytorch-cpu-fp32.json": {"p50_ms": 30.0, "p90_ms": 41.26},
                     "onnxruntime-cpu-int8.json": {"mAP50": 45.5, "p50_ms": 12.35, "p90_ms": 13.0}}


def test_headline_paths_keep_qat_exports_apart_from_their_parents(tmp_path):
    assert accuracy_path("kitti", "gfl", "gkd_bmfi-resnet18") == Path("scores/kitti/gfl/gkd_bmfi-resnet18.json")
    assert accuracy_path("kitti", "gfl", "gkd_bmfi-resnet18", "none") == \
        Path("scores/kitti/gfl/qat/none/gkd_bmfi-resnet18.json")
    assert latency_dir("kitti", "gfl", "gkd_bmfi-resnet18", "gkd_bmfi") == \
        Path("scores/kitti/gfl/latency/qat/gkd_bmfi/gkd_bmfi-resnet18")
    write_accuracy(tmp_path / "a.json", evaluation(kitti=False))
    assert json.loads((tmp_path / "a.json").read_text())["AP50"]["Car"] == 60.13
