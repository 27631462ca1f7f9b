"""Seed replicas: the same students trained again with another seed, in a workspace of their own.

A replica of ``(dataset, detector, student)`` under seed ``k`` lives in
``replicas/seed<k>/<dataset>/<detector>/<student>/`` (:func:`pipeline.artifacts.replica_workspace`):
a params.yaml equal to the project's but with ``seed: k`` (so the student's initial weights, the
data order and the augmentation change), links to the curated data and the teacher, and the
usual ``models/``, ``metrics/``, ``detections/`` and ``checkpoints/`` of the stage scripts run
inside it. The replicas are trained and scored by exactly the stage code of the main run; only
the seed differs.
``benchmarks/kd_claims.py`` uses the same workspaces for its seeds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys replaced, nested dicts merged key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def prepare(folder: Path, params: dict[str, Any], links: list[Path]) -> None:
    """Write ``folder/params.yaml`` and link each path of ``links`` (relative to the current
    folder) to the same relative place inside ``folder`` (relative links: the tree can move)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for target in links:
        name = folder / target
        name.parent.mkdir(parents=True, exist_ok=True)
        if name.is_symlink() or name.exists():
            continue
        name.symlink_to(os.path.relpath(Path(target).resolve(), name.parent.resolve()))


