"""distill.balance: auto sets every method's KD-to-task gradient ratio, the calibrated weights
repeat in paper mode, measuring leaves no trace, and the distiller's AMP scale, hook and
non-finite count behave."""
from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import BalanceParams, DistillParams
from pipeline.distill import distiller as distiller_module
from pipeline.distill.balance import calibrate, calibration_batches, measure
from pipeline.distill.distiller import Distiller
from pipeline.distill.gkd import NonFiniteTally, finite
from pipeline.distill.methods import build_method, paper_overrides
from pipeline.structures import Batch
from test_distiller import TinyScenes, tiny_detector

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("gkd_bmfi", "bmfi", "mfi", "gkd", "mimic", "fgd", "fgfi", "defeat")
WIDTH = 32


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return tiny_detector(WIDTH), tiny_detector(WIDTH)


@pytest.fixture(scope="module")
def batches():
    return calibration_batches(TinyScenes(), batch_size=2, count=2, seed=0)


def _distiller(models, name: str, params: DistillParams = DistillParams()) -> Distiller:
    teacher, student = models
    torch.manual_seed(1)      # FGD's GcBlocks and the adaptation convs start from the same draw
    method = build_method(name, "gfl", params, channels=WIDTH, num_levels=5)
    return Distiller(copy.deepcopy(student), teacher, method)


@pytest.mark.parametrize("name", METHODS)
def test_auto_sets_the_measured_gradient_ratio_to_the_target(models, batches, name):
    with _distiller(models, name) as distiller:
        before = distiller.method.loss_weights()
        record = calibrate(distiller, batches, torch.device("cpu"), BalanceParams(mode="auto", ratio=0.3, batches=2))
        after = measure(distiller, batches, torch.device("cpu"))
    assert after.ratio == pytest.approx(0.3, rel=0.05)
    assert record["ratio"] == pytest.approx(0.3, rel=1e-9) and record["target_ratio"] == 0.3
    factor = record["factor"]
    assert record["weights"] == pytest.approx({k: v * factor for k, v in before.items()})
    assert record["weights_before"] == before and record["ratio_before"] == pytest.approx(0.3 / factor)


def test_paper_mode_keeps_the_written_weights(models, batches):
    with _distiller(models, "mimic") as distiller:
        record = calibrate(distiller, batches, torch.device("cpu"), BalanceParams(mode="paper"))
    assert record["factor"] == 1.0 and record["weights"] == {"weight": 1.0} and record["target_ratio"] is None


def _first_step_loss(distiller: Distiller, batch: Batch) -> float:
    student = distiller.student
    student.train()
    feats = student.features(batch.images)
    losses = student.losses(feats, batch)
    losses.update(distiller(feats, batch, losses))
    return float(sum(v.detach() for v in losses.values()))


@pytest.mark.parametrize("name", ["gkd_bmfi", "fgd"])
def test_calibrated_weights_repeat_in_paper_mode_with_the_same_first_step_loss(models, batches, name):
    auto = _distiller(models, name)
    calibrate(auto, batches, torch.device("cpu"), BalanceParams(mode="auto", ratio=0.5, batches=2))
    written = paper_overrides(name, "gfl", auto.method, DistillParams())
    params = DistillParams.model_validate({**DistillParams().model_dump(), **written, "balance": {"mode": "paper"}})
    paper = _distiller(models, name, params)
    assert paper.method.loss_weights() == auto.method.loss_weights()
    record = calibrate(paper, batches, torch.device("cpu"), params.balance)
    assert record["factor"] == 1.0
    assert _first_step_loss(paper, batches[0]) == _first_step_loss(auto, batches[0])
    auto.close(), paper.close()


def test_measuring_leaves_the_student_and_the_step_count_untouched(models, batches):
    with _distiller(models, "gkd_bmfi") as distiller:
        state = {k: v.clone() for k, v in distiller.student.state_dict().items()}
        distiller.student.eval()
        measure(distiller, batches, torch.device("cpu"))
        assert not distiller.student.training and distiller.steps == 0 and distiller.student_grad == "fused"
        assert all(torch.equal(v, distiller.student.state_dict()[k]) for k, v in state.items())


def test_inherit_only_has_no_term_and_skips_the_teacher(models, batches, monkeypatch):
    with _distiller(models, "inherit_only") as distiller:
        monkeypatch.setattr(distiller.teacher, "features", lambda *a: pytest.fail("the teacher ran"))
        record = calibrate(distiller, batches, torch.device("cpu"), BalanceParams())
        assert record["weights"] == {} and record["factor"] == 1.0
        assert _first_step_loss(distiller, batches[0]) > 0


def test_inherit_only_needs_inherit():
    from pipeline.errors import UserError
    with pytest.raises(UserError, match="inherit_only but distill.inherit is false"):
        build_method("inherit_only", "gfl", DistillParams(inherit=False))


def test_amp_gradient_scale_follows_the_scaler(models, batches, monkeypatch):
    """Under autocast the GKD gradients are taken at the loop's GradScaler scale, not a constant."""
    seen = []
    real_heads, real_fused = distiller_module.head_gradients, distiller_module.fused_task_gradients
    monkeypatch.setattr(distiller_module, "head_gradients",
                        lambda det, f, b, scale, tally: seen.append(scale) or real_heads(det, f, b, scale, tally))
    monkeypatch.setattr(distiller_module, "fused_task_gradients",
                        lambda h, f, l, scale, tally: seen.append(scale) or real_fused(h, f, l, scale, tally))
    with _distiller(models, "gkd_bmfi") as distiller:
        batch = batches[0]
        for scale in (65536.0, 512.0):
            distiller.set_loss_scale(scale)
            student = distiller.student
            with torch.autocast("cpu", dtype=torch.bfloat16):
                feats = student.features(batch.images)
                losses = student.losses(feats, batch)
                distiller(feats, batch, losses)
        feats = [f.float() for f in student.features(batch.images)]        # full precision: no scale
        distiller(feats, batch, student.losses(feats, batch))
    assert seen == [65536.0, 65536.0, 512.0, 512.0, 1.0, 1.0]


def test_the_neck_hook_is_removed_when_training_raises(models):
    student = copy.deepcopy(models[1])
    with pytest.raises(RuntimeError, match="killed"):
        with Distiller(student, models[0], build_method("mimic", "gfl", DistillParams())):
            assert len(student.neck._forward_hooks) == 1
            raise RuntimeError("killed")
    assert len(student.neck._forward_hooks) == 0


def test_non_finite_gradient_values_are_counted_not_hidden():
    tally = NonFiniteTally()
    out = finite(torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]), tally)
    finite(torch.tensor([float("nan")]), tally)
    assert out.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert tally.take() == 4 and tally.take() == 0


@pytest.mark.parametrize("shares", [{"gkd": 0.5, "bmfi": 0.5}, {"gkd": 0.2, "bmfi": 0.8}])
def test_auto_terms_sets_each_term_groups_ratio_to_its_share(models, batches, shares):
    params = BalanceParams(mode="auto_terms", ratio=0.4, batches=2, shares=shares)
    with _distiller(models, "gkd_bmfi") as distiller:
        written = distiller.method.loss_weights()
        record = calibrate(distiller, batches, torch.device("cpu"), params)
        after = measure(distiller, batches, torch.device("cpu"))
    for group, share in shares.items():
        assert after.group_ratios()[group] == pytest.approx(0.4 * share, rel=0.05)
        assert record["group_ratios"][group] == pytest.approx(0.4 * share, rel=0.05)
    # each group moved by its own factor; alpha (attention inside BMFI) keeps the authors' proportion
    assert record["weights"]["gkd_weight"] == pytest.approx(written["gkd_weight"] * record["group_factors"]["gkd"])
    assert record["weights"]["beta"] == pytest.approx(written["beta"] * record["group_factors"]["bmfi"])
    assert distiller.method.alpha == DistillParams().gkd.gfl.alpha


@pytest.mark.parametrize("name", ["bmfi", "gkd", "mimic", "fgd"])
def test_auto_terms_gives_a_one_group_method_the_whole_ratio(models, batches, name):
    with _distiller(models, name) as distiller:
        calibrate(distiller, batches, torch.device("cpu"), BalanceParams(mode="auto_terms", ratio=0.3, batches=2))
        after = measure(distiller, batches, torch.device("cpu"))
    assert after.ratio == pytest.approx(0.3, rel=0.05)
