"""What vehicle code imports: run an exported detector on camera images, no torch involved.

    from pipeline.deploy.runtime import DeployedDetector
    det = DeployedDetector("exports/kitti/gfl/gkd_bmfi-resnet18")             # model.onnx
    det = DeployedDetector("exports/kitti/gfl/gkd_bmfi-resnet18/model-int8.onnx")
    found = det.detect(rgb)          # rgb: [H, W, 3] uint8; scores >= 0.3 (DEFAULT_SCORE_THRESHOLD)
    found.boxes, found.scores, found.names    # x1,y1,x2,y2 in the image's own pixels
    found = det.detect(frame, bgr=True, score_threshold=0.5)   # an OpenCV/camera BGR frame

Dependencies: numpy (the training resize, :func:`pipeline.data.transforms.resize_bilinear`, so
preprocessing is bit-identical; cv2.INTER_LINEAR reproduces it within one grey level) and
onnxruntime, or tensorrt + cuda-python for ``model-<precision>.engine`` files. Every file is
checked against ``manifest.json`` (sha256, input shape); engines also against the installed
TensorRT version and the GPU.

ONNX Runtime execution providers: TensorRT, then CUDA, then CPU, whichever are available
(``providers=`` overrides); ``providers`` afterwards lists the ones the session really uses
(onnxruntime-gpu without a GPU silently falls back to CPU). ONNX Runtime's TensorRT provider keeps
its engines and timing cache in ``<export folder>/ort-trt-cache/``, so only the first start
builds them.

Threads: a detector holds one session (or one TensorRT execution context and CUDA stream) and
serialises its calls with a lock, so it can be shared; for inference in parallel, give each
thread its own ``DeployedDetector``. ``warmup()`` runs the model once per shape before the first
frame that matters (lazy initialisation, engine build of the ORT TensorRT provider).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data import transforms as T
from pipeline.deploy import cuda
from pipeline.deploy.manifest import artifact_entry, check_engine_compat, read_manifest
from pipeline.errors import UserError

#: The score a detection must reach by default, in ``DeployedDetector.detect``/``detect_batch`` and
#: ``gkd-bmfi detect --score`` alike (the graph itself keeps boxes from its NMS score threshold up).
DEFAULT_SCORE_THRESHOLD = 0.3
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ORT_TRT_CACHE = "ort-trt-cache"


def provider_settings(wanted: Sequence[str], cache_dir: Path) -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime's ``providers`` argument: the TensorRT provider with its engine and timing
    caches in ``cache_dir`` (built once, reused at every start), the others as they are."""
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in wanted:
        if name == "TensorrtExecutionProvider":
            out.append((name, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
                               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir)}))
        else:
            out.append(name)
    return out


class DeviceBuffers:
    """Device memory per tensor name, allocated once and grown only when a larger tensor comes,
    so steady-state calls allocate nothing (``malloc(nbytes) -> pointer``, ``free(pointer)``)."""

    def __init__(self, malloc: Callable[[int], int], free: Callable[[int], object]) -> None:
        self._malloc, self._free = malloc, free
        self._held: dict[str, tuple[int, int]] = {}

    def get(self, name: str, nbytes: int) -> int:
        """A pointer to at least ``nbytes`` bytes for ``name``."""
        held = self._held.get(name)
        if held is not None and held[1] >= nbytes:
            return held[0]
        if held is not None:
            self._free(held[0])
        pointer = self._malloc(max(int(nbytes), 1))
        self._held[name] = (pointer, max(int(nbytes), 1))
        return pointer

    def release(self) -> None:
        for pointer, _ in self._held.values():
            self._free(pointer)
        self._held.clear()


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image in its original pixels.

    Attributes:
        boxes: ``[K, 4]`` float32 x1,y1,x2,y2; scores: ``[K]`` float32, descending;
        labels: ``[K]`` int64 class index; names: ``K`` class names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class Prepared:
    """One preprocessed image: ``image [3, H, W]`` float32, ``size_hw`` resized size before
    padding, ``scale`` ``(sx, sy)`` = resized / original, ``orig_hw`` original size."""

    image: np.ndarray
    size_hw: tuple[int, int]
    scale: tuple[float, float]
    orig_hw: tuple[int, int]


def check_image(image: object) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 RGB array, or one clear line saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise UserError(f"image must be a numpy array [H, W, 3] uint8 RGB, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise UserError(f"image dtype is {image.dtype}, expected uint8 [H, W, 3] RGB "
                        "(convert with np.clip(x, 0, 255).astype(np.uint8))")
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"image shape is {tuple(image.shape)}, expected [H, W, 3] RGB "
                        "(grey: np.repeat(x[..., None], 3, 2); RGBA: x[..., :3])")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise UserError(f"image shape is {tuple(image.shape)}: empty image")
    return image


def check_score_threshold(score_threshold: object, name: str = "score_threshold") -> float:
    """``score_threshold`` as a float in ``[0, 1]``, or one line naming it (as ``name``) and the fix."""
    real = (int, float, np.integer, np.floating)
    if not isinstance(score_threshold, real) or isinstance(score_threshold, bool) \
            or not 0.0 <= float(score_threshold) <= 1.0:
        raise UserError(f"{name} = {score_threshold!r} must be a number in [0, 1] (e.g. 0.3)")
    return float(score_threshold)


def check_run_inputs(images: object, sizes: object, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``images`` ``[N, 3, H, W]`` float32 (preprocessed) and ``sizes`` ``[N, 2]`` finite (h, w) in
    ``(0, H] x (0, W]`` as arrays, or one line naming the argument that is wrong."""
    images, sizes = np.asarray(images), np.asarray(sizes)
    h, w = input_hw
    if images.dtype != np.float32:
        raise UserError(f"images dtype is {images.dtype}, expected float32 preprocessed pixels [N, 3, {h}, {w}] "
                        "(preprocess() gives them; raw uint8 images go to detect())")
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, h, w):
        raise UserError(f"images has shape {tuple(images.shape)}, expected [N, 3, {h}, {w}] (preprocess() "
                        "gives [3, H, W] per image: np.stack them)")
    n = images.shape[0]
    if sizes.shape != (n, 2):
        raise UserError(f"image_sizes has shape {tuple(sizes.shape)} for {n} images; expected [{n}, 2], one "
                        "(height, width) per image before padding (Prepared.size_hw)")
    if not (np.issubdtype(sizes.dtype, np.integer) or np.issubdtype(sizes.dtype, np.floating)):
        raise UserError(f"image_sizes dtype is {sizes.dtype}, expected float32 (height, width) numbers")
    bad = ~(np.isfinite(sizes) & (sizes > 0) & (sizes <= np.array([h, w]))).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"image_sizes[{i}] = {sizes[i].tolist()}: each (height, width) must be finite, above 0 and "
                        f"at most the input's {h}x{w} (Prepared.size_hw)")
    return images, sizes


def preprocess(image: np.ndarray, pre: dict) -> Prepared:
    """Keep-ratio resize, normalise, pad, as the manifest's ``preprocessing`` (the same functions
    as training, :mod:`pipeline.data.transforms`)."""
    image = check_image(image)
    box_w, box_h = pre["resize_wh"]
    pad_h, pad_w = pre["pad_hw"]
    resized, sx, sy = T.resize_image(image, box_w, box_h)
    chw = T.pad_to(T.normalize(resized, tuple(pre["mean"]), tuple(pre["std"])), pad_h, pad_w)
    return Prepared(chw, (int(resized.shape[0]), int(resized.shape[1])), (sx, sy),
                    (int(image.shape[0]), int(image.shape[1])))


def to_original(boxes: np.ndarray, prepared: Prepared) -> np.ndarray:
    """``[K, 4]`` input-pixel boxes -> original pixels, clipped (as ``Batch.to_original``)."""
    sx, sy = prepared.scale
    out = boxes.astype(np.float32) / np.array([sx, sy, sx, sy], dtype=np.float32)
    oh, ow = prepared.orig_hw
    out[:, 0::2] = out[:, 0::2].clip(0, ow)
    out[:, 1::2] = out[:, 1::2].clip(0, oh)
    return out


class OnnxBackend:
    """An ONNX Runtime session over one ONNX file.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers in preference order (default: TensorRT, CUDA, CPU,
            whichever this onnxruntime build offers).
        threads: CPU intra-op threads (``None``: onnxruntime's default).
        qdq_as_written: run Q/DQ pairs as the graph states them (onnxruntime's
            ``session.disable_quant_qdq``) instead of fusing them into its integer CPU kernels. The
            fused kernels move GFL scores by up to 0.013 from the graph's own arithmetic (measured on
            the default's QAT student; unfused: 4e-7), so accuracy gates of TensorRT-targeted int8
            files, whose arithmetic TensorRT implements, run unfused.
    """

    def __init__(self, path: Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 qdq_as_written: bool = False) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = list(providers) if providers else [p for p in PREFERRED_PROVIDERS if p in available]
        unknown = [p for p in wanted if p not in available]
        if unknown:
            raise UserError(f"execution provider {unknown[0]} is not available in this onnxruntime "
                            f"(available: {', '.join(available)})")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if qdq_as_written:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        if "TensorrtExecutionProvider" in wanted:
            (Path(path).parent / ORT_TRT_CACHE).mkdir(exist_ok=True)
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=provider_settings(wanted, Path(path).parent / ORT_TRT_CACHE))
        except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(f"{path}: onnxruntime cannot load it ({first}); the file is truncated or "
                            "not an exported model, re-run the export stage") from None
        self.providers = list(self.session.get_providers())
        self.input_shapes = {i.name: list(i.shape) for i in self.session.get_inputs()}

    def run(self, images: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        """``images [N, 3, H, W]``, ``sizes [N, 2]`` -> ``[num_dets, boxes, scores, labels]``."""
        return self.session.run(["num_dets", "boxes", "scores", "labels"], {"images": images, "image_sizes": sizes})


class TensorRTBackend:  # pragma: no cover
    """A TensorRT engine (plan) run with cuda-python.

    NOT EXECUTED ON THE PROJECT'S MACHINES beyond the missing-TensorRT message: TensorRT cannot
    be installed there (its wheels come from NVIDIA's index) and they have no GPU. Written
    against the TensorRT 10/11 Python API (``IRuntime.deserialize_cuda_engine``,
    ``IExecutionContext.set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) and
    cuda-python's runtime bindings.
    """

    def __init__(self, path: Path, entry: dict) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise UserError(f"{path}: running an engine needs TensorRT: pip install '.[tensorrt]' "
                            "(or use model.onnx with onnxruntime)") from None
        cudart = cuda.cudart()
        name, capability = cuda.gpu_identity(cudart)
        check_engine_compat(entry, path.name, trt.__version__, name, capability)
        self._trt, self._cudart = trt, cudart
        logger = trt.Logger(trt.Logger.WARNING)
        cuda.init_plugins(trt, logger)             # before deserialising: ROIAlign is a plugin
        self._runtime = trt.Runtime(logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"{path}: TensorRT could not deserialise the engine; rebuild it (dvc repro export)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"{path}: TensorRT could not create an execution context (GPU memory?)")
        self.stream = cuda.check(cudart.cudaStreamCreate())
        self.buffers = DeviceBuffers(lambda n: cuda.check(cudart.cudaMalloc(n)), cudart.cudaFree)
        self.providers = [f"TensorRT {trt.__version__}"]

    def run(self, images: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        trt, cudart = self._trt, self._cudart
        host = {"images": np.ascontiguousarray(images, np.float32),
                "image_sizes": np.ascontiguousarray(sizes, np.float32)}
        for name, array in host.items():
            if not self.context.set_input_shape(name, array.shape):
                raise UserError(f"TensorRT refused input {name} of shape {array.shape}: outside the engine's "
                                "optimisation profile (manifest: profile)")
        outputs = {}
        for name in ("num_dets", "boxes", "scores", "labels"):
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
        for name, array in {**host, **outputs}.items():
            if not self.context.set_tensor_address(name, self.buffers.get(name, array.nbytes)):
                raise UserError(f"TensorRT refused the device address of {name}")
        for name, array in host.items():
            cuda.check(cudart.cudaMemcpyAsync(self.buffers.get(name, array.nbytes), array.ctypes.data, array.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise UserError("TensorRT execution failed; rebuild the engine on this machine")
        for name, array in outputs.items():
            cuda.check(cudart.cudaMemcpyAsync(array.ctypes.data, self.buffers.get(name, array.nbytes), array.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        cuda.check(cudart.cudaStreamSynchronize(self.stream))
        return [outputs["num_dets"], outputs["boxes"], outputs["scores"], outputs["labels"]]


class DeployedDetector:
    """An exported detector with its manifest.

    Args:
        path: an export folder (its ``model.onnx``; a QAT export's only file, ``model-int8.onnx``)
            or a file in it: ``model.onnx``, ``model-fp16.onnx``, ``model-int8.onnx`` or
            ``model-<precision>.engine``.
        providers: ONNX Runtime execution providers (ignored for engines).
        threads: CPU threads for ONNX Runtime.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: no such export folder or file; run the export stage (dvc repro) or fix the path")
        folder, name = (path, None) if path.is_dir() else (path.parent, path.name)
        self.manifest = read_manifest(folder)
        if name is None:    # a folder: its fp32 graph, else its only ONNX file (a QAT export's model-int8.onnx)
            onnx_files = [n for n, e in self.manifest.get("artifacts", {}).items() if e.get("kind") == "onnx"]
            name = "model.onnx" if "model.onnx" in onnx_files or len(onnx_files) != 1 else onnx_files[0]
        self.path = folder / name
        self.entry = artifact_entry(self.manifest, folder, name)
        self.precision = self.entry["precision"]
        self.class_names = tuple(self.manifest["class_names"])
        self.input_hw = tuple(int(v) for v in self.manifest["input"]["shape"][2:])
        self.max_batch = None if self.manifest["input"].get("dynamic_batch") else 1
        pad_hw = self.manifest["preprocessing"]["pad_hw"]
        if tuple(pad_hw) != self.input_hw:
            raise UserError(f"{folder / 'manifest.json'}: preprocessing.pad_hw {pad_hw} differs from input.shape "
                            f"{list(self.input_hw)}; re-run the export stage")
        if self.entry.get("kind") == "engine":
            self.backend = TensorRTBackend(self.path, self.entry)
            self.max_batch = int(self.entry.get("profile", {}).get("max", [1])[0])  # pragma: no cover
        else:
            self.backend = OnnxBackend(self.path, providers, threads)
            shape = self.backend.input_shapes.get("images")
            if shape is None or [int(v) for v in shape[2:]] != list(self.input_hw):
                raise UserError(f"{self.path}: graph input images {shape} does not match the manifest's "
                                f"input.shape {self.manifest['input']['shape']}; re-run the export stage")
        self.providers = list(self.backend.providers)
        self._lock = threading.Lock()

    def warmup(self, iterations: int = 3, batch: int = 1) -> None:
        """Run ``iterations`` calls on a blank batch of ``batch`` images (first-call costs out of
        the way before the first real frame)."""
        h, w = self.input_hw
        images = np.zeros((batch, 3, h, w), np.float32)
        sizes = np.tile(np.array([[h, w]], np.float32), (batch, 1))
        for _ in range(int(iterations)):
            self.run(images, sizes)

    def preprocess(self, image: np.ndarray) -> Prepared:
        """See :func:`preprocess`."""
        return preprocess(image, self.manifest["preprocessing"])

    def run(self, images: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        """Raw graph outputs for preprocessed ``images [N, 3, H, W]`` and ``sizes [N, 2]`` (h, w):
        ``[num_dets [N, 1], boxes [N, K, 4], scores [N, K], labels [N, K]]``. ``N = 0`` gives
        empty outputs without running the model.

        Raises:
            UserError: one line naming the argument: images not float32 or not of the export's input
                shape, sizes not ``[N, 2]`` or not finite, positive and within the input.
        """
        images, sizes = check_run_inputs(images, sizes, self.input_hw)
        n = images.shape[0]
        if self.max_batch is not None and n > self.max_batch:
            raise UserError(f"{n} images in one call, but {self.path.name} takes at most {self.max_batch}; "
                            "split the batch (detect_batch does)")
        if n == 0:
            return [np.zeros((0, 1), np.int32), np.zeros((0, 0, 4), np.float32), np.zeros((0, 0), np.float32),
                    np.zeros((0, 0), np.int64)]
        with self._lock:   # one session / execution context and stream: calls take turns
            return self.backend.run(np.ascontiguousarray(images, np.float32), np.ascontiguousarray(sizes, np.float32))

    def detect_batch(self, images: Sequence[np.ndarray], score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                     bgr: bool = False) -> list[ImageDetections]:
        """Detections of each ``[H, W, 3]`` uint8 image, in its own pixels.

        Args:
            images: RGB images (BGR with ``bgr=True``, as OpenCV and most camera drivers give).
            score_threshold: keep detections scoring at least this, in ``[0, 1]``; default 0.3
                (:data:`DEFAULT_SCORE_THRESHOLD`, as ``gkd-bmfi detect``); 0 keeps every box the
                graph gives (it drops those below its own NMS score threshold, 0.05 for GFL).
            bgr: the images are BGR; they are flipped to RGB before preprocessing.
        """
        score_threshold = check_score_threshold(score_threshold)
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise UserError("detect_batch takes a list of [H, W, 3] images; for one image use detect(image)")
        prepared = [self.preprocess(np.ascontiguousarray(check_image(image)[..., ::-1]) if bgr else image)
                    for image in images]
        step = self.max_batch or max(1, len(prepared))
        results: list[ImageDetections] = []
        for start in range(0, len(prepared), step):
            chunk = prepared[start:start + step]
            num, boxes, scores, labels = self.run(np.stack([p.image for p in chunk]),
                                                  np.array([p.size_hw for p in chunk], dtype=np.float32))
            for i, prep in enumerate(chunk):
                k = int(num[i, 0])
                keep = np.flatnonzero(scores[i, :k] >= score_threshold)
                lab = labels[i, keep].astype(np.int64)
                results.append(ImageDetections(to_original(boxes[i, keep], prep), scores[i, keep].astype(np.float32),
                                               lab, self.names_of(lab)))
        return results

    def names_of(self, labels: np.ndarray) -> tuple[str, ...]:
        """The class names of ``labels``; a label the manifest's ``class_names`` does not reach is refused."""
        outside = [int(j) for j in labels if not 0 <= j < len(self.class_names)]
        if outside:
            raise UserError(f"{self.path.parent / 'manifest.json'}: class_names lists {len(self.class_names)} classes "
                            f"but {self.path.name} gave class index {outside[0]}; class_names must name every class "
                            "of the model, re-run the export stage")
        return tuple(self.class_names[j] for j in labels)

    def detect(self, image: np.ndarray, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
               bgr: bool = False) -> ImageDetections:
        """Detections of one ``[H, W, 3]`` uint8 image (RGB, or BGR with ``bgr=True``), in its own
        pixels, scoring at least ``score_threshold`` (default 0.3, :data:`DEFAULT_SCORE_THRESHOLD`,
        the same as ``gkd-bmfi detect``; 0 keeps every box the graph gives)."""
        return self.detect_batch([image], score_threshold, bgr)[0]
