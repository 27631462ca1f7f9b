"""What to ship: the latency-budgeted choice, its record, `gkd-bmfi select` and per-class truth.

The rule is checked on hand-made records whose answers are known: the cheaper variant wins a tie
within the interval, a clear gap keeps the more accurate one, a budget nothing fits says so."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main as cli_main
from pipeline.errors import UserError
from pipeline.metrics.bootstrap import save_detections
from pipeline.report.per_class import per_class_markdown, unlearned_line
from pipeline.report.ship import check_ship, frontier, needed_pairs, read_ship, select
from pipeline.structures import Detections


def variant(key: str, p50: float, p90: float, map50: float, per_class: dict[str, float] | None = None) -> dict:
    """A candidate as the ship stage writes it (``key`` doubles as the model name)."""
    return {"key": key, "label": key, "model": key, "detector": "gfl", "precision": "fp32", "quantization": "none",
            "runtime": "onnxruntime-cpu", "p50_ms": p50, "p90_ms": p90, "mAP50": map50, "mAP50_low": map50 - 1.5,
            "mAP50_high": map50 + 1.5, "per_class": {n: {"AP50": v} for n, v in (per_class or {}).items()}}


def gain(model: str, reference: str, value: float, low: float, high: float) -> dict:
    return {"model": model, "reference": reference, "gain": value, "low": low, "high": high}


# C fastest and weak; B cheap and close to A; A the best of the mid budgets; D the best, slow
C = variant("tiny", 4.0, 10.0, 5.0)
B = variant("cheap", 15.0, 20.0, 11.0, {"Car": 32.2, "Pedestrian": 0.01, "Cyclist": 0.8})
A = variant("accurate", 40.0, 50.0, 11.4, {"Car": 30.0, "Pedestrian": 2.0, "Cyclist": 2.2})
D = variant("large", 150.0, 200.0, 14.0)
RECORDS = [A, B, C, D]
GAINS = [gain("cheap", "tiny", 6.0, 4.0, 8.0), gain("accurate", "tiny", 6.4, 4.5, 8.2),
         gain("accurate", "cheap", 0.4, -0.5, 1.3),                      # A and B: not distinguishable
         gain("large", "tiny", 9.0, 7.0, 11.0), gain("large", "cheap", 3.0, 1.9, 4.1),
         gain("large", "accurate", 2.6, 1.5, 3.7)]


def test_frontier_and_the_intervals_any_budget_can_need():
    assert [c["key"] for c in frontier(RECORDS)] == ["tiny", "cheap", "accurate", "large"]
    pairs = needed_pairs(RECORDS)
    assert set(pairs) == {(g["model"], g["reference"]) for g in GAINS}
    slow_and_weak = variant("slow_weak", 90.0, 120.0, 9.0)            # beaten by a cheaper one: never the best
    assert "slow_weak" not in {model for model, _ in needed_pairs([*RECORDS, slow_and_weak])}


def test_the_cheaper_wins_a_tie_within_the_interval():
    choice = select(RECORDS, GAINS, 60.0)
    assert choice.best["key"] == "accurate" and choice.chosen["key"] == "cheap"
    assert choice.versus_best == GAINS[2] and choice.fitting == 3
    text = choice.sentence()
    assert "ship cheap fp32 on onnxruntime-cpu (gfl), mAP50 11.00 [9.50, 12.50], latency p50-p90 15.0-20.0 ms" in text
    assert "not distinguishable from it (difference +0.40 [-0.50, +1.30] includes 0), so the cheaper is chosen" in text
    assert select(RECORDS, GAINS, 60.0).as_dict()["chosen"] == "cheap"


def test_a_clear_gap_keeps_the_more_accurate_and_says_what_it_beats():
    choice = select(RECORDS, GAINS, 250.0)
    assert choice.chosen["key"] == "large" and choice.best["key"] == "large" and choice.fitting == 4
    assert choice.next_cheaper[0]["key"] == "accurate"
    assert "the most accurate of the 4 variants that fit" in choice.sentence()
    assert "+2.60 [+1.50, +3.70]" in choice.sentence()
    assert select(RECORDS, GAINS, 15.0).chosen["key"] == "tiny"         # only the fastest fits
    assert select(RECORDS, GAINS, 20.0).chosen["key"] == "cheap"        # p90 equal to the budget fits


def test_a_missing_interval_is_not_taken_for_a_tie():
    without = [g for g in GAINS if (g["model"], g["reference"]) != ("accurate", "cheap")]
    assert select(RECORDS, without, 60.0).chosen["key"] == "accurate"


def test_a_budget_nothing_fits_says_so_and_names_the_fastest():
    choice = select(RECORDS, GAINS, 5.0)
    assert choice.chosen is None and choice.fastest["key"] == "tiny"
    assert choice.sentence() == ("budget 5 ms (p90): nothing fits; the fastest variant, tiny fp32 on "
                                 "onnxruntime-cpu (gfl), has p90 10.0 ms (p50-p90 4.0-10.0 ms)")
    assert select([], [], 5.0).chosen is None


def test_a_class_below_one_ap50_is_named():
    assert unlearned_line("gkd_bmfi-resnet18", {"Car": 32.2, "Pedestrian": 0.01, "Cyclist": 0.04}) == \
        "gkd_bmfi-resnet18 has not learned Pedestrian (AP50 0.01), Cyclist (0.04)"
    assert unlearned_line("teacher-resnet101", {"Car": 50.0, "Pedestrian": 1.0}) is None


def test_per_class_rows_and_kitti_difficulties():
    kitti = {f"{c}_{d}": v for c, v in (("Car", 40.0), ("Pedestrian", 0.0), ("mAP", 13.3))
             for d in ("easy", "moderate", "hard")}
    lines = per_class_markdown([("gkd_bmfi-resnet18", {"mAP50": 10.75, "kitti": kitti, "per_class": {
        "Car": {"AP50": 32.2}, "Pedestrian": {"AP50": 0.01}}}), ("teacher-resnet101", None)])
    assert lines[0] == "| model | mAP50 | Car AP50 | Pedestrian AP50 | not learned (AP50 < 1) |"
    assert "| gkd_bmfi-resnet18 | 10.75 | 32.20 | 0.01 | Pedestrian |" in lines
    assert "| teacher-resnet101 | - | - | - | - |" in lines
    assert "| gkd_bmfi-resnet18 | 40.0 / 40.0 / 40.0 | 0.0 / 0.0 / 0.0 | 13.3 / 13.3 / 13.3 |" in lines
    assert "- gkd_bmfi-resnet18 has not learned Pedestrian (AP50 0.01)." in lines
    assert per_class_markdown([("baseline-resnet18", {"mAP50": 3.0})]) == []


# ------------------------------------------------------------------------------ gkd-bmfi select
def ship_file(tmp_path: Path) -> Path:
    path = tmp_path / "ship.json"
    path.write_text(json.dumps({"budgets_ms": [5, 60], "datasets": {"synthetic": {
        "candidates": RECORDS, "gains": GAINS, "hardware": ["x86_64, 2 CPU threads"]}}}))
    return path


def test_select_prints_the_choice_with_its_interval_and_latency_spread(tmp_path, capsys):
    cli_main(["select", "--budget-ms", "60", "--ship", str(ship_file(tmp_path))])
    out = capsys.readouterr().out
    assert "synthetic: budget 60 ms (p90): ship cheap fp32 on onnxruntime-cpu (gfl), mAP50 11.00 [9.50, 12.50], " \
           "latency p50-p90 15.0-20.0 ms" in out
    assert ("synthetic: cheap fp32 on onnxruntime-cpu (gfl) has not learned Pedestrian (AP50 0.01), "
            "Cyclist (0.80).") in out
    assert "measured on x86_64, 2 CPU threads" in out
    cli_main(["select", "--budget-ms", "5", "--ship", str(ship_file(tmp_path)), "--dataset", "synthetic"])
    assert "nothing fits; the fastest variant, tiny" in capsys.readouterr().out


@pytest.mark.parametrize("args, content, expected", [
    (["--budget-ms", "0"], None, "error: --budget-ms 0: give a positive number of milliseconds"),
    (["--budget-ms", "60", "--dataset", "kitti"], None, "error: --dataset kitti: "),
    (["--budget-ms", "60"], {"datasets": {"synthetic": {"candidates": [{"key": "a", "p50_ms": 1.0}], "gains": []}}},
     "datasets.synthetic.candidates[0].p90_ms = None is not a finite number; re-run the ship stage"),
    (["--budget-ms", "60"], "{not json", "not valid json"),
])
def test_select_refuses_bad_input_with_one_line(tmp_path, capsys, args, content, expected):
    path = ship_file(tmp_path)
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(SystemExit) as info:
        cli_main(["select", *args, "--ship", str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and expected in err, err


def test_a_missing_record_names_the_stage_that_writes_it(tmp_path):
    with pytest.raises(UserError, match=r"missing.json: no such file; run the ship stage \(dvc repro ship\)"):
        read_ship(tmp_path / "missing.json")
    assert check_ship({"datasets": {"synthetic": {"candidates": RECORDS, "gains": GAINS}}}, Path("x"))


# ------------------------------------------------------------------------------ the ship stage
VAL = {"info": {"dataset": "tiny", "format": "kitti", "image_root": "images", "split": "val"},
       "categories": [{"id": 1, "name": "Car"}, {"id": 2, "name": "Pedestrian"}],
       "images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(6)],
       "annotations": [{"id": 2 * i + k + 1, "image_id": i, "category_id": k + 1, "bbox": [10 + 40 * k, 10, 30, 30],
                        "area": 900, "iscrowd": 0, "ignore": 0} for i in range(6) for k in range(2)]}


def detections(find_pedestrians: bool) -> dict[int, Detections]:
    """Every Car found; Pedestrians only when asked (else a false positive)."""
    out = {}
    for i in range(6):
        boxes = [[10, 10, 40, 40], [50, 10, 80, 40] if find_pedestrians else [0, 60, 20, 90]]
        out[i] = Detections(torch.tensor(boxes, dtype=torch.float32), torch.tensor([0.9, 0.8]), torch.tensor([0, 1]))
    return out


def bench(model: str, backends: dict[str, tuple[float, float]], **extra) -> dict:
    return {"dataset": "tiny", "detector": "gfl", "model": model, "backbone": "resnet18", "cpu_threads": 2,
            "host": {"machine": "x86_64", "processor": "x86_64"}, **extra,
            "backends": {b: {"p50_ms": p50, "p90_ms": p90, "mAP50": 0.0} for b, (p50, p90) in backends.items()}}


def test_ship_stage_ranks_every_exported_and_qat_variant(tmp_path, monkeypatch, capsys):
    import yaml

    from stages import ship as ship_stage
    from stages.benchmark_plot import main as plot_main

    monkeypatch.chdir(tmp_path)
    Path("data/curated/tiny").mkdir(parents=True)
    Path("data/curated/tiny/val.json").write_text(json.dumps(VAL))
    Path("params.yaml").write_text(yaml.safe_dump({
        "datasets": ["tiny"], "sources": {"tiny": {"format": "kitti"}},
        "deploy": {"models": ["baseline-resnet18"], "budgets_ms": [5, 30, 100]},
        "qat": {"models": ["baseline-resnet18"]}}))
    root = Path("metrics/benchmark/tiny/gfl")
    (root / "qat" / "gkd_bmfi").mkdir(parents=True)
    (root / "baseline-resnet18.json").write_text(json.dumps(bench("baseline-resnet18", {
        "pytorch-cpu-fp32": (50.0, 60.0), "onnxruntime-cpu-fp32": (20.0, 25.0), "onnxruntime-cpu-fp16": (30.0, 40.0)})))
    (root / "qat" / "gkd_bmfi" / "baseline-resnet18.json").write_text(json.dumps(bench(
        "baseline_qat_gkd_bmfi-resnet18", {"onnxruntime-cpu-int8": (40.0, 45.0)}, parent="baseline-resnet18",
        qat_method="gkd_bmfi")))
    save_detections(Path("detections/tiny/gfl/baseline-resnet18.npz"), detections(False))       # evaluate stage
    save_detections(Path("detections/benchmark/tiny/gfl/baseline-resnet18/onnxruntime-cpu-fp32.npz"), detections(False))
    save_detections(Path("detections/benchmark/tiny/gfl/qat/gkd_bmfi/baseline-resnet18/onnxruntime-cpu-int8.npz"),
                    detections(True))
    ship_stage.main([])
    ship = json.loads(Path("reports/ship.json").read_text())
    block = ship["datasets"]["tiny"]
    assert ship["budgets_ms"] == [5, 30, 100]
    keys = {c["key"] for c in block["candidates"]}
    assert keys == {"gfl/baseline-resnet18/none/pytorch-cpu-fp32", "gfl/baseline-resnet18/none/onnxruntime-cpu-fp32",
                    "gfl/baseline-resnet18/QAT+gkd_bmfi/onnxruntime-cpu-int8"}
    assert len(block["not_ranked"]) == 1 and "onnxruntime-cpu-fp16: no val detections" in block["not_ranked"][0]
    qat = next(c for c in block["candidates"] if c["quantization"] == "QAT+gkd_bmfi")
    fp32 = next(c for c in block["candidates"] if c["backend"] == "onnxruntime-cpu-fp32")
    assert qat["per_class"]["Pedestrian"]["AP50"] == pytest.approx(100.0)
    assert fp32["per_class"] == {"Car": {"AP50": pytest.approx(100.0)}, "Pedestrian": {"AP50": 0.0}}
    assert fp32["mAP50"] == pytest.approx(50.0) and fp32["mAP50_low"] <= 50.0 <= fp32["mAP50_high"]
    chosen = [c["chosen"] for c in block["choices"]]
    assert chosen == [None, fp32["key"], qat["key"]]        # 5 ms: nothing; 30 ms: fp32 ORT; 100 ms: the QAT file
    out = capsys.readouterr().out
    assert "budget 5 ms (p90): nothing fits" in out
    plot_main(["tiny", "gfl"])
    assert Path("plots/benchmark/tiny_gfl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.isfinite([g["low"] for g in block["gains"]]).all()
