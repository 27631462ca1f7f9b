"""A detector prepared for quantization-aware training, with the int8 export's placement.

:func:`prepare_qat` folds BatchNorm (:mod:`pipeline.quant.fold`) and turns every Conv2d/Linear
of the network into its fake-quant twin (:mod:`pipeline.quant.fake_quant`), except the layers the
int8 export keeps in float32 (:data:`pipeline.quant.placement.FLOAT32_LAYERS`, the logits of the
scores and of GFL's box distributions; :mod:`pipeline.quant.placement` holds the rule both int8
paths read). That is the placement of the TensorRT-targeted ``model-int8.onnx``: a Q/DQ pair on the input of each quantized Conv/Gemm,
per-channel Q/DQ on its weight, float32 bias, nothing on outputs. ``tests/test_qat.py`` checks
the two placements are the same node for node.

:func:`calibrate_activations` records each input quantizer's ``amax`` (min-max) on training
images; fine-tuning then keeps those ``amax`` fixed and trains the folded weights through the
straight-through estimator, with weight scales recomputed from the weights at every step (so the
exported per-channel scales are the final weights' own).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.engine.checkpoint import Arch, check_arch, read_model_file, save_model
from pipeline.errors import UserError
from pipeline.models.detector import Detector
from pipeline.models.factory import build_detector
from pipeline.quant.fake_quant import ActivationQuantizer, QuantConv2d, QuantLinear, quantize_module
from pipeline.quant.fold import fold_batchnorms
from pipeline.quant.placement import FLOAT32_LAYERS
from pipeline.structures import Batch

#: What the model file's meta says about the quantization (also the manifest's recipe).
SCHEME = {"activations": "int8 symmetric per tensor, amax by min-max calibration on train images, fixed",
          "weights": "int8 symmetric per output channel, scale max|W_c|/127 of the trained weights",
          "bias": "float32", "batchnorm": "folded into the convolutions before training",
          "placement": "input and weight of every Conv/Gemm except the score layers (as model-int8.onnx)"}


def prepare_qat(model: Detector) -> list[str]:
    """Fold BatchNorm and insert fake quantizers in place; returns the quantized modules' names."""
    if model.name not in FLOAT32_LAYERS:
        raise UserError(f"quantization-aware training does not know detector {model.name!r}; "
                        f"choose from {', '.join(FLOAT32_LAYERS)}")
    fold_batchnorms(model)
    keep = FLOAT32_LAYERS[model.name]
    names = []
    for name, module in list(model.named_modules()):
        if type(module) in (nn.Conv2d, nn.Linear) and name not in keep:
            quantize_module(module)
            names.append(name)
    return names


def quantized_modules(model: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    """The fake-quantized layers of a prepared model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


@contextmanager
def quantizer_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put every activation quantizer into ``mode`` (``calibrate`` | ``quantize`` | ``off``) for the block."""
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    before = [q.mode for q in quantizers]
    for q in quantizers:
        q.mode = mode
    try:
        yield
    finally:
        for q, m in zip(quantizers, before):
            q.mode = m


@torch.no_grad()
def calibrate_activations(model: Detector, batches: Iterable[Batch], device: torch.device) -> int:
    """Min-max calibration: run ``batches`` (training images, no flip) through the float model's
    inference path (so that layers used only at test time, Faster R-CNN's RoI box head on the
    proposals, see data too) and set every input quantizer's ``amax``; returns the image count.

    Raises when a quantizer saw no data."""
    model.eval().to(device)
    for q in model.modules():
        if isinstance(q, ActivationQuantizer):
            q.amax.zero_()
    count = 0
    with quantizer_mode(model, "calibrate"):
        for batch in batches:
            batch = batch.to(device)
            model.predict(model.features(batch.images), batch)
            count += len(batch)
    silent = [n for n, m in quantized_modules(model).items() if float(m.input_quant.amax) <= 0]
    if silent:
        raise UserError(f"int8 calibration: layers {silent[:3]} saw no non-zero input over {count} images; "
                        "use more deploy.calib_images")
    return count


def save_qat_model(path: Path, model: Detector, arch: Arch, meta: dict[str, Any]) -> None:
    """Write a QAT model file: the train stage's format, its meta marked ``qat``."""
    save_model(path, model, arch, meta={**meta, "qat": SCHEME})


def load_qat_model(path: Path, expected: Arch) -> tuple[Detector, dict[str, Any]]:
    """Rebuild a QAT model file's fake-quant detector (folded, quantizers with their ``amax``)."""
    arch, state, meta = read_model_file(path)
    check_arch(path, arch, expected)
    if "qat" not in meta:
        raise UserError(f"{path}: not a quantization-aware model file (no 'qat' in its meta); "
                        "use one written by the qat stage")
    model = build_detector(arch.detector, arch.backbone, arch.num_classes, "none", arch.fpn_channels)
    prepare_qat(model)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].strip()
        raise UserError(f"{path}: state dict does not fit the QAT model ({detail}); re-run the qat stage") from None
    return model.eval(), meta
