"""Fake quantization with the exact arithmetic of an ONNX QuantizeLinear -> DequantizeLinear pair.

TensorRT's explicit-quantization convention, which the TensorRT-targeted ``model-int8.onnx``
follows (:mod:`pipeline.deploy.precision`):

* activations: symmetric int8 **per tensor**, ``scale = amax / 127``, zero point 0;
* weights: symmetric int8 **per output channel**, ``scale_c = max|W_c| / 127``, zero point 0;
* biases stay float32.

:func:`fake_quant` computes ``saturate(round_half_even(x / scale), -128, 127) * scale`` with a
division, which is what ONNX ``QuantizeLinear`` specifies. torch's own kernels
(``torch.fake_quantize_per_{tensor,channel}_affine``, under ``torch.ao``'s FakeQuantize) multiply
by ``1/scale`` and so round differently within an ulp of a boundary (73 of 2,000,720 test values);
through a detector such flips change the detections (tests/test_qat.py failed with them). This one
divides, so ONNX Runtime on the exported Q/DQ graph reproduces the PyTorch fake-quant model up to
float32 rounding of the convolutions themselves. Its gradient is the clipped straight-through
estimator: ``dL/dx`` passes where ``x / scale`` lies inside ``[-128, 127]`` and is 0 outside.
It computes in float32 whatever the input's dtype or the autocast region (bf16/fp16 training),
as the exported graph does, and returns the input's dtype.

Shapes: ``x`` any; ``scale`` a scalar tensor (per tensor) or ``[C, 1, ..., 1]`` broadcastable
along the output-channel axis 0 of a weight (per channel).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

QMIN, QMAX = -128, 127
#: ``amax / QRANGE`` is the scale (ONNX Runtime's symmetric convention, 127 not 127.5).
QRANGE = 127.0


class _FakeQuant(torch.autograd.Function):
    """``saturate(round_half_even(x / scale)) * scale`` in float32 with autocast off, returned in
    ``x``'s dtype; backward: the clipped straight-through estimator (no gradient to ``scale``)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x32, scale32 = x.float(), scale.float()
            q = torch.round(x32 / scale32)
            ctx.save_for_backward((q >= QMIN) & (q <= QMAX))
            return (q.clamp(QMIN, QMAX) * scale32).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def fake_quant(x: Tensor, scale: Tensor) -> Tensor:
    """Quantize-dequantize ``x`` to int8 with ``scale`` (zero point 0): ONNX Q/DQ arithmetic.

    ``x`` any shape and float dtype; ``scale`` scalar or broadcastable (``[C, 1, ..., 1]``).
    The division, rounding and saturation run in float32 whatever ``x``'s dtype or the autocast
    region, as the exported float32 ``QuantizeLinear`` does (in bf16/fp16 2.1-2.4% of the int8
    codes came out different); the result is ``x``'s dtype. From a bf16/fp16 ``x`` the codes are
    those of float32 on the same (upcast) values, and ``round(y.float() / scale)`` recovers them
    from the output ``y`` (its rounding error is below 127 * 2^-9 < 0.5 of a step).
    """
    return _FakeQuant.apply(x, scale)


def weight_scales(weight: Tensor) -> Tensor:
    """Per-output-channel scales of a Conv ``[O, I, kh, kw]`` or Linear ``[O, I]`` weight:
    ``max|W_c| / 127`` shaped ``[O, 1, ...]`` (1.0 for an all-zero channel, which quantizes to 0)."""
    amax = weight.detach().abs().flatten(1).amax(dim=1)
    scale = torch.where(amax > 0, amax / QRANGE, torch.ones_like(amax))
    return scale.view(-1, *([1] * (weight.dim() - 1)))


class ActivationQuantizer(nn.Module):
    """Per-tensor symmetric int8 fake quantizer of one layer's input.

    Modes: ``calibrate`` (pass through, record ``amax = max|x|`` over every call: min-max
    calibration, as the post-training int8 export's ``minmax``), ``quantize`` (fake-quantize with
    the recorded ``amax``, which then stays fixed while the weights fine-tune), ``off`` (pass
    through; the float model, used to export the graph before Q/DQ insertion).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("amax", torch.zeros(()))
        self.mode = "quantize"

    @property
    def scale(self) -> Tensor:
        return torch.clamp(self.amax, min=torch.finfo(torch.float32).tiny) / QRANGE

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "calibrate":
            self.amax.copy_(torch.maximum(self.amax, x.detach().abs().amax().float()))
            return x
        if self.mode == "off":
            return x
        return fake_quant(x, self.scale)


class _QuantMixin:
    """Input (per tensor) and weight (per channel) fake quantization around the float op."""

    input_quant: ActivationQuantizer

    def quantized_weight(self) -> Tensor:
        w = self.weight
        if self.input_quant.mode == "quantize":
            return fake_quant(w, weight_scales(w))
        return w


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` whose input and weight are fake-quantized (bias float32)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.input_quant(x), self.quantized_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` whose input and weight are fake-quantized (bias float32)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self.input_quant(x), self.quantized_weight(), self.bias)


def quantize_module(module: nn.Conv2d | nn.Linear) -> nn.Module:
    """Turn a Conv2d/Linear into its fake-quant twin in place (same parameters, same name)."""
    module.__class__ = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
    module.add_module("input_quant", ActivationQuantizer())
    return module
