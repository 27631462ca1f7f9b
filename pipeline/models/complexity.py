"""Parameter and FLOP counting with MMDetection/mmengine conventions (the paper's Table 4).

* :func:`count_parameters`: every ``nn.Parameter`` (trainable or frozen), no buffers. This is
  mmengine's ``parameter_count``: BN ``running_mean``/``running_var``/``num_batches_tracked``
  and GFL's ``integral.project`` are buffers and not counted.
* :func:`count_gflops`: one multiply-add = one FLOP, in units of 1e9. Built on
  :class:`torch.utils.flop_counter.FlopCounterMode` (which counts a multiply-add as 2 FLOPs,
  hence the halving). mmengine's ``FlopAnalyzer`` (fvcore-derived) additionally counts a few
  non-MAC ops; with ``mmengine_extras=True`` (default) we count them the same way:

  ===================================  ==========================================
  op                                   FLOPs (multiply-add units)
  ===================================  ==========================================
  conv / linear / (b)mm / addmm        MACs (no bias term)
  batch norm, eval mode                input numel x (2 if affine else 1)
  batch norm, training mode            input numel x (5 if affine else 4)
  group / layer norm                   input numel x (5 if affine else 4)
  nearest upsampling                   output numel
  bilinear upsampling, grid sample     output numel x 4
  adaptive average pooling             input numel
  ReLU, add, max pooling, ...          0
  ===================================  ==========================================

  One known gap: a *global* adaptive average pooling (output 1x1) is turned into ``mean``
  by PyTorch before any dispatch mode sees it and counts 0 here (mmengine: input numel).
  None of our detectors pools globally.

  With the stand-in GFL head (4+4 conv3x3-GN-ReLU, ``gfl_cls``, ``gfl_reg``, scales) this
  reproduces MMDetection's GFL GFLOPs at 224x224 to the fixture's 3 decimals
  (7.615 / 10.040 / 13.763 for R18 / R50 / R101); MAC ops alone are 0.2-0.3% lower.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_gflops", "MMENGINE_EXTRA_FORMULAS"]

aten = torch.ops.aten


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all ``nn.Parameter`` s, like mmengine; buffers excluded).

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad=True``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# Formulas for FlopCounterMode's ``custom_mapping``. FlopCounterMode passes tensor arguments
# as shapes and the output as ``out_shape``. They return 2x the mmengine count so that the
# single final halving (2 FLOPs per MAC -> 1) yields mmengine's numbers.
def _batch_norm_flop(input_shape: Sequence[int], weight_shape: Any, *args: Any, **kwargs: Any) -> int:
    # ``training`` is the first bool argument in every batch-norm overload's schema.
    training = next((a for a in args if isinstance(a, bool)), kwargs.get("training", False))
    affine = weight_shape is not None
    per_element = (5 if affine else 4) if training else (2 if affine else 1)
    return 2 * math.prod(input_shape) * per_element


def _batch_norm_no_training_flop(input_shape: Sequence[int], weight_shape: Any, *args: Any,
                                 **kwargs: Any) -> int:
    return 2 * math.prod(input_shape) * (2 if weight_shape is not None else 1)


def _group_norm_flop(input_shape: Sequence[int], weight_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * math.prod(input_shape) * (5 if weight_shape is not None else 4)


def _layer_norm_flop(input_shape: Sequence[int], normalized_shape: Any, weight_shape: Any = None,
                     *args: Any, **kwargs: Any) -> int:
    return 2 * math.prod(input_shape) * (5 if weight_shape is not None else 4)


def _output_numel_flop(scale: int) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * scale * math.prod(out_shape)

    return formula


def _input_numel_flop(input_shape: Sequence[int], *args: Any, **kwargs: Any) -> int:
    return 2 * math.prod(input_shape)


_EXTRA_PACKETS: dict[Any, Callable[..., int]] = {
    aten.native_batch_norm: _batch_norm_flop,
    aten.cudnn_batch_norm: _batch_norm_flop,
    aten._native_batch_norm_legit: _batch_norm_flop,
    aten._native_batch_norm_legit_no_training: _batch_norm_no_training_flop,
    aten.native_group_norm: _group_norm_flop,
    aten.native_layer_norm: _layer_norm_flop,
    aten.upsample_nearest2d: _output_numel_flop(1),
    aten.upsample_bilinear2d: _output_numel_flop(4),
    aten.grid_sampler_2d: _output_numel_flop(4),
    aten.adaptive_avg_pool2d: _input_numel_flop,
    aten._adaptive_avg_pool2d: _input_numel_flop,
}


def _with_overloads(packets: dict[Any, Callable[..., int]]) -> dict[Any, Callable[..., int]]:
    """Key every formula by its op packet *and* each overload of it.

    FlopCounterMode looks formulas up by packet, but first tries to decompose any op whose
    *overload* is not a key of its registry; ``upsample_nearest2d`` (and others) would then
    be decomposed into index arithmetic and never counted. Listing the overloads too keeps
    these ops whole.
    """
    mapping: dict[Any, Callable[..., int]] = {}
    for packet, formula in packets.items():
        mapping[packet] = formula
        for overload in packet.overloads():
            mapping[getattr(packet, overload)] = formula
    return mapping


#: aten op (packet and overloads) -> formula, the non-MAC ops mmengine counts (see the
#: module docstring). Formulas return 2x mmengine's count (FlopCounterMode units).
MMENGINE_EXTRA_FORMULAS: dict[Any, Callable[..., int]] = _with_overloads(_EXTRA_PACKETS)


def count_gflops(
    module_or_callable: nn.Module | Callable[[Tensor], Any],
    input_shape: Sequence[int] = (1, 3, 224, 224),
    mmengine_extras: bool = True,
) -> float:
    """GFLOPs of one forward pass, one multiply-add counted as one FLOP (mmengine convention).

    Args:
        module_or_callable: an ``nn.Module`` (run in eval mode; its train/eval flags are
            restored afterwards) or any callable taking one ``[N, C, H, W]`` tensor, e.g.
            ``lambda x: detector.forward_raw(x)``. Whatever it returns is ignored.
        input_shape: ``(N, C, H, W)`` of the random input, created on the module's device
            (first parameter) or on the CPU for callables.
        mmengine_extras: also count norms / upsampling / adaptive pooling as mmengine does;
            False counts only MAC ops (conv, linear, matmul).

    Returns:
        GFLOPs (1e9 multiply-adds), as a float.
    """
    device = torch.device("cpu")
    flags: list[tuple[nn.Module, bool]] = []
    if isinstance(module_or_callable, nn.Module):
        param = next(module_or_callable.parameters(), None)
        if param is not None:
            device = param.device
        flags = [(m, m.training) for m in module_or_callable.modules()]
        module_or_callable.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*input_shape, generator=generator).to(device)
    counter = FlopCounterMode(display=False, custom_mapping=MMENGINE_EXTRA_FORMULAS if mmengine_extras else None)
    try:
        with torch.no_grad(), counter:
            module_or_callable(x)
    finally:
        for module, training in flags:
            module.training = training
    return counter.get_total_flops() / 2 / 1e9
