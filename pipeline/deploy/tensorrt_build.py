"""Build TensorRT engines from the precision-specific ONNX files (TensorRT 10/11 Python API).

Precision lives in the ONNX (fp16 casts, int8 Q/DQ), so every network is built STRONGLY_TYPED:
TensorRT 11 removed the FP16/INT8 builder flags and calibrators. The ONNX ``NonMaxSuppression``
maps to TensorRT's native NMS layer; RoiAlign to the ROIAlign plugin, so the plugin library is
initialised first. Each build uses an optimisation profile over the batch dimension (fixed for a
fixed-batch export, :func:`profile_shapes`) and a timing cache; the plan is written as is (``model-<precision>.engine``, no
metadata prepended) and described by an entry of ``manifest.json``.

Without TensorRT or a GPU, :func:`build_engines` returns ``{"skipped": "<why>"}`` instead of
failing, so the export stage runs everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.deploy import cuda
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
        cuda.gpu_identity(cuda.cudart())
    except UserError as err:  # pragma: no cover
        return f"no usable CUDA GPU ({err})"
    return None  # pragma: no cover


def skipped_record(reason: str) -> dict[str, str]:
    """The manifest's ``tensorrt`` record when no engine is built."""
    return {"skipped": reason}


def profile_shapes(input_shape: list[int] | tuple[int, ...], dynamic_batch: bool, max_batch: int,
                   opt_batch: int) -> dict[str, list[int]]:
    """The optimisation profile of the ``images`` input: ``{min, opt, max}``, each ``[N, 3, H, W]``.

    A fixed-batch export (``dynamic_batch: false``) gets its own batch for all three, so TensorRT
    never plans for shapes the graph cannot take; a dynamic one gets ``1 .. max_batch`` with
    ``opt_batch`` clamped into that range. ``image_sizes`` follows with ``[N, 2]``.
    """
    n, c, h, w = (int(v) if isinstance(v, int) or str(v).isdigit() else -1 for v in input_shape)
    if not dynamic_batch:
        if n < 1:
            raise UserError(f"a fixed-batch export needs a fixed batch in its input shape, got {list(input_shape)}")
        fixed = [n, c, h, w]
        return {"min": fixed, "opt": fixed, "max": fixed}
    if max_batch < 1:
        raise UserError(f"deploy.tensorrt.max_batch = {max_batch} must be >= 1")
    opt = min(max(1, opt_batch), max_batch)
    return {"min": [1, c, h, w], "opt": [opt, c, h, w], "max": [max_batch, c, h, w]}


# ---------------------------------------------------------------------------------------------
# NOT EXECUTED ON THE PROJECT'S MACHINES (no TensorRT, no GPU): everything below this line.
# Written against the documented TensorRT 10/11 Python API; reviewed, not run. The pure-python
# parts around it (skip record, manifest checks) are tested.
# ---------------------------------------------------------------------------------------------


def build_engine(onnx_path: Path, engine_path: Path, shapes: dict[str, list[int]], workspace_mib: int,
                 cache_path: Path) -> dict[str, Any]:  # pragma: no cover
    """Parse ``onnx_path`` into a strongly typed network and serialise its plan to ``engine_path``.

    ``shapes``: the ``images`` profile of :func:`profile_shapes`. Every TensorRT call that
    reports failure through its return value is checked. Returns the engine's manifest entry
    (without precision/recipe, which the caller adds).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    cuda.init_plugins(trt, logger)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", *(tuple(shapes[k]) for k in ("min", "opt", "max")))
    profile.set_shape("image_sizes", *((shapes[k][0], 2) for k in ("min", "opt", "max")))
    if not profile:   # an IOptimizationProfile is falsy when its shapes are inconsistent
        raise UserError(f"{onnx_path}: TensorRT rejected the optimisation profile {shapes}")
    if config.add_optimization_profile(profile) < 0:
        raise UserError(f"{onnx_path}: TensorRT could not add the optimisation profile {shapes}")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise UserError(f"{cache_path}: TensorRT refused the timing cache (from another TensorRT or GPU?); "
                        "delete it and rebuild")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    engine_path.write_bytes(bytes(plan))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    gpu_name, capability = cuda.gpu_identity(cuda.cudart())
    return {"kind": "engine", "source_onnx": onnx_path.name, "onnx_sha256": sha256(onnx_path),
            "sha256": sha256(engine_path), "tensorrt_version": trt.__version__, "gpu_name": gpu_name,
            "compute_capability": capability, "strongly_typed": True,
            "profile": shapes,
            "timing_cache": cache_path.name, "workspace_mib": workspace_mib}


def build_engines(folder: Path, onnx_files: dict[str, str], shapes: dict[str, list[int]],
                  workspace_mib: int) -> tuple[dict[str, Any], dict[str, dict]]:
    """Build ``model-<precision>.engine`` for each ``precision -> onnx file`` in ``folder``, all
    with the ``images`` profile ``shapes`` (:func:`profile_shapes`).

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
        entry = build_engine(folder / onnx_name, engine, shapes, workspace_mib, folder / "timing.cache")
        entries[engine.name] = {**entry, "precision": precision}
    first = next(iter(entries.values()), {})  # pragma: no cover
    return {"tensorrt_version": trt.__version__, "gpu_name": first.get("gpu_name"),  # pragma: no cover
            "compute_capability": first.get("compute_capability"), "engines": sorted(entries)}, entries
