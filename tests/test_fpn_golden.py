"""Our FPN reproduces MMDetection 3.3's FPN necks (GFL and Faster R-CNN configs) exactly."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.fpn import FPN
from pipeline.models.mmdet_names import from_mmdet_state_dict, to_mmdet_name

from conftest import reference_fixture

R18_CHANNELS = [64, 128, 256, 512]


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(reference_fixture("mmdet/fpn_r18_neck_golden.pt"), weights_only=True)


def build_neck(config: dict) -> FPN:
    """Our FPN from the fixture's MMDetection neck config."""
    assert config["type"] == "FPN"
    return FPN(
        in_channels=list(config["in_channels"]),
        out_channels=config["out_channels"],
        num_outs=config["num_outs"],
        start_level=config.get("start_level", 0),
        add_extra_convs=config.get("add_extra_convs", False),
        extra_relu=config.get("relu_before_extra_convs", False),
    )


def load_mmdet_neck(neck: FPN, mmdet_neck_state: dict, detector: str) -> None:
    """Load neck weights given under MMDetection's names (without the ``neck.`` prefix)."""
    ours = from_mmdet_state_dict({f"neck.{k}": v for k, v in mmdet_neck_state.items()}, detector)
    neck_state = {k[len("neck."):]: v for k, v in ours.items()}
    neck.load_state_dict(neck_state, strict=True)


def max_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest deviation, relative to the level's largest magnitude (at least 1).

    Ours runs in float64, so what remains is MMDetection's own float32 rounding: about 2e-5
    absolute on levels whose values reach 5, depending on the CPU's convolution kernel.
    """
    ref = ref.double()
    return ((ours.double() - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()


@pytest.mark.parametrize("detector", ["gfl", "faster_rcnn"])
def test_fpn_reproduces_mmdet_outputs(golden: dict, detector: str) -> None:
    case = golden[detector]
    assert list(case["neck_config"]["in_channels"]) == R18_CHANNELS
    neck = build_neck(case["neck_config"]).eval()
    # Our parameter names are MMDetection's, one to one.
    assert {to_mmdet_name(f"neck.{k}", detector) for k in neck.state_dict()} == {
        f"neck.{k}" for k in case["state_dict"]
    }
    load_mmdet_neck(neck, case["state_dict"], detector)
    with torch.no_grad():
        outs = neck.double()([x.double() for x in golden["inputs_C2_C5"]])
    assert len(outs) == len(case["outputs"]) == 5
    for level, (ours, ref) in enumerate(zip(outs, case["outputs"])):
        assert ours.shape == ref.shape, (detector, level)
        assert max_error(ours, ref) < 1e-5, (detector, level)


def test_gfl_extra_levels_and_strides(golden: dict) -> None:
    """GFL: P3..P7 (strides 8..128 for a 128x384 input); Faster R-CNN: P2..P6 with P6 pooled."""
    c2 = golden["inputs_C2_C5"][0]
    h2, w2 = c2.shape[-2:]  # stride 4
    gfl = golden["gfl"]["outputs"]
    assert [tuple(o.shape[-2:]) for o in gfl] == [
        (math.ceil(h2 * 4 / s), math.ceil(w2 * 4 / s)) for s in (8, 16, 32, 64, 128)
    ]
    frcnn = golden["faster_rcnn"]["outputs"]
    assert torch.equal(frcnn[4], F.max_pool2d(frcnn[3], kernel_size=1, stride=2))


def test_relu_between_p6_and_p7_would_not_match(golden: dict) -> None:
    """Pin the pitfall: torchvision's LastLevelP6P7 puts a ReLU before P7; MMDetection does not."""
    case = golden["gfl"]
    with_relu = FPN(R18_CHANNELS, 256, 5, start_level=1, add_extra_convs="on_output", extra_relu=True).eval()
    load_mmdet_neck(with_relu, case["state_dict"], "gfl")
    with torch.no_grad():
        outs = with_relu.double()([x.double() for x in golden["inputs_C2_C5"]])
    # P3..P6 are unaffected, P7 differs clearly.
    for level in range(4):
        assert max_error(outs[level], case["outputs"][level]) < 1e-5
    assert (outs[4] - case["outputs"][4]).abs().max().item() > 1e-2


def test_fpn_init_is_xavier_uniform_with_zero_bias() -> None:
    torch.manual_seed(0)
    neck = FPN(R18_CHANNELS, 256, 5, start_level=1, add_extra_convs="on_output")
    assert len(neck.fpn_convs) == 5 and len(neck.lateral_convs) == 3
    for name, param in neck.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(param) == 0, name
        else:
            fan_out = param.shape[0] * param.shape[2] * param.shape[3]
            fan_in = param.shape[1] * param.shape[2] * param.shape[3]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert param.abs().max().item() <= bound, name
            assert abs(param.std().item() / (bound / math.sqrt(3.0)) - 1.0) < 0.05, name


def test_fpn_on_input_extra_conv_takes_backbone_channels() -> None:
    neck = FPN(R18_CHANNELS, 32, 5, start_level=1, add_extra_convs=True)
    assert neck.add_extra_convs == "on_input"
    assert neck.fpn_convs[3].conv.in_channels == 512 and neck.fpn_convs[4].conv.in_channels == 32
    x = [torch.randn(1, c, 32 // 2**i, 48 // 2**i) for i, c in enumerate(R18_CHANNELS)]
    outs = neck(x)
    assert [tuple(o.shape) for o in outs] == [(1, 32, 16 // 2**i, 24 // 2**i) for i in range(3)] + [
        (1, 32, 2, 3), (1, 32, 1, 2)
    ]
    with pytest.raises(ValueError):
        FPN(R18_CHANNELS, 32, 5, add_extra_convs="on_something")
