"""Fold each BatchNorm into the convolution before it, so that the quantized weights are the deployed ones.

The exported graph has no BatchNorm (the exporter folds it into the Conv), so TensorRT and ONNX
Runtime quantize the *folded* weights ``W' = W * g / sqrt(v + eps)`` (per output channel) with
bias ``b' = (b - m) * g / sqrt(v + eps) + beta``. Quantization-aware training therefore folds
first, with the running statistics, and fine-tunes ``W'`` and ``b'`` directly: what is trained is
what is exported, and BatchNorm no longer moves (the usual last phase of QAT).

Pairs are found by the backbones' naming (``convK``/``bnK`` siblings, ``downsample.0``/``.1``);
a BatchNorm without its convolution is an error, never silently left in.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import UserError


def _partner(name: str) -> str:
    """The conv that feeds BatchNorm ``name``: ``a.bn2 -> a.conv2``, ``a.downsample.1 -> a.downsample.0``,
    ``a.bn1 -> a.conv1``."""
    parent, _, last = name.rpartition(".")
    if last.startswith("bn"):
        return f"{parent}.conv{last[2:]}" if parent else f"conv{last[2:]}"
    if last.isdigit():
        return f"{parent}.{int(last) - 1}"
    raise UserError(f"BatchNorm {name!r} has no convolution to fold into (expected a 'convK'/'bnK' pair or "
                    "Sequential(conv, bn))")


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (running statistics, affine) into ``conv`` in place; ``conv`` gains a bias."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    conv.weight.mul_(factor.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
    folded = (bias - bn.running_mean) * factor + beta
    conv.bias = nn.Parameter(folded.clone(), requires_grad=conv.weight.requires_grad)


def fold_batchnorms(model: nn.Module) -> list[str]:
    """Fold every BatchNorm2d of ``model`` into its convolution and replace it by ``nn.Identity``.

    Returns the folded convolutions' names.
    """
    modules = dict(model.named_modules())
    folded = []
    for name, bn in list(modules.items()):
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        conv_name = _partner(name)
        conv = modules.get(conv_name)
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != bn.num_features:
            raise UserError(f"BatchNorm {name!r}: no matching convolution {conv_name!r} to fold into")
        fold_conv_bn(conv, bn)
        parent, _, last = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, last, nn.Identity())
        folded.append(conv_name)
    return folded
