"""The summary's int8 sensitivity tables: one per exported model, from its manifest's ``int8_sensitivity``.

Each row is a layer group (:mod:`pipeline.deploy.int8_sensitivity`): its Conv/Gemm count, the
mAP50 drop against fp32 with that group alone in int8 and with that group alone kept float32, and
whether the int8 files keep it in float32; under the table, the drop with everything int8 and the
float32 set's rule, measured drop and bound.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.deploy.manifest import MANIFEST, read_manifest


def model_table(name: str, record: dict) -> list[str]:
    """Markdown lines of one model's ``int8_sensitivity`` record."""
    chosen = record["float32"]
    kept = set(chosen["float32_groups"])
    lines = [f"#### {name}", "",
             "| layer group | Conv/Gemm | drop, only it int8 | drop, only it float32 | float32 in the int8 files |",
             "| --- | ---: | ---: | ---: | --- |"]
    for row in record["rows"]:
        lines.append(f"| {row['group']} | {record['groups'].get(row['group'], '-')} | "
                     f"{row['int8_alone_drop']:.2f} | {row['float32_alone_drop']:.2f} | "
                     f"{'yes' if row['group'] in kept else ''} |")
    bound = f", bound {chosen['max_drop']:g}" if chosen["rule"] == "auto" else ""
    lines += ["", f"Everything int8: drop {record['all_int8_drop']:.2f} (fp32 mAP50 {record['fp32_mAP50']:.2f} on "
              f"{record['num_images']} val images). Float32 set (`deploy.int8_float32: {chosen['rule']}`): "
              f"{', '.join(chosen['float32_groups']) or 'none'}, drop {chosen['drop']:.2f}{bound}.", ""]
    return lines


def sensitivity_section(exports_dir: Path) -> list[str]:
    """``### int8 sensitivity per layer group`` over every export under ``exports_dir`` (one
    dataset/detector) whose manifest has a table; ``[]`` when none has."""
    parts: list[str] = []
    for manifest in sorted(Path(exports_dir).glob(f"*/{MANIFEST}")):
        record = read_manifest(manifest.parent).get("int8_sensitivity")
        if record:
            parts += model_table(manifest.parent.name, record)
    if not parts:
        return []
    return ["### int8 sensitivity per layer group (export stage)", "",
            "mAP50 drop against fp32 in points (positive: int8 is worse), TensorRT int8 recipe with its Q/DQ as "
            "written, one calibration; \"only it int8\": every other group float32, \"only it float32\": every "
            "other group int8 (`pipeline/deploy/int8_sensitivity.py`).", "", *parts]
