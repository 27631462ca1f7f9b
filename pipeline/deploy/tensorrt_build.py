"""Build TensorRT engines from the precision-specific ONNX files (TensorRT 10/11 Python API).

Precision lives in the ONNX (fp16 casts, int8 Q/DQ), so every network is built STRONGLY_TYPED:
TensorRT 11 removed the FP16/INT8 builder flags and calibrators. The ONNX ``NonMaxSuppression``
maps to TensorRT's native NMS layer. Each build uses an optimisation profile over the batch
dimension and a timing cache; the plan is written as is (``model-<precision>.engine``, no
metadata prepended) and described by an entry of ``manifest.json``.

Without TensorRT or a GPU, :func:`build_engines` returns ``{"skipped": "<why>"}`` instead of
failing, so the export stage runs everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.deploy.manifest import sha256
from pipeline.errors import UserError


def tensorrt_unavailable() -> str | None:
    """Why engines cannot be built here, or ``None`` when TensorRT and a GPU are present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ("tensorrt is not installed (pip install '.[tensorrt]'; its wheels download from NVIDIA's "
                "index, which this machine cannot reach)")
    try:  # pragma: no cover - only reached with TensorRT installed
        from pipeline.deploy.runtime import _cudart, gpu_identity

        gpu_identity(_cudart())
    except UserError as err:  # pragma: no cover
        return f"no usable CUDA GPU ({err})"
    return None  # pragma: no cover


def skipped_record(reason: str) -> dict[str, str]:
    """The manifest's ``tensorrt`` record when no engine is built."""
    return {"skipped": reason}


# ---------------------------------------------------------------------------------------------
# NOT EXECUTED ON THE PROJECT'S MACHINES (no TensorRT, no GPU): everything below this line.
# Written against the documented TensorRT 10/11 Python API; reviewed, not run. The pure-python
# parts around it (skip record, manifest checks) are tested.
# ---------------------------------------------------------------------------------------------


def build_engine(onnx_path: Path, engine_path: Path, input_hw: tuple[int, int], max_batch: int,
                 opt_batch: int, workspace_mib: int, cache_path: Path) -> dict[str, Any]:  # pragma: no cover
    """Parse ``onnx_path`` into a strongly typed network and serialise its plan to ``engine_path``.

    Returns the engine's manifest entry (without precision/recipe, which the caller adds).
    """
    import tensorrt as trt

    from pipeline.deploy.runtime import _cudart, gpu_identity

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    h, w = input_hw
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, h, w), (opt_batch, 3, h, w), (max_batch, 3, h, w))
    profile.set_shape("image_sizes", (1, 2), (opt_batch, 2), (max_batch, 2))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    engine_path.write_bytes(bytes(plan))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    gpu_name, capability = gpu_identity(_cudart())
    return {"kind": "engine", "source_onnx": onnx_path.name, "onnx_sha256": sha256(onnx_path),
            "sha256": sha256(engine_path), "tensorrt_version": trt.__version__, "gpu_name": gpu_name,
            "compute_capability": capability, "strongly_typed": True,
            "profile": {"min": [1, 3, h, w], "opt": [opt_batch, 3, h, w], "max": [max_batch, 3, h, w]},
            "timing_cache": cache_path.name, "workspace_mib": workspace_mib}


def build_engines(folder: Path, onnx_files: dict[str, str], input_hw: tuple[int, int], max_batch: int,
                  opt_batch: int, workspace_mib: int) -> tuple[dict[str, Any], dict[str, dict]]:
    """Build ``model-<precision>.engine`` for each ``precision -> onnx file`` in ``folder``.

    Returns the manifest's ``tensorrt`` record and the new artifact entries (file -> entry);
    ``({"skipped": why}, {})`` when TensorRT or a GPU is missing.
    """
    reason = tensorrt_unavailable()
    if reason is not None:
        return skipped_record(reason), {}
    import tensorrt as trt  # pragma: no cover

    entries = {}  # pragma: no cover
    for precision, onnx_name in onnx_files.items():  # pragma: no cover
        engine = folder / f"model-{precision}.engine"
        entry = build_engine(folder / onnx_name, engine, input_hw, max_batch, opt_batch, workspace_mib,
                             folder / "timing.cache")
        entries[engine.name] = {**entry, "precision": precision}
    first = next(iter(entries.values()), {})  # pragma: no cover
    return {"tensorrt_version": trt.__version__, "gpu_name": first.get("gpu_name"),  # pragma: no cover
            "compute_capability": first.get("compute_capability"), "engines": sorted(entries)}, entries
