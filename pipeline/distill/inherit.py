"""The inheriting strategy (docs/method.md, 'Setting'): start the student from the teacher's neck and head.

After the student is built (and its weights initialised), every teacher tensor outside the
backbone is copied into the student. Call it after any weight initialisation and before the
optimiser's first step, or the copy is silently overwritten (a known reproduction failure in
FGD-derived code); ``stages/distill.py`` does, and the tests check that the copied tensors
are still there when the first training step runs.

The FPN's lateral 1x1 convs read the backbone's stage outputs, whose widths depend on the
backbone (ResNet-18 C3 has 128 channels, ResNet-101 C3 512): those convs are skipped when
their input width differs, as a checkpoint loader that skips mismatched shapes does. Every other
tensor (FPN output convs, extra levels, the whole head) must have the same shape; a different FPN
width or head ends with one line.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from pipeline.distill.base import KDContext, KDMethod
from pipeline.errors import UserError
from pipeline.models.detector import Detector
from pipeline.structures import Batch

_LATERAL = re.compile(r"^neck\.lateral_convs\.(\d+)\.")


def fpn_width(model: Detector) -> int:
    """Channels of the detector's FPN outputs."""
    return int(model.neck.out_channels)


def inherit_neck_and_head(student: Detector, teacher: Detector) -> tuple[list[str], list[str]]:
    """Copy the teacher's neck and head tensors (parameters and buffers) into the student.

    Args:
        student: the freshly built student, modified in place.
        teacher: the trained teacher (same detector, classes and FPN width).

    Returns:
        ``(copied, skipped)`` state-dict names; ``skipped`` are the lateral convs whose input
        width follows a different backbone.
    """
    if teacher.name != student.name:
        raise UserError(f"distill.inherit: the teacher is a {teacher.name!r} detector and the student a "
                        f"{student.name!r}; inherit only between detectors of the same kind")
    if fpn_width(teacher) != fpn_width(student):
        raise UserError(f"distill.inherit: the teacher's FPN width is {fpn_width(teacher)} but the student's is "
                        f"{fpn_width(student)}; use equal model.fpn_channels or set distill.inherit: false")
    t_state, s_state = teacher.state_dict(), student.state_dict()
    skip_laterals = {m.group(1) for name, value in t_state.items() if (m := _LATERAL.match(name))
                     and name.endswith(".weight") and tuple(value.shape) != tuple(s_state[name].shape)}
    copied, skipped = [], []
    with torch.no_grad():
        for name, value in t_state.items():
            if name.startswith("backbone."):
                continue
            lateral = _LATERAL.match(name)
            if lateral and lateral.group(1) in skip_laterals:
                skipped.append(name)
                continue
            if name not in s_state or tuple(s_state[name].shape) != tuple(value.shape):
                have = tuple(s_state[name].shape) if name in s_state else "missing"
                raise UserError(f"distill.inherit: teacher tensor {name} {tuple(value.shape)} does not fit the "
                                f"student ({have}); inherit needs the same head and FPN, or set distill.inherit: false")
            s_state[name].copy_(value)
            copied.append(name)
    return copied, skipped


class InheritOnly(KDMethod):
    """The inherit-only control (method ``inherit_only``): the student starts from the teacher's
    neck and head and trains on the detection loss alone, through the same stage and loop as
    every KD method.

    Inheriting is a strong effect of its own (docs/method.md, 'Setting'): a KD method's own
    contribution is its gain over this control, not over the plain baseline. It has no loss
    weight, so ``distill.balance`` leaves it alone and the distiller never runs the teacher.
    """

    name = "inherit_only"
    needs_teacher = False

    def forward(self, student_feats: list[Tensor], teacher_feats: list[Tensor], batch: Batch,
                context: KDContext) -> dict[str, Tensor]:
        return {}
