"""The quantization table: per student, float32 against post-training int8, QAT int8 and QAT+KD int8.

Rows per parent model (a model of ``qat.models``):

* ``fp32``: the parent in PyTorch (its evaluate stage's detections; the export parity gate ties
  ONNX Runtime's fp32 graph to it);
* ``int8 PTQ``: the parent's ``model-int8.onnx`` (onnxruntime's ``quantize_static``);
* ``int8 QAT`` / ``int8 QAT+<method>``: the qat stages' ``model-int8.onnx``.

int8 files are scored with their Q/DQ as written (the arithmetic TensorRT implements,
:class:`pipeline.deploy.runtime.OnnxBackend`). Each int8 row carries its mAP50 difference to fp32
and, for QAT rows, to PTQ, with paired bootstrap 95% intervals over the val images
(:func:`pipeline.metrics.bootstrap.paired_gain`), and its ONNX Runtime CPU latency, timed in one
interleaved run with the others (so the ratios hold even on a busy machine).
"""
from __future__ import annotations

from typing import Any

from pipeline.metrics.bootstrap import ImageMatches, paired_gain, weighted_ap50


def variant_label(method: str) -> str:
    """``none`` -> ``int8 QAT``; a KD method -> ``int8 QAT+<method>``."""
    return "int8 QAT" if method == "none" else f"int8 QAT+{method}"


def qat_rows(parent: str, matches: dict[str, ImageMatches], latency: dict[str, dict[str, float]],
             own_float: dict[str, dict[str, Any]] | None = None, resamples: int = 1000) -> list[dict[str, Any]]:
    """The rows of one parent. ``matches`` and ``latency`` are keyed by variant label
    (``fp32``, ``int8 PTQ``, :func:`variant_label`); missing variants are left out. ``own_float``:
    per QAT variant its qat_export metrics (``mAP50_float_weights``, ``int8_vs_float_weights``: the
    fine-tuned weights without quantization)."""
    import numpy as np

    rows = []
    fp32, ptq = matches.get("fp32"), matches.get("int8 PTQ")
    for label, m in matches.items():
        row: dict[str, Any] = {"parent": parent, "variant": label,
                               "mAP50": weighted_ap50(m, np.ones(m.num_images)), **latency.get(label, {})}
        if fp32 is not None and label != "fp32":
            row["vs_fp32"] = paired_gain([m], [fp32], resamples).as_dict()
        if ptq is not None and label.startswith("int8 QAT"):
            row["vs_ptq"] = paired_gain([m], [ptq], resamples).as_dict()
        if label == "int8 PTQ" and "vs_fp32" in row:
            row["float_weights_mAP50"], row["vs_float_weights"] = rows[0]["mAP50"], row["vs_fp32"]
        elif own_float and label in own_float:
            row["float_weights_mAP50"] = own_float[label]["mAP50_float_weights"]
            row["vs_float_weights"] = own_float[label]["int8_vs_float_weights"]
        rows.append(row)
    return rows


def _ci(record: dict[str, float] | None) -> str:
    if not record:
        return "-"
    return f"{record['gain']:+.2f} [{record['low']:+.2f}, {record['high']:+.2f}]"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def reading(rows: list[dict[str, Any]]) -> list[str]:
    """One plain sentence per QAT row: within 0.5 mAP50 of fp32? better than PTQ? what int8 costs
    against its own float weights?"""
    out = []
    for r in rows:
        if "vs_ptq" not in r or "vs_fp32" not in r:
            continue
        f, p = r["vs_fp32"], r["vs_ptq"]
        near = ("no drop" if f["gain"] >= 0 else "a drop within 0.5" if f["gain"] >= -0.5
                else "a drop larger than 0.5")
        vs = ("above" if p["low"] > 0 else "below" if p["high"] < 0 else "not distinguishable from")
        own = r.get("vs_float_weights")
        cost = f"; against its own float weights {_ci(own)}" if own else ""
        out.append(f"- {r['parent']} {r['variant']}: {f['gain']:+.2f} mAP50 against fp32 ({near}; interval "
                   f"{_ci(f)}), {p['gain']:+.2f} against post-training int8, {vs} it (interval {_ci(p)}){cost}.")
    return out


def markdown(dataset: str, detector: str, rows: list[dict[str, Any]], threads: int) -> str:
    lines = [f"# Quantization-aware training: {dataset} / {detector}", "",
             "mAP50 on the val split; int8 files scored with their Q/DQ as written (TensorRT's arithmetic). "
             "Differences with paired bootstrap 95% intervals over the val images. Latency: ONNX Runtime CPU, "
             f"batch 1, {threads} threads, all files timed in one interleaved run.", "",
             "`own float weights`: the same weights with the quantizers off (for QAT, the fine-tuned ones), "
             "so `int8 vs own float` is what int8 itself costs and `vs fp32` adds the fine-tuning's effect.", "",
             "| model | variant | mAP50 | vs fp32 | vs int8 PTQ | own float weights | int8 vs own float | p50 ms | "
             "p90 ms | p99 ms | img/s |",
             "| --- | --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['parent']} | {r['variant']} | {_num(r['mAP50'])} | {_ci(r.get('vs_fp32'))} | "
                     f"{_ci(r.get('vs_ptq'))} | {_num(r.get('float_weights_mAP50'))} | "
                     f"{_ci(r.get('vs_float_weights'))} | {_num(r.get('p50_ms'))} | {_num(r.get('p90_ms'))} | "
                     f"{_num(r.get('p99_ms'))} | {_num(r.get('throughput_ips'), 1)} |")
    said = reading(rows)
    if said:
        lines += ["", "Reading:", *said]
    return "\n".join(lines) + "\n"
