"""The distiller: a frozen teacher, a KD method, and the training loop's ``extra`` hook.

Per training step (``pipeline/engine/trainer.py`` calls ``extra(feats, batch, losses)`` after
the student's forward)::

    t_feats = teacher.features(batch.images)             # no_grad, eval mode, once per step
    [GKD]   teacher head loss on t_feats.detach().requires_grad_() -> dL_T/dA_T (FPN only)
    [GKD]   dL_S/dA_S from the student's own training forward
    terms   = method(feats, t_feats, batch, context)     # named, weighted KD terms

The teacher is a plain attribute of the distiller, never a submodule of the student: it is not
in the optimiser, not checkpointed with the student and never wrapped by
DistributedDataParallel. It stays in eval mode with ``requires_grad=False``.

Student gradient for GKD (``student_grad``):

* ``"separate"``: ``autograd.grad(L_task, feats, retain_graph=True)``, then the loop's
  backward of the total loss traverses the student head a second time;
* ``"fused"`` (default): one ``autograd.grad(L_task, feats + head params)`` traverses the head
  once; the returned loss terms then carry those gradients (:class:`_InjectGradients`) so the
  loop's backward sends ``dL_task/dfeats`` into the neck and backbone and ``dL_task/dθ_head``
  to the head parameters without re-entering the head. The parameter gradients are the same
  as with ``"separate"`` (tested); the logged loss values are unchanged.

Per-level gradients: GFL's P6/P7 (and Faster R-CNN's P6) are computed from P5 inside the neck,
so ``autograd.grad(L_task, feats)`` would add those paths into ``dL/dP5`` (and run backward
through the neck). The teacher side takes the head's *direct* gradient at each level (its levels
are independent leaves); so that the student's matches it, the distiller hooks the student's
neck to hand each level to the head as its own view (free, numerically identical): the
gradient at a view is the head's direct gradient, and the backward stops at the FPN output.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.distill.base import KDContext, KDMethod
from pipeline.distill.gkd import NonFiniteTally, finite, head_gradients, pseudo_targets, scaled_grad, task_loss
from pipeline.engine.checkpoint import Arch, load_weights, read_model_file
from pipeline.errors import UserError
from pipeline.models.detector import Detector
from pipeline.models.factory import build_detector
from pipeline.structures import Batch

STUDENT_GRAD_MODES = ("fused", "separate")


def _levels_as_views(module: nn.Module, inputs: tuple, outputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Neck forward hook: each output level as a fresh view, consumed only by its users
    downstream (the head, the KD terms), not by the neck's own extra levels."""
    return tuple(o.view_as(o) for o in outputs)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns ``model``."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(path: Path, student: Arch) -> Detector:
    """Build and load the frozen teacher of ``student`` from a model file.

    The teacher may have any backbone, but its detector, classes and FPN width must be the
    student's (the KD terms compare the two detectors' FPN features and losses); otherwise one
    line names the file, the mismatch and the fix.
    """
    arch, _, _ = read_model_file(path)
    fix = "set distill.teacher to a teacher trained for this detector and dataset"
    if arch.detector != student.detector:
        raise UserError(f"{path}: the teacher is a {arch.detector!r} detector but the student is "
                        f"{student.detector!r}; {fix}")
    if arch.num_classes != student.num_classes or arch.class_names != student.class_names:
        raise UserError(f"{path}: the teacher has {arch.num_classes} classes {list(arch.class_names)} but the "
                        f"student's dataset has {student.num_classes} {list(student.class_names)}; {fix}")
    if arch.fpn_channels != student.fpn_channels:
        raise UserError(f"{path}: the teacher's FPN width is {arch.fpn_channels} but the student's is "
                        f"{student.fpn_channels}; set model.fpn_channels to {arch.fpn_channels} or {fix}")
    teacher = build_detector(arch.detector, arch.backbone, arch.num_classes, "none", arch.fpn_channels)
    load_weights(path, teacher, arch, what="teacher")
    return freeze(teacher)


class _InjectGradients(torch.autograd.Function):
    """``value -> value`` whose backward sends ``grad_out * g_i`` to input ``i``.

    Used by the fused student gradient: the gradients of ``L_task`` with respect to the
    student's features and head parameters, already computed, are delivered by the loop's
    backward (scaled like every other term, e.g. by AMP's loss scale) without re-running the
    head's backward.
    """

    @staticmethod
    def forward(ctx, value: Tensor, grads: tuple[Tensor | None, ...], *inputs: Tensor) -> Tensor:
        ctx.grads = grads
        ctx.dtypes = [x.dtype for x in inputs]
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        out = [None if g is None else (grad_out * g).to(dtype) for g, dtype in zip(ctx.grads, ctx.dtypes)]
        return (None, None, *out)


def fused_task_gradients(head: nn.Module, feats: list[Tensor], losses: dict[str, Tensor], scale: float = 1.0,
                         tally: NonFiniteTally | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
    """``dL_task/dfeats`` with one backward through the head (see the module docstring).

    Args:
        head: the student's head (every trainable tensor ``losses`` depends on besides ``feats``).
        feats: the student's FPN levels ``[N, C, H_l, W_l]``, in the graph.
        losses: the student's loss terms computed from ``feats`` (their head graph is consumed).
        scale: loss scale for half-precision forwards.
        tally: counts the non-finite values replaced in the returned feature gradients.

    Returns:
        ``(grads, replacement)``: float32 ``dL_task/dfeats`` per level (detached) and loss terms
        with the same values whose backward delivers ``dL_task`` to ``feats`` and the head.
    """
    params = [p for p in head.parameters() if p.requires_grad]
    total = task_loss(losses)
    raw = torch.autograd.grad(total * scale if scale != 1.0 else total, [*feats, *params], allow_unused=True)
    raw = [None if g is None else g.float() / scale for g in raw]
    # the maps get finite values; the injected gradients keep any overflow, so AMP's scaler skips the step
    feat_grads = [torch.zeros_like(f, dtype=torch.float32) if g is None else finite(g, tally)
                  for f, g in zip(feats, raw)]
    names = list(losses)
    carrier = _InjectGradients.apply(losses[names[0]].detach(), tuple(raw), *feats, *params)
    replacement = {names[0]: carrier, **{k: losses[k].detach() for k in names[1:]}}
    return feat_grads, replacement


class Distiller:
    """The ``extra`` hook of :func:`pipeline.engine.trainer.train` for a distilled student.

    Args:
        student: the student detector (trained by the loop; only read here).
        teacher: the teacher detector; frozen here (eval mode, no gradients).
        method: the KD method (its own parameters, if any, are trained: pass
            ``extra_module=distiller.method`` to the loop).
        student_grad: ``"fused"`` or ``"separate"`` (module docstring).
        profile: accumulate wall time per phase in :attr:`timings` (seconds).

    Under autocast the GKD gradients are taken of the loss times :attr:`loss_scale`, which the
    training loop keeps equal to its GradScaler's current scale (:meth:`set_loss_scale`), so they
    neither underflow nor overflow where the loop's own backward does not. Gradient values that
    are not finite anyway are replaced by 0 and counted (:meth:`take_nonfinite`).
    A method that does not need the teacher (``inherit_only``) adds nothing: the teacher is not run.
    Use as a context manager (or call :meth:`close`) so the hook on the student's neck is
    removed even when training raises.
    """

    def __init__(self, student: Detector, teacher: Detector, method: KDMethod, student_grad: str = "fused",
                 profile: bool = False) -> None:
        if student_grad not in STUDENT_GRAD_MODES:
            raise ValueError(f"student_grad must be one of {STUDENT_GRAD_MODES}, got {student_grad!r}")
        if teacher.name != student.name or tuple(teacher.strides) != tuple(student.strides):
            raise UserError(f"the teacher is a {teacher.name!r} detector but the student is {student.name!r}; "
                            "distil between detectors of the same kind")
        self.student = student
        self.teacher = freeze(teacher)
        self.method = method
        self.student_grad = student_grad
        self.profile = profile
        self.timings: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.loss_scale = 1.0
        self.nonfinite = NonFiniteTally()
        self._hook = student.neck.register_forward_hook(_levels_as_views)

    def close(self) -> None:
        """Remove the hook on the student's neck (the student then runs as before)."""
        self._hook.remove()

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_loss_scale(self, scale: float) -> None:
        """The loop's current AMP loss scale (used only when the features are half precision)."""
        self.loss_scale = float(scale)

    def take_nonfinite(self) -> int:
        """Gradient values replaced by 0 since the last call."""
        return self.nonfinite.take()

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Calls inside return the KD terms only and leave no trace: the student gradient is
        taken separately (the caller keeps the student's graph), and the step and non-finite
        counts are restored (``pipeline/distill/balance.py``)."""
        saved = (self.student_grad, self.steps, self.nonfinite)
        self.student_grad, self.nonfinite = "separate", NonFiniteTally()
        try:
            yield
        finally:
            self.student_grad, self.steps, self.nonfinite = saved

    def to(self, device: torch.device | str) -> "Distiller":
        self.teacher.to(device)
        self.method.to(device)
        return self

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        if not self.profile:
            yield
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.timings[name] += time.perf_counter() - start

    def _targets(self, model: Detector, feats: list[Tensor], batch: Batch) -> Batch:
        if getattr(self.method, "targets", "gt") != "pseudo":
            return batch
        return pseudo_targets(model, feats, batch, self.method.pseudo_top_k, self.method.pseudo_score_thr)

    def __call__(self, feats: list[Tensor], batch: Batch, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """One step's KD terms (and, with the fused student gradient, the replaced task terms)."""
        if self.teacher.training:   # someone called .train() on everything: the teacher stays in eval
            self.teacher.eval()
        if not self.method.needs_teacher:
            return {}
        self.steps += 1
        half = feats[0].dtype in (torch.float16, torch.bfloat16)
        scale = self.loss_scale if half else 1.0
        tally = self.nonfinite
        with self._phase("teacher_forward"), torch.no_grad():
            t_feats = self.teacher.features(batch.images)
        context = KDContext(detector=self.student.name, strides=tuple(self.student.strides), student_losses=losses,
                            extras={"step": self.steps})
        replacement: dict[str, Tensor] = {}
        wants_grads = self.method.needs_feature_grads
        if self.method.needs_teacher_loss or wants_grads:
            with self._phase("teacher_gradients"):
                t_losses, leaves, t_grads = head_gradients(self.teacher, t_feats,
                                                           self._targets(self.teacher, t_feats, batch), scale, tally)
            context.teacher_losses, context.teacher_feats_grad = t_losses, leaves
            context.teacher_grads = t_grads if wants_grads else None
        if wants_grads:
            with self._phase("student_gradients"):
                if getattr(self.method, "targets", "gt") == "pseudo":
                    s_losses = self.student.losses(feats, self._targets(self.student, feats, batch))
                    context.student_grads = scaled_grad(task_loss(s_losses), feats, scale, tally=tally)
                elif self.student_grad == "fused":
                    context.student_grads, replacement = fused_task_gradients(self.student.head, feats, losses, scale,
                                                                              tally)
                else:
                    context.student_grads = scaled_grad(task_loss(losses), feats, scale, retain_graph=True,
                                                        tally=tally)
        with self._phase("kd_terms"):
            terms = self.method(feats, t_feats, batch, context)
        return {**replacement, **terms}
