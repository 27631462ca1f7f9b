"""``gkd-bmfi build``: TensorRT engines built on the target itself from an export's ONNX files.

A TensorRT plan runs only on the GPU model and TensorRT version that built it, so engines for a
vehicle are built on the vehicle. This builds ``model-<precision>.engine`` from the files the
manifest marks for TensorRT (``runtime`` naming ``tensorrt``: ``model.onnx``, ``model-fp16.onnx``,
``model-int8.onnx``) exactly as the export stage does (:func:`pipeline.deploy.tensorrt_build.build_engine`:
strongly typed, ROIAlign plugin, a timing cache, the batch profile), records each in the folder's
``manifest.json`` with the GPU name, compute capability and TensorRT version, and prints the
equivalent ``trtexec`` command line first (also where TensorRT is missing, which then ends with
one line saying so).

Batch profile: the one already recorded in the manifest (an engine's ``profile``, or the
``tensorrt`` record's), else ``1 .. --max-batch`` with ``--opt-batch`` for a dynamic-batch export
(defaults 8 and 1, as ``deploy.tensorrt`` in params.yaml) and the export's own batch for a
fixed one (:func:`pipeline.deploy.tensorrt_build.profile_shapes`).
"""
from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.deploy.manifest import MANIFEST, artifact_entry, read_manifest
from pipeline.deploy.tensorrt_build import build_engine, profile_shapes, tensorrt_unavailable
from pipeline.errors import UserError

PRECISIONS = ("fp32", "fp16", "int8")
#: ``deploy.tensorrt``'s defaults in params.yaml, for an export whose manifest records no profile.
DEFAULT_MAX_BATCH, DEFAULT_OPT_BATCH, DEFAULT_WORKSPACE_MIB = 8, 1, 2048
TIMING_CACHE = "timing.cache"


def tensorrt_sources(manifest: dict[str, Any], precisions: list[str] | None) -> dict[str, str]:
    """``precision -> ONNX file`` of the files meant for TensorRT (all of them, or ``precisions``);
    one line naming a precision the export has no TensorRT file for."""
    have = {e.get("precision"): name for name, e in manifest["artifacts"].items()
            if e.get("kind") == "onnx" and "tensorrt" in str(e.get("runtime", "")) and e.get("precision") in PRECISIONS}
    wanted = list(dict.fromkeys(precisions or [p for p in PRECISIONS if p in have]))
    missing = [p for p in wanted if p not in have]
    if missing or not wanted:
        listed = ", ".join(f"{p} ({n})" for p, n in have.items()) or "none"
        raise UserError(f"--precision {missing[0] if missing else '-'}: this export has no ONNX file for TensorRT in "
                        f"that precision (it has {listed}); pick from those")
    return {p: have[p] for p in wanted}


def recorded_profile(manifest: dict[str, Any]) -> tuple[dict[str, list[int]] | None, int | None]:
    """The batch profile and workspace the export stage recorded (an engine entry's, or the
    ``tensorrt`` record's), ``(None, None)`` when it built none."""
    for entry in [*manifest["artifacts"].values(), manifest.get("tensorrt") or {}]:
        if isinstance(entry, dict) and isinstance(entry.get("profile"), dict):
            return entry["profile"], entry.get("workspace_mib")
    return None, None


def engine_profile(manifest: dict[str, Any], max_batch: int | None, opt_batch: int | None) -> dict[str, list[int]]:
    """The ``images`` profile to build with: the recorded one unless a batch option overrides it."""
    recorded, _ = recorded_profile(manifest)
    if recorded is not None and max_batch is None and opt_batch is None:
        return recorded
    inp = manifest["input"]
    return profile_shapes(inp["shape"], bool(inp.get("dynamic_batch")), max_batch or DEFAULT_MAX_BATCH,
                          opt_batch or DEFAULT_OPT_BATCH)


def trtexec_command(onnx: Path, engine: Path, shapes: dict[str, list[int]], workspace_mib: int,
                    dynamic: bool) -> str:
    """The ``trtexec`` line that builds the same engine (strongly typed, same profile, workspace and
    timing cache; trtexec loads TensorRT's plugin library itself)."""
    args = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", "--stronglyTyped"]
    if dynamic:      # a static graph takes no shapes
        for key in ("min", "opt", "max"):
            shape = shapes[key]
            args.append(f"--{key}Shapes=images:{'x'.join(map(str, shape))},image_sizes:{shape[0]}x2")
    args += [f"--memPoolSize=workspace:{workspace_mib}M", f"--timingCacheFile={engine.parent / TIMING_CACHE}"]
    return " ".join(shlex.quote(a) for a in args)


def write_manifest_atomically(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)


def build(folder: Path, precisions: list[str] | None = None, max_batch: int | None = None,
          opt_batch: int | None = None, workspace_mib: int | None = None,
          say: Callable[[str], object] = print) -> dict[str, dict[str, Any]]:
    """Build the engines of the export ``folder``, say the trtexec line of each, record them in its
    manifest; returns the new engine entries. Without TensorRT or a GPU: one line (after the
    trtexec lines), nothing written."""
    manifest = read_manifest(folder)
    sources = tensorrt_sources(manifest, precisions)
    for name in sources.values():
        artifact_entry(manifest, folder, name)           # the file the export wrote (sha256)
    shapes = engine_profile(manifest, max_batch, opt_batch)
    workspace = workspace_mib or recorded_profile(manifest)[1] or DEFAULT_WORKSPACE_MIB
    dynamic = bool(manifest["input"].get("dynamic_batch"))
    for precision, name in sources.items():
        say(trtexec_command(folder / name, folder / f"model-{precision}.engine", shapes, workspace, dynamic))
    reason = tensorrt_unavailable()
    if reason is not None:
        raise UserError(f"{folder}: cannot build TensorRT engines here: {reason}; or run the trtexec lines above")
    return record_engines(folder, manifest, sources, shapes, workspace)  # pragma: no cover - needs TensorRT


def record_engines(folder: Path, manifest: dict[str, Any], sources: dict[str, str], shapes: dict[str, list[int]],
                   workspace: int, build_one: Callable[..., dict[str, Any]] = build_engine) -> dict[str, dict[str, Any]]:
    """Build each engine under a temporary name, then move all into place and record them in the
    manifest (``tensorrt``: version, GPU, compute capability, engines, profile): a failed build
    leaves the folder as it was."""
    built: dict[str, dict[str, Any]] = {}
    try:
        for precision, name in sources.items():
            engine = f"model-{precision}.engine"
            entry = build_one(folder / name, folder / f".{engine}.tmp", shapes, workspace, folder / TIMING_CACHE)
            built[engine] = {**entry, "precision": precision, "runtime": "tensorrt", "built_by": "gkd-bmfi build",
                             "recipe": manifest["artifacts"][name].get("recipe")}
    except BaseException:
        for precision in sources:
            (folder / f".model-{precision}.engine.tmp").unlink(missing_ok=True)
        raise
    for engine in built:
        os.replace(folder / f".{engine}.tmp", folder / engine)
    manifest["artifacts"].update(built)
    first = next(iter(built.values()))
    engines = sorted(n for n, e in manifest["artifacts"].items() if e.get("kind") == "engine")
    manifest["tensorrt"] = {"tensorrt_version": first["tensorrt_version"], "gpu_name": first["gpu_name"],
                            "compute_capability": first["compute_capability"], "engines": engines,
                            "profile": shapes, "workspace_mib": workspace}
    write_manifest_atomically(folder, manifest)
    return built
