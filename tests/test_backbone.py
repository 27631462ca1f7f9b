"""ResNet backbones + FPN necks match MMDetection 3.3 (names, shapes, params, GFLOPs)."""
from __future__ import annotations

import json
import math
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from pipeline.models.backbone import STAGE_CHANNELS, ResNetBackbone
from pipeline.models.complexity import count_gflops, count_parameters
from pipeline.models.fpn import FPN
from pipeline.models.mmdet_names import (
    DETECTOR_RULES,
    from_mmdet_name,
    from_mmdet_state_dict,
    to_mmdet_name,
    to_mmdet_state_dict,
)

from conftest import reference_fixture

DEPTHS = (18, 50, 101)


@pytest.fixture(scope="module")
def mmdet_models() -> dict:
    return json.loads(reference_fixture("mmdet/mmdet330_models_3cls.json").read_text())["models"]


def make_neck(detector: str, depth: int) -> FPN:
    """The neck of MMDetection's gfl_r50_fpn_1x / faster-rcnn_r50_fpn_1x configs for ``depth``."""
    channels = list(STAGE_CHANNELS[depth])
    if detector == "gfl":
        return FPN(channels, 256, num_outs=5, start_level=1, add_extra_convs="on_output")
    return FPN(channels, 256, num_outs=5, start_level=0, add_extra_convs=False)


class BackboneNeck(nn.Module):
    def __init__(self, detector: str, depth: int) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(depth)
        self.neck = make_neck(detector, depth)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.neck(self.backbone(x))


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("depth", DEPTHS)
def test_output_strides_and_channels(depth: int) -> None:
    backbone = ResNetBackbone(depth).eval()
    assert backbone.out_channels == STAGE_CHANNELS[depth]
    assert backbone.strides == (4, 8, 16, 32)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(STAGE_CHANNELS[depth], (4, 8, 16, 32))
    ]


def test_out_indices_subset() -> None:
    subset = ResNetBackbone(18, out_indices=(1, 3)).eval()
    assert subset.out_channels == (128, 512) and subset.strides == (8, 32)
    with torch.no_grad():
        assert [tuple(f.shape) for f in subset(torch.randn(1, 3, 64, 96))] == [(1, 128, 8, 12), (1, 512, 2, 3)]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="depth"):
        ResNetBackbone(34)
    with pytest.raises(ValueError, match="out_indices"):
        ResNetBackbone(18, out_indices=(3, 1))
    with pytest.raises(ValueError, match="frozen_stages"):
        ResNetBackbone(18, frozen_stages=5)


# --------------------------------------------------------------------------- names / counts
@pytest.mark.parametrize("detector", ["gfl", "faster_rcnn"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_state_dict_matches_mmdet(mmdet_models: dict, detector: str, depth: int) -> None:
    reference = {
        k: tuple(v)
        for k, v in mmdet_models[f"{detector}_r{depth}"]["state_dict"].items()
        if k.startswith(("backbone.", "neck."))
    }
    with torch.device("meta"):  # names and shapes only: skip the (slow) random init
        model = BackboneNeck(detector, depth)
    ours = {to_mmdet_name(k, detector): tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == reference
    # Parameters only (no BN running stats / num_batches_tracked buffers) as mmengine counts.
    bn_buffers = {k for k in reference if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    expected = sum(math.prod(s) for k, s in reference.items() if k not in bn_buffers)
    assert count_parameters(model) == expected


def test_name_mapping_rules() -> None:
    assert to_mmdet_name("backbone.layer3.1.downsample.0.weight") == "backbone.layer3.1.downsample.0.weight"
    assert to_mmdet_name("neck.fpn_convs.4.conv.bias", "gfl") == "neck.fpn_convs.4.conv.bias"
    assert to_mmdet_name("head.scales.2.scale", "gfl") == "bbox_head.scales.2.scale"
    assert from_mmdet_name("bbox_head.cls_convs.0.gn.weight", "gfl") == "head.cls_convs.0.gn.weight"
    assert to_mmdet_name("backbone.conv1.weight", "faster_rcnn") == "backbone.conv1.weight"
    assert set(DETECTOR_RULES) >= {"gfl", "faster_rcnn"}
    assert to_mmdet_name("head.roi_head.box_predictor.bbox_pred.weight", "faster_rcnn") == \
        "roi_head.bbox_head.fc_reg.weight"
    with pytest.raises(KeyError):
        to_mmdet_name("head.gfl_cls.weight", "faster_rcnn")  # a GFL name has no Faster R-CNN rule
    with pytest.raises(ValueError):
        to_mmdet_name("neck.x", "yolo")
    state = {"backbone.bn1.weight": torch.ones(2), "head.gfl_reg.bias": torch.zeros(3)}
    mm = to_mmdet_state_dict(state, "gfl")
    assert set(mm) == {"backbone.bn1.weight", "bbox_head.gfl_reg.bias"}
    assert from_mmdet_state_dict({"state_dict": mm}, "gfl").keys() == state.keys()
    with pytest.raises(ValueError, match="no rule"):
        from_mmdet_state_dict({"roi_head.mask_head.conv.weight": torch.ones(1)}, "faster_rcnn")
    assert from_mmdet_state_dict({"roi_head.mask_head.conv.weight": torch.ones(1)}, "faster_rcnn", strict=False) == {}


# --------------------------------------------------------------------------- freezing
def test_defaults_depend_on_weights(tmp_path: Path) -> None:
    scratch = ResNetBackbone(18)
    assert scratch.frozen_stages == -1 and scratch.norm_eval is False
    assert all(p.requires_grad for p in scratch.parameters())
    path = tmp_path / "r18.pth"
    torch.save(scratch.state_dict(), path)
    pretrained = ResNetBackbone(18, weights=str(path))
    assert pretrained.frozen_stages == 1 and pretrained.norm_eval is True
    explicit = ResNetBackbone(18, weights=path, frozen_stages=-1, norm_eval=False)
    assert explicit.frozen_stages == -1 and explicit.norm_eval is False


def test_frozen_stages_have_no_grad() -> None:
    backbone = ResNetBackbone(18, frozen_stages=2, norm_eval=False).train()
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    for name, param in backbone.named_parameters():
        assert param.requires_grad is (not name.startswith(frozen)), name
    # Frozen BNs stay in eval mode after train(); others train.
    assert not backbone.bn1.training and not backbone.layer2[1].bn2.training
    assert backbone.layer3[0].bn1.training and backbone.training
    # Gradients do not reach the frozen stages.
    backbone(torch.randn(2, 3, 32, 32))[-1].sum().backward()
    assert backbone.conv1.weight.grad is None and backbone.layer2[0].conv1.weight.grad is None
    assert backbone.layer3[0].conv1.weight.grad is not None
    mmdet_default = ResNetBackbone(18, frozen_stages=1)
    assert not any(p.requires_grad for p in mmdet_default.layer1.parameters())
    assert all(p.requires_grad for p in mmdet_default.layer2.parameters())


def test_norm_eval_keeps_bn_in_eval_mode() -> None:
    backbone = ResNetBackbone(18, frozen_stages=-1, norm_eval=True)
    model = nn.Sequential(backbone)
    model.train()
    assert backbone.training
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    before = backbone.layer4[1].bn2.running_mean.clone()
    backbone(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, backbone.layer4[1].bn2.running_mean)
    # BN affine parameters still train (norm_eval only freezes the statistics).
    assert backbone.layer4[1].bn2.weight.requires_grad
    plain = ResNetBackbone(18, norm_eval=False).train()
    assert all(m.training for m in plain.modules() if isinstance(m, nn.BatchNorm2d))


# --------------------------------------------------------------------------- checkpoints
def test_local_torchvision_checkpoint_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)
    for module in source.modules():  # non-trivial BN statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
    path = tmp_path / "resnet18_tv.pth"
    torch.save(source.state_dict(), path)  # includes fc.*, which is ignored
    backbone = ResNetBackbone(18, weights=str(path))
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    got = backbone.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # Same weights -> same features as torchvision's own forward pass.
    x = torch.randn(1, 3, 64, 64)
    source.eval(), backbone.eval()
    with torch.no_grad():
        c5 = backbone(x)[-1]
        ref = source.layer4(source.layer3(source.layer2(source.layer1(
            source.maxpool(source.relu(source.bn1(source.conv1(x))))))))
    assert torch.allclose(c5, ref)


def test_local_mmdet_style_checkpoint_loads(tmp_path: Path) -> None:
    source = ResNetBackbone(18)
    wrapped = {"state_dict": {**{f"backbone.{k}": v for k, v in source.state_dict().items()},
                              "neck.lateral_convs.0.conv.weight": torch.zeros(1)},
               "meta": {"epoch": 12}}
    path = tmp_path / "gfl_r18_epoch_12.pth"
    torch.save(wrapped, path)
    backbone = ResNetBackbone(18, weights=path)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in source.state_dict().items())


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match="nope.pth") as info:
        ResNetBackbone(18, weights=str(missing))
    assert "\n" not in str(info.value)


def test_garbage_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth") as info:
        ResNetBackbone(18, weights=str(garbage))
    assert "\n" not in str(info.value)


def test_mismatching_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet50_tv.pth"
    with torch.device("meta"):
        r50 = torchvision.models.resnet50(weights=None)
    torch.save({k: torch.zeros(v.shape) for k, v in r50.state_dict().items() if "layer4" in k or "conv1" in k}, path)
    with pytest.raises(ValueError, match="resnet50_tv.pth") as info:
        ResNetBackbone(18, weights=path)
    message = str(info.value)
    assert "\n" not in message and "missing" in message and "ResNet-18" in message
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(ValueError, match="list.pth"):
        ResNetBackbone(18, weights=not_a_state_dict)


def test_imagenet_download_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(self, *args, **kwargs):
        calls.append(self)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as info:
        ResNetBackbone(50, weights="imagenet")
    message = str(info.value)
    assert calls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1]
    assert "\n" not in message
    assert "could not be downloaded" in message and "weights='/path/to/" in message


def test_imagenet_weights_are_loaded_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, *a, **k: source)
    backbone = ResNetBackbone(18, weights="imagenet")
    assert torch.equal(backbone.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    assert backbone.frozen_stages == 1 and backbone.norm_eval


# --------------------------------------------------------------------------- complexity
class _StandInGFLHead(nn.Module):
    """Throwaway GFL head with MMDetection's structure (3 classes, reg_max 16), for counting only."""

    def __init__(self) -> None:
        super().__init__()

        def tower() -> nn.ModuleList:
            return nn.ModuleList(
                nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.GroupNorm(32, 256), nn.ReLU())
                for _ in range(4)
            )

        self.cls_convs, self.reg_convs = tower(), tower()
        self.gfl_cls = nn.Conv2d(256, 3, 3, padding=1)
        self.gfl_reg = nn.Conv2d(256, 4 * 17, 3, padding=1)
        self.scales = nn.ParameterList(nn.Parameter(torch.tensor(1.0)) for _ in range(5))

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        outs = []
        for x, scale in zip(feats, self.scales):
            cls, reg = x, x
            for conv in self.cls_convs:
                cls = conv(cls)
            for conv in self.reg_convs:
                reg = conv(reg)
            outs.append((self.gfl_cls(cls), self.gfl_reg(reg) * scale))
        return outs


@pytest.mark.parametrize(
    "depth", [18, pytest.param(50, marks=pytest.mark.slow), pytest.param(101, marks=pytest.mark.slow)]
)
def test_gfl_params_and_gflops_match_mmdet(mmdet_models: dict, depth: int) -> None:
    reference = mmdet_models[f"gfl_r{depth}"]
    model = nn.Sequential(BackboneNeck("gfl", depth), _StandInGFLHead())
    assert count_parameters(model) == reference["params"]
    gflops = count_gflops(model, (1, 3, 224, 224))
    assert round(gflops, 3) == pytest.approx(reference["gflops_224"], abs=1e-9)
    # Plain multiply-adds alone are within 0.5% (norms + upsampling are the rest).
    mac_only = count_gflops(model, (1, 3, 224, 224), mmengine_extras=False)
    assert 0.995 < mac_only / reference["gflops_224"] < 1.0
    assert model.training  # train/eval flags restored


def test_count_gflops_conventions() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_gflops(conv, (1, 3, 10, 10)) * 1e9 == pytest.approx(8 * 3 * 9 * 100)
    bn_gn_up = nn.Sequential(nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Upsample(scale_factor=2), nn.ReLU())
    # BN eval 2/elem + GN 5/elem + nearest upsample 1/output elem, ReLU 0.
    assert count_gflops(bn_gn_up, (1, 4, 5, 5)) * 1e9 == pytest.approx(2 * 100 + 5 * 100 + 400)
    assert count_gflops(lambda x: nn.functional.linear(x, torch.ones(5, 6)), (2, 6)) * 1e9 == pytest.approx(60)
    assert count_parameters(nn.BatchNorm2d(4)) == 8
    assert count_parameters(ResNetBackbone(18, frozen_stages=4), trainable_only=True) == 0
