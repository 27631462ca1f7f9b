"""Where things are, wherever ``gkd-bmfi`` runs from: the export a path names, the benchmark
figures of an export, the ship record, and the DVC stages that make them.

An export is named by its folder (``exports/<dataset>/<detector>/<model>/``), a file in it
(``.../model-int8.onnx``: that file), or any folder above holding exactly one export. The
benchmark json and ``reports/ship.json`` sit at fixed places relative to the repository; the
repository is found by walking up from the export folder (or the working directory), not
assumed to be the working directory.

Pure python (json only): the runtime's command line imports it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.artifacts import SHIP_PATH, benchmark_metrics_path
from pipeline.deploy.manifest import FORMAT, MANIFEST
from pipeline.errors import UserError

#: How deep below a given folder exports are looked for (``exports/<ds>/<det>/qat/<method>/<model>`` is 6).
SEARCH_DEPTH = 7
SHIP = SHIP_PATH


def is_export(folder: Path) -> bool:
    """``folder`` holds a manifest.json of this project's export format."""
    path = folder / MANIFEST
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return True       # a broken manifest is still an export: reading it says what is wrong
    return isinstance(data, dict) and data.get("format") == FORMAT


def exports_below(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Every export folder at most ``depth`` levels below ``root`` (hidden folders skipped; nothing
    is looked for inside an export)."""
    found = []
    base = len(root.parts)
    for here, dirs, _ in os.walk(root):
        folder = Path(here)
        if is_export(folder):
            found.append(folder)
            dirs[:] = []
            continue
        dirs[:] = [] if len(folder.parts) - base >= depth else sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def find_export(path: Path) -> tuple[Path, str | None]:
    """``(export folder, file name or None)`` of ``path``: an export folder, a file in one (its name;
    ``manifest.json`` counts as the folder), or a folder above exactly one export; else one line
    listing the choices."""
    path = Path(path)
    if path.is_file():
        if not (path.parent / MANIFEST).is_file():
            raise UserError(f"{path}: not in an export folder (no {MANIFEST} beside it); give an export folder "
                            "(exports/<dataset>/<detector>/<model>) or a file in one")
        return path.parent, None if path.name == MANIFEST else path.name
    if not path.is_dir():
        raise UserError(f"{path}: no such export folder or file; run the export stage (dvc repro export) or fix "
                        "the path")
    if (path / MANIFEST).is_file():
        return path, None
    found = exports_below(path)
    if len(found) == 1:
        return found[0], None
    if not found:
        raise UserError(f"{path}: no export in this folder or below it (no {MANIFEST}); give an export folder "
                        "(exports/<dataset>/<detector>/<model>) or run the export stage")
    raise UserError(f"{path}: holds {len(found)} exports, give one of: {', '.join(str(f) for f in found)}")


def is_qat(manifest: dict[str, Any]) -> bool:
    """A QAT export (``exports/<ds>/<det>/qat/<method>/<model>``), as its manifest's model record says."""
    return manifest["model"].get("qat_method") is not None


def stages(manifest: dict[str, Any]) -> dict[str, str]:
    """The DVC stages that write this export and time it (``export``/``benchmark``, or for a QAT
    export ``qat_export``/``benchmark_qat``)."""
    if is_qat(manifest):
        return {"export": "qat_export", "benchmark": "benchmark_qat"}
    return {"export": "export", "benchmark": "benchmark"}


def benchmark_relpath(manifest: dict[str, Any]) -> Path:
    """Where the benchmark stage writes this export's latencies, relative to the repository:
    ``metrics/benchmark/<ds>/<det>/<model>.json``, ``.../qat/<method>/<parent>.json`` for QAT."""
    m = manifest["model"]
    if is_qat(manifest):
        return benchmark_metrics_path(m["dataset"], m["detector"], m.get("parent", m["model"]), str(m["qat_method"]))
    return benchmark_metrics_path(m["dataset"], m["detector"], m["model"])


def up_from(start: Path, relative: Path) -> Path | None:
    """``<folder>/<relative>`` for the nearest of ``start`` and the folders above it that has it."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / relative).is_file():
            return folder / relative
    return None


def find_benchmark(folder: Path, manifest: dict[str, Any]) -> Path | None:
    """The benchmark json of the export in ``folder``: found from the export folder up (the
    repository holding it), whatever the working directory; ``None`` when not measured."""
    return up_from(folder, benchmark_relpath(manifest))


def find_ship(path: Path | None) -> Path:
    """The ship stage's record: ``path`` (the json, or a folder holding ``reports/ship.json`` or
    ``ship.json``), by default ``reports/ship.json`` of the working directory or a folder above it."""
    if path is None:
        found = up_from(Path.cwd(), SHIP)
        if found is None:
            raise UserError(f"{SHIP}: not found here or in a folder above; run the ship stage (dvc repro ship) "
                            "or pass --ship")
        return found
    path = Path(path)
    if path.is_dir():
        for candidate in (path / SHIP, path / SHIP.name):
            if candidate.is_file():
                return candidate
        raise UserError(f"--ship {path}: the folder holds no {SHIP} or {SHIP.name}; give the ship stage's json")
    return path
