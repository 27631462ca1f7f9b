"""GFL head against MMDetection 3.3's own outputs (shared/fixtures/mmdet/gfl_r18_head_golden.pt)."""
from __future__ import annotations


import pytest
import torch
from torchvision.ops import box_iou

from pipeline.models.gfl_head import GFLHead, GFLTestConfig
from pipeline.structures import Batch

from conftest import reference_fixture


RTOL = 1e-4


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(reference_fixture("mmdet/gfl_r18_head_golden.pt"), weights_only=True)


@pytest.fixture(scope="module")
def head(golden: dict) -> GFLHead:
    h = GFLHead(num_classes=3)
    h.load_state_dict(golden["head_state_dict"], strict=True)
    return h.eval()


@pytest.fixture(scope="module")
def batch(golden: dict) -> Batch:
    case = golden["case"]
    h, w = (int(v) for v in case["image_hw"])
    n = case["features"][0].shape[0]
    return Batch(
        images=torch.zeros(n, 3, h, w),
        boxes=[b.float() for b in case["gt_boxes"]],
        labels=[lab.long() for lab in case["gt_labels"]],
        ignore_boxes=[torch.zeros(0, 4) for _ in range(n)],
        image_ids=list(range(n)),
        scale_factors=torch.ones(n, 2),
        flipped=torch.zeros(n, dtype=torch.bool),
        image_sizes=[(h, w)] * n,
        orig_sizes=[(h, w)] * n,
    )


@pytest.fixture(scope="module")
def outputs(head: GFLHead, golden: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    with torch.no_grad():
        return head(golden["case"]["features"])


def _max_rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |a - ref| relative to the largest |ref| of the tensor."""
    return float((a - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


def test_state_dict_names_match_mmdet(golden: dict) -> None:
    assert set(GFLHead(num_classes=3).state_dict()) == set(golden["head_state_dict"])


def test_all_anchors_valid_for_fixture_shape(head: GFLHead, golden: dict) -> None:
    sizes = [tuple(f.shape[-2:]) for f in golden["case"]["features"]]
    h, w = (int(v) for v in golden["case"]["image_hw"])
    flags = head.valid_flags(sizes, (h, w), "cpu")
    assert all(bool(f.all()) for f in flags)
    anchors = head.get_anchors(sizes, "cpu")
    assert [a.shape[0] for a in anchors] == [hh * ww for hh, ww in sizes]
    # first anchor of P3: centred on (0, 0), side 8 * 8
    torch.testing.assert_close(anchors[0][0], torch.tensor([-32.0, -32.0, 32.0, 32.0]))


def test_raw_outputs(outputs, golden: dict) -> None:
    cls_scores, bbox_preds = outputs
    case = golden["case"]
    for lvl, (mine, ref) in enumerate(zip(cls_scores, case["raw_cls_scores"])):
        assert mine.shape == ref.shape
        assert _max_rel(mine, ref) < RTOL, f"cls level {lvl}"
        torch.testing.assert_close(mine, ref, rtol=RTOL, atol=1e-5)
    for lvl, (mine, ref) in enumerate(zip(bbox_preds, case["raw_bbox_preds"])):
        assert mine.shape == ref.shape
        assert _max_rel(mine, ref) < RTOL, f"reg level {lvl}"
        torch.testing.assert_close(mine, ref, rtol=RTOL, atol=1e-5)


def test_losses(head: GFLHead, outputs, batch: Batch, golden: dict) -> None:
    cls_scores, bbox_preds = outputs
    losses = head.loss_by_outputs(cls_scores, bbox_preds, batch)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}
    for key, value in losses.items():
        ref = float(golden["case"][key])
        assert abs(float(value) / ref - 1.0) < RTOL, f"{key}: {float(value)} vs {ref}"


def test_loss_from_features_matches(head: GFLHead, batch: Batch, golden: dict) -> None:
    with torch.no_grad():
        losses = head.loss(golden["case"]["features"], batch)
    assert abs(float(losses["loss_cls"]) / float(golden["case"]["loss_cls"]) - 1.0) < RTOL


def test_predictions(head: GFLHead, outputs, batch: Batch, golden: dict) -> None:
    cls_scores, bbox_preds = outputs
    # the fixture's settings (nms_pre 1000, score_thr 0.05, NMS IoU 0.6, max 100) are the head's own
    assert head.test_cfg == GFLTestConfig(score_thr=0.05, nms_iou=0.6, max_per_img=100, nms_pre=1000)
    dets = head.predict_by_outputs(cls_scores, bbox_preds, batch)
    case = golden["case"]
    assert len(dets) == len(case["pred_boxes"])
    for i, det in enumerate(dets):
        ref_boxes, ref_scores, ref_labels = case["pred_boxes"][i], case["pred_scores"][i], case["pred_labels"][i]
        assert len(det) == ref_boxes.shape[0], f"image {i}: {len(det)} vs {ref_boxes.shape[0]} detections"
        iou = box_iou(ref_boxes, det.boxes)
        used = torch.zeros(len(det), dtype=torch.bool)
        for r in range(ref_boxes.shape[0]):
            ok = (
                (det.labels == ref_labels[r])
                & (iou[r] > 0.99)
                & ((det.scores - ref_scores[r]).abs() <= 1e-4)
                & ~used
            )
            assert bool(ok.any()), f"image {i}: reference detection {r} unmatched"
            used[int(ok.nonzero()[0])] = True
