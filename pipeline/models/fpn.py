"""Feature Pyramid Network matching MMDetection 3.3's ``FPN`` neck.

Two configurations are used in this project (both with ``out_channels=256, num_outs=5``):

* GFL (``gfl_r50_fpn_1x_coco``): ``start_level=1`` (C3..C5 in, C2 unused),
  ``add_extra_convs='on_output'``: P6 = 3x3 stride-2 conv on the P5 *output*, P7 = 3x3
  stride-2 conv on P6 with **no** activation in between (``extra_relu=False``; torchvision's
  ``LastLevelP6P7`` applies a ReLU before P7 and therefore does not match). Outputs P3..P7,
  strides 8, 16, 32, 64, 128.
* Faster R-CNN (``faster-rcnn_r50_fpn_1x_coco``): ``start_level=0`` (C2..C5),
  ``add_extra_convs=False``: P6 = ``max_pool2d(P5, kernel_size=1, stride=2)``. Outputs P2..P6,
  strides 4, 8, 16, 32, 64.

Module layout and names are MMDetection's (``lateral_convs.{i}.conv``, ``fpn_convs.{i}.conv``,
extra stride-2 convs appended to ``fpn_convs`` after the per-level ones), so the state dict
maps to MMDetection's ``neck.*`` keys one to one. All convolutions have a bias and no
norm/activation; weights are Xavier-uniform (gain 1) and biases zero, as MMDetection's FPN
``init_cfg=dict(type='Xavier', layer='Conv2d', distribution='uniform')``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN", "ConvUnit"]

ExtraConvs = Literal["on_input", "on_lateral", "on_output"]


class ConvUnit(nn.Module):
    """A bare ``nn.Conv2d`` kept under the attribute ``conv`` (MMCV ``ConvModule`` naming).

    ``[N, C_in, H, W] -> [N, C_out, H', W']``; no norm, no activation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """MMDetection-compatible FPN.

    Args:
        in_channels: channels of every backbone map passed to :meth:`forward`, e.g. ResNet-18
            C2..C5 ``[64, 128, 256, 512]``.
        out_channels: channels of every output level.
        num_outs: number of output levels (``>= len(in_channels) - start_level``); levels
            beyond the backbone's are made by extra stride-2 convs or by max pooling.
        start_level: index of the first input used (1 skips C2, as GFL/RetinaNet do).
        add_extra_convs: ``False`` -> extra levels by ``max_pool2d(kernel 1, stride 2)`` of
            the previous output; ``'on_input'`` / ``'on_lateral'`` / ``'on_output'`` -> the
            first extra level is a 3x3 stride-2 conv on the last used backbone map / its
            lateral (after the top-down sum) / its FPN output, the following ones are 3x3
            stride-2 convs on the previous extra level. ``True`` means ``'on_input'``
            (MMDetection's convention).
        extra_relu: apply ReLU before every extra conv after the first
            (MMDetection's ``relu_before_extra_convs``; False in both our configs).

    Input/output:
        ``forward(inputs)`` takes ``len(in_channels)`` maps ``[N, in_channels[i], H_i, W_i]``
        with strides doubling level to level, and returns ``num_outs`` maps
        ``[N, out_channels, H_j, W_j]``; output ``j`` has the stride of input
        ``start_level + j`` (doubling further for the extra levels).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_outs: int = 5,
        start_level: int = 0,
        add_extra_convs: bool | ExtraConvs = False,
        extra_relu: bool = False,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if not 0 <= start_level < len(in_channels):
            raise ValueError(f"FPN: start_level {start_level} outside 0..{len(in_channels) - 1}")
        used_levels = len(in_channels) - start_level
        if num_outs < used_levels:
            raise ValueError(f"FPN: num_outs {num_outs} < number of used input levels {used_levels}")
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs not in (False, "on_input", "on_lateral", "on_output"):
            raise ValueError(
                "FPN: add_extra_convs must be False, True, 'on_input', 'on_lateral' or 'on_output', "
                f"got {add_extra_convs!r}"
            )
        self.in_channels = in_channels
        self.out_channels = int(out_channels)
        self.num_outs = int(num_outs)
        self.start_level = int(start_level)
        self.add_extra_convs: bool | str = add_extra_convs
        self.extra_relu = bool(extra_relu)
        self.num_used_levels = used_levels

        self.lateral_convs = nn.ModuleList(
            ConvUnit(c, self.out_channels, 1) for c in in_channels[start_level:]
        )
        self.fpn_convs = nn.ModuleList(
            ConvUnit(self.out_channels, self.out_channels, 3, padding=1) for _ in range(used_levels)
        )
        if add_extra_convs:
            for k in range(num_outs - used_levels):
                source = in_channels[-1] if (k == 0 and add_extra_convs == "on_input") else self.out_channels
                self.fpn_convs.append(ConvUnit(source, self.out_channels, 3, stride=2, padding=1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform (gain 1) weights and zero biases for every conv (MMDetection's FPN init)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=1.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Build the pyramid.

        Args:
            inputs: ``len(in_channels)`` maps ``[N, in_channels[i], H_i, W_i]`` (all backbone
                outputs, including those below ``start_level``).

        Returns:
            ``num_outs`` maps ``[N, out_channels, H_j, W_j]``, finest first.
        """
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN: expected {len(self.in_channels)} inputs, got {len(inputs)}")
        feats = list(inputs[self.start_level:])
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        # Top-down: upsample the coarser merged level to the exact size of the finer one.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [self.fpn_convs[i](laterals[i]) for i in range(self.num_used_levels)]

        num_extra = self.num_outs - self.num_used_levels
        if num_extra > 0:
            if not self.add_extra_convs:
                for _ in range(num_extra):
                    outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
            else:
                if self.add_extra_convs == "on_input":
                    source = feats[-1]
                elif self.add_extra_convs == "on_lateral":
                    source = laterals[-1]
                else:  # on_output
                    source = outs[-1]
                outs.append(self.fpn_convs[self.num_used_levels](source))
                for i in range(self.num_used_levels + 1, self.num_outs):
                    previous = F.relu(outs[-1]) if self.extra_relu else outs[-1]
                    outs.append(self.fpn_convs[i](previous))
        return tuple(outs)
