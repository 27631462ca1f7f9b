"""Plain feature mimic: MSE between student and teacher FPN outputs at every position.

The floor every detection-KD method is compared with (docs/method.md, 'Baselines'): no mask, no
attention, no adaptation layer. For FPN levels ``l = 1..L`` with features ``[N, C, H_l, W_l]``:

    L_mimic = weight * (1 / L) * sum_l mean_{n,c,i,j} (F^T_l - F^S_l)^2

The mean over elements makes the term independent of the input size and the batch size;
averaging over levels (rather than summing) follows DeFeat's released code for its
"all regions" imitation, the same loss without a mask. ``weight = 1`` is our choice (no paper
fixes it): at that weight the term is of the order of the detection loss when the student
starts from the teacher's neck (inheriting strategy).

This module also holds :func:`check_levels`, the input check every baseline shares.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pipeline.distill.base import KDContext, KDMethod
from pipeline.errors import UserError
from pipeline.structures import Batch

DEFAULTS: dict[str, dict[str, float]] = {
    "gfl": {"weight": 1.0},
    "faster_rcnn": {"weight": 1.0},
}


def check_weight(field: str, value: float) -> float:
    """A non-negative, finite loss weight.

    Raises:
        ValueError: one line naming the argument (the method builder turns constructor
            errors into a :class:`UserError` naming the params.yaml entry).
    """
    value = float(value)
    if not (value >= 0.0 and value != float("inf")):
        raise ValueError(f"{field} = {value} must be a finite number >= 0 (0 switches the term off)")
    return value


def check_levels(method: str, student_feats: list[Tensor], teacher_feats: list[Tensor],
                 context: KDContext, num_levels: int | None = None) -> None:
    """Student and teacher FPN outputs must pair up level by level, with a stride per level.

    Raises:
        UserError: different level counts or shapes (a teacher of another detector or FPN
            width), or a method built for another number of levels.
    """
    if len(student_feats) != len(teacher_feats) or len(student_feats) != len(context.strides):
        raise UserError(
            f"{method}: the student has {len(student_feats)} FPN levels, the teacher "
            f"{len(teacher_feats)} and the detector {len(context.strides)} strides; distil between "
            "models of the same detector type")
    if num_levels is not None and len(student_feats) != num_levels:
        raise UserError(f"{method}: built for {num_levels} FPN levels, got {len(student_feats)}; "
                        f"build it with num_levels={len(student_feats)}")
    for level, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        if s.shape != t.shape:
            raise UserError(
                f"{method}: FPN level {level} is {tuple(s.shape)} in the student and {tuple(t.shape)} "
                "in the teacher; student and teacher need the same FPN width (fpn channels) and input")


class Mimic(KDMethod):
    """Plain FPN mimic (see the module docstring for the equation).

    Args:
        weight: the term's weight.

    Returns from :meth:`forward`: ``{"kd_mimic_mse": weight * L_mimic}``.
    """

    name = "mimic"
    WEIGHTS = ("weight",)

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = check_weight("weight", weight)

    def forward(self, student_feats: list[Tensor], teacher_feats: list[Tensor], batch: Batch,
                context: KDContext) -> dict[str, Tensor]:
        """Student levels ``[N, C, H_l, W_l]`` (in the graph), teacher levels of the same shapes
        (detached here as well) -> the weighted scalar term."""
        check_levels(self.name, student_feats, teacher_feats, context)
        total = sum(F.mse_loss(s, t.detach(), reduction="mean") for s, t in zip(student_feats, teacher_feats))
        return {"kd_mimic_mse": self.weight * total / len(student_feats)}
