"""Every model has MMDetection 3.3's exact parameter count and tensor shapes, and GFL's GFLOPs."""
from __future__ import annotations

import json

import pytest

from pipeline.models.complexity import count_parameters
from pipeline.models.factory import build_detector, detector_gflops
from pipeline.models.mmdet_names import to_mmdet_name

from conftest import reference_fixture


MODELS = [(d, b) for d in ("gfl", "faster_rcnn") for b in ("resnet18", "resnet50", "resnet101")]


@pytest.fixture(scope="module")
def reference():
    return json.loads(reference_fixture("mmdet/mmdet330_models_3cls.json").read_text())["models"]


@pytest.mark.parametrize("detector, backbone", MODELS)
def test_parameter_count_and_every_tensor_shape_match_mmdetection(reference, detector, backbone):
    ref = reference[f"{detector}_r{backbone[len('resnet'):]}"]
    model = build_detector(detector, backbone, 3)
    assert count_parameters(model) == ref["params"]
    ours = {to_mmdet_name(k, detector): list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref["state_dict"]


@pytest.mark.parametrize("backbone", ["resnet18"])
def test_gfl_gflops_within_5_percent_of_mmdetection(reference, backbone):
    ref = reference[f"gfl_r{backbone[len('resnet'):]}"]["gflops_224"]
    gflops = detector_gflops(build_detector("gfl", backbone, 3))
    assert gflops == pytest.approx(ref, rel=0.05)
    assert gflops == pytest.approx(ref, rel=0.005)  # in fact within half a percent


def test_faster_rcnn_gflops_match_the_papers_table_4():
    # Table 4: 20.77 GFLOPs for the ResNet-18 Faster R-CNN at 224x224 (1,000 proposals).
    assert detector_gflops(build_detector("faster_rcnn", "resnet18", 3)) == pytest.approx(20.77, rel=0.05)
