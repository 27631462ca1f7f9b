"""The CUDA and TensorRT calls that running an engine and building one share: cuda-python's
runtime bindings, the GPU's identity (what an engine is tied to) and TensorRT's plugin library.

Imports nothing heavy at module level: cuda-python and TensorRT load when a function is called,
so :mod:`pipeline.deploy.runtime` and :mod:`pipeline.deploy.tensorrt_build` can import this on a
machine without either.

NOT EXECUTED ON THE PROJECT'S MACHINES beyond the missing-package messages (no TensorRT, no GPU);
written against cuda-python's runtime bindings and the TensorRT 10/11 Python API.
"""
from __future__ import annotations

from pipeline.errors import UserError


def cudart():  # pragma: no cover - needs cuda-python and a GPU (not on the project's machines)
    """cuda-python's runtime module (``cuda.bindings.runtime``, or the older ``cuda.cudart``)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise UserError("running an engine needs cuda-python: pip install '.[tensorrt]'") from None
    return runtime


def check(result):  # pragma: no cover - cuda-python calls return (error, value...)
    """The value(s) of a cuda-python call, or one line when it reports an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise UserError(f"CUDA error {err}; is a GPU visible (nvidia-smi)?")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_identity(runtime) -> tuple[str, str]:  # pragma: no cover - needs a GPU
    """``(GPU name, "major.minor")`` of device 0 (``runtime``: :func:`cudart`)."""
    props = check(runtime.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def init_plugins(trt, logger) -> None:  # pragma: no cover
    """Register TensorRT's plugin library (ROIAlign for Faster R-CNN's RoiAlign lives there);
    needed before parsing a graph or deserialising an engine."""
    if not trt.init_libnvinfer_plugins(logger, ""):
        raise UserError("TensorRT could not initialise its plugin library (libnvinfer_plugin); check the "
                        "TensorRT installation")
