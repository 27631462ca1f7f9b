"""The contract every knowledge-distillation method follows (docs/architecture.md).

A KD method is an ``nn.Module`` called once per training step::

    terms = method(student_feats, teacher_feats, batch, context)   # dict[str, Tensor]

* ``student_feats``: the student's FPN levels, finest first, each ``[N, C, H_l, W_l]``,
  *in the autograd graph* (the imitation terms train the student through them).
* ``teacher_feats``: the frozen teacher's FPN levels, same shapes, *detached*.
* ``batch``: the augmented training :class:`~pipeline.structures.Batch` (boxes x1,y1,x2,y2 in
  input pixels, after resize, flip and padding), so masks built from it sit where the
  features are.
* ``context``: :class:`KDContext`, what a method may need beyond features and boxes.

The returned terms are scalars, already multiplied by their weights, named
``kd_<method>_<term>`` so the training log shows each one; the training loop adds them to the
detection loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from pipeline.structures import Batch


@dataclass
class KDContext:
    """Per-step information handed to a KD method.

    Attributes:
        detector: ``"gfl"`` or ``"faster_rcnn"`` (anchor layouts differ).
        strides: stride of each FPN level, finest first (GFL 8..128, Faster R-CNN 4..64).
        student_losses: the student's detection loss terms of this step (with the
            distiller's fused student gradient their head graph is already consumed: use
            ``student_grads``).
        teacher_losses: the teacher's detection loss values on the same batch, computed
            from its detached FPN features made to require grad (GKD's teacher side), or
            ``None`` when no method asked for them.
        teacher_feats_grad: the leaf tensors ``teacher_losses`` were computed from
            (``feats.detach().requires_grad_()``), so GKD can take their gradient.
        student_grads: ``dL_task/d student_feats`` per level (float32, detached), when a
            method sets ``needs_feature_grads`` (GKD); the distiller computes them once.
        teacher_grads: ``d teacher_losses / d teacher_feats_grad`` likewise.
        extras: free-form per-step values (e.g. ``iteration``).
    """

    detector: str
    strides: tuple[int, ...]
    student_losses: dict[str, Tensor]
    teacher_losses: dict[str, Tensor] | None = None
    teacher_feats_grad: list[Tensor] | None = None
    student_grads: list[Tensor] | None = None
    teacher_grads: list[Tensor] | None = None
    extras: dict = field(default_factory=dict)


class KDMethod(nn.Module):
    """Base of the KD methods. Subclasses set ``name`` and implement :meth:`forward`.

    ``needs_teacher_loss``: the distiller computes ``context.teacher_losses`` (an extra
    teacher head pass with gradient to its FPN features) only when a method sets this.
    ``needs_feature_grads``: the distiller also fills ``context.student_grads`` and
    ``context.teacher_grads`` (see :class:`KDContext`).
    ``needs_teacher = False`` (``inherit_only``): the distiller skips the teacher altogether.
    """

    name: str = "kd"
    needs_teacher_loss: bool = False
    needs_feature_grads: bool = False
    #: ``False`` for a method that never reads the teacher (``inherit_only``): the distiller
    #: then adds nothing and does not run the teacher.
    needs_teacher: bool = True
    #: the attributes that are loss weights: every returned term is linear in exactly one of them
    #: (or a product including one), so multiplying all of them by ``k`` multiplies the KD
    #: gradient by ``k``. ``distill.balance: auto`` scales them (pipeline/distill/balance.py).
    WEIGHTS: tuple[str, ...] = ()

    def term_groups(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]]:
        """The groups of KD terms that ``distill.balance.mode: auto_terms`` balances each on its
        own: ``{group name: (the weights scaling it, the names of its terms)}``; ``None`` for the
        terms means all of them. Default: one group, the method (the same as ``auto``)."""
        return {self.name: (self.WEIGHTS, None)}

    def loss_weights(self) -> dict[str, float]:
        """``{attribute: value}`` of the loss weights (:attr:`WEIGHTS`)."""
        return {name: float(getattr(self, name)) for name in self.WEIGHTS}

    def scale_weights(self, factor: float, names: tuple[str, ...] | None = None) -> dict[str, float]:
        """Multiply the loss weights ``names`` (default: every one) by ``factor`` (> 0); returns
        the new weights."""
        if not (factor > 0 and factor != float("inf")):
            raise ValueError(f"a KD weight factor must be finite and > 0, got {factor}")
        for name in self.WEIGHTS if names is None else names:
            setattr(self, name, float(getattr(self, name)) * factor)
        return self.loss_weights()

    def forward(self, student_feats: list[Tensor], teacher_feats: list[Tensor], batch: Batch,
                context: KDContext) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError
