"""ResNet-18/50/101 backbones laid out like MMDetection 3.3's ``ResNet`` (``style='pytorch'``).

The stages are torchvision's own ``conv1 / bn1 / layer1..layer4`` modules (torchvision's
Bottleneck is "ResNet v1.5": the stride-2 sits in the 3x3 ``conv2``, which is exactly
MMDetection's ``style='pytorch'``). The classifier (``avgpool``/``fc``) is dropped. Because
the submodules keep torchvision's attribute names, ``ResNetBackbone().state_dict()`` keys are
``conv1.weight``, ``bn1.running_mean``, ``layer2.0.downsample.1.weight``, ... which equal
MMDetection's ``backbone.*`` names once the detector prefixes them with ``backbone.``.

Normalisation stays a regular :class:`torch.nn.BatchNorm2d` (affine weight/bias are
``nn.Parameter``), so parameter counts equal MMDetection's. Freezing is done the way
MMDetection does it, in :meth:`ResNetBackbone.train`:

* ``frozen_stages=k`` (``-1..4``): ``k >= 0`` freezes the stem (``conv1``, ``bn1``) and
  ``k >= i`` freezes ``layer{i}``: their parameters get ``requires_grad=False`` and their
  BN layers stay in eval mode (running statistics are not updated).
* ``norm_eval=True``: every BatchNorm layer is put back into eval mode after
  ``model.train()``, i.e. BN uses and keeps the (pretrained) running statistics.

Defaults depend on ``weights``: MMDetection's configs (``frozen_stages=1, norm_eval=True``)
assume an ImageNet-pretrained backbone. When training from scratch (``weights="none"``, the
offline default) a frozen random stem and BN stuck at its initial statistics (mean 0, var 1)
only hurt, so the defaults become ``frozen_stages=-1, norm_eval=False``. Explicit values
always win.

Randomly initialised backbones follow MMDetection's ResNet default init: Kaiming-normal
(``fan_out``, ReLU) convolutions, BN weight 1 / bias 0, and the last BN of every residual
block zero-initialised (``zero_init_residual=True``); torchvision's ``ResNet`` constructor
does exactly this when asked for ``zero_init_residual``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

__all__ = ["ResNetBackbone", "STAGE_CHANNELS", "STAGE_STRIDES"]

_BUILDERS: dict[int, Callable[..., tv_resnet.ResNet]] = {
    18: tv_resnet.resnet18,
    50: tv_resnet.resnet50,
    101: tv_resnet.resnet101,
}
# MMDetection's ``torchvision://resnetXX`` checkpoints are torchvision's V1 ImageNet weights.
_IMAGENET_WEIGHTS: dict[int, tv_resnet.WeightsEnum] = {
    18: tv_resnet.ResNet18_Weights.IMAGENET1K_V1,
    50: tv_resnet.ResNet50_Weights.IMAGENET1K_V1,
    101: tv_resnet.ResNet101_Weights.IMAGENET1K_V1,
}

#: Output channels of C2..C5 per depth.
STAGE_CHANNELS: dict[int, tuple[int, int, int, int]] = {
    18: (64, 128, 256, 512),
    50: (256, 512, 1024, 2048),
    101: (256, 512, 1024, 2048),
}
#: Output strides of C2..C5 w.r.t. the input image.
STAGE_STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)


def _one_line(error: BaseException) -> str:
    """``"Type: short reason"`` for embedding an exception in a one-line message.

    torch's weights-only unpickler errors start with a generic paragraph; the actual reason
    follows ``"WeightsUnpickler error:"``, so that part is used when present.
    """
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
        text = "weights-only unpickler: " + " ".join(text.split())
    lines = text.strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class ResNetBackbone(nn.Module):
    """ResNet-18/50/101 feature extractor returning C2..C5 (or a subset).

    Args:
        depth: 18, 50 or 101.
        out_indices: which stages to return, ``0 -> C2`` (stride 4) ... ``3 -> C5``
            (stride 32), increasing order. All four stages are always built (as in
            MMDetection) so state dicts are complete whichever subset is returned.
        weights: ``"none"`` (random init, MMDetection's default ResNet init),
            ``"imagenet"`` (torchvision ``IMAGENET1K_V1``, downloaded by torchvision into its
            hub cache when online) or a path to a local checkpoint: a torchvision ResNet
            state dict (``fc.*`` is ignored), an MMDetection/our detector state dict whose
            backbone keys start with ``backbone.``, or either wrapped as
            ``{"state_dict": ...}`` / ``{"model": ...}``. Loaded with ``weights_only=True``.
        frozen_stages: ``-1`` (nothing frozen) ... ``4``; see the module docstring.
            ``None``: 1 for pretrained weights, -1 for ``weights="none"``.
        norm_eval: keep every BatchNorm in eval mode during training. ``None``: True for
            pretrained weights, False for ``weights="none"``.
        zero_init_residual: zero the last BN weight of each residual block when randomly
            initialised (MMDetection's default). Ignored for pretrained weights.

    Attributes:
        out_channels: channels of the returned maps, e.g. ``(128, 256, 512)``.
        strides: strides of the returned maps, e.g. ``(8, 16, 32)``.

    Raises:
        ValueError: bad arguments, or a local checkpoint that is missing, unreadable or
            does not match this depth (one line naming the file).
        RuntimeError: ``weights="imagenet"`` could not be downloaded (one line saying how
            to pass a local file instead).
    """

    def __init__(
        self,
        depth: int = 50,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        weights: str | os.PathLike[str] = "none",
        frozen_stages: int | None = None,
        norm_eval: bool | None = None,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f"ResNetBackbone: depth must be one of {sorted(_BUILDERS)}, got {depth!r}")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or list(out_indices) != sorted(set(out_indices)) or not all(
            0 <= i <= 3 for i in out_indices
        ):
            raise ValueError(
                f"ResNetBackbone: out_indices must be increasing, unique and within 0..3, got {out_indices}"
            )
        weights = "none" if weights is None else weights
        pretrained = not (isinstance(weights, str) and weights == "none")
        if frozen_stages is None:
            frozen_stages = 1 if pretrained else -1
        if not -1 <= int(frozen_stages) <= 4:
            raise ValueError(f"ResNetBackbone: frozen_stages must be within -1..4, got {frozen_stages}")

        self.depth = depth
        self.out_indices = out_indices
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = pretrained if norm_eval is None else bool(norm_eval)
        self.out_channels: tuple[int, ...] = tuple(STAGE_CHANNELS[depth][i] for i in out_indices)
        self.strides: tuple[int, ...] = tuple(STAGE_STRIDES[i] for i in out_indices)

        net = _BUILDERS[depth](weights=None, zero_init_residual=zero_init_residual and not pretrained)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        del net

        if isinstance(weights, str) and weights == "imagenet":
            self._load_imagenet()
        elif pretrained:
            self.load_checkpoint(weights)
        self._freeze_stages()

    # ------------------------------------------------------------------ weights
    def _load_imagenet(self) -> None:
        """Load torchvision's ``IMAGENET1K_V1`` weights (download into the torch hub cache)."""
        entry = _IMAGENET_WEIGHTS[self.depth]
        try:
            state = entry.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # network, proxy, hash, disk: all mean "not available"
            file_name = entry.url.rsplit("/", 1)[-1]
            raise RuntimeError(
                f"ResNet-{self.depth} ImageNet weights could not be downloaded from {entry.url} "
                f"({_one_line(error)}); download {file_name} elsewhere and pass its local path as "
                f"weights='/path/to/{file_name}' (or put it in $TORCH_HOME/hub/checkpoints/), "
                "or use weights='none' to train from scratch"
            ) from None
        self._load_backbone_state(state, source=f"torchvision {entry}")

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Load a local checkpoint file into this backbone (formats: see the class docstring).

        Raises:
            ValueError: one line naming the file: missing, unreadable, not a state dict, or
                keys/shapes that do not match a ResNet-``depth``.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(
                f"ResNet-{self.depth} checkpoint {path!r} does not exist or is not a file "
                "(weights must be 'none', 'imagenet' or a path to a checkpoint file)"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"ResNet-{self.depth} checkpoint {path!r} could not be read by "
                f"torch.load(weights_only=True) ({_one_line(error)}); for a full MMDetection/mmengine "
                "checkpoint, torch.save its 'state_dict' entry alone and pass that file"
            ) from None
        self._load_backbone_state(_extract_state_dict(obj, path), source=repr(path))

    def _load_backbone_state(self, state: Mapping[str, Any], source: str) -> None:
        """Strictly load a torchvision-named ResNet state dict (``fc.*`` ignored).

        Missing ``num_batches_tracked`` buffers are tolerated (old torchvision checkpoints
        lack them); anything else missing, unexpected or of the wrong shape is an error.
        """
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        wrong_shape = [
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)
        ]
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
                problems.append(f"{len(items)} {label} ({shown})")
        if problems:
            raise ValueError(
                f"ResNet-{self.depth} checkpoint {source} does not match a ResNet-{self.depth} "
                f"backbone: {'; '.join(problems)}"
            )
        self.load_state_dict(state, strict=False)

    # ------------------------------------------------------------------ freezing
    def _frozen_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = []
        if self.frozen_stages >= 0:
            modules += [self.conv1, self.bn1]
        for i in range(1, self.frozen_stages + 1):
            modules.append(getattr(self, f"layer{i}"))
        return modules

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNetBackbone":
        """Set train/eval mode, then re-apply ``frozen_stages`` and ``norm_eval``."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Extract features.

        Args:
            x: ``[N, 3, H, W]`` normalised images.

        Returns:
            For each requested stage ``i`` in ``out_indices`` the map ``C{i+2}`` of shape
            ``[N, out_channels[i], ceil(H / s), ceil(W / s)]`` with ``s = strides[i]``
            (4, 8, 16, 32 for C2..C5; exact when H, W are multiples of 32).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs: list[Tensor] = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
            if i == self.out_indices[-1]:
                break
        return tuple(outs)


def _extract_state_dict(obj: Any, path: str) -> dict[str, Tensor]:
    """Find the backbone's torchvision-named tensors inside a loaded checkpoint object."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path!r} is not a state dict: it holds a {type(obj).__name__}")
    if not obj:
        raise ValueError(f"checkpoint {path!r} holds an empty state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"checkpoint {path!r} is not a state dict of tensors: {len(bad)} non-tensor entries "
            f"(e.g. {bad[0]!r})"
        )
    state: dict[str, Tensor] = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # a whole detector: keep its backbone
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state
