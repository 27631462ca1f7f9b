"""Gradient-guided knowledge distillation, GKD (Lan & Tian, WACV 2024, Sec. 3.1, Eq. 1-5).

For a model (teacher T or student S) and an FPN level with features ``A`` ``[N, C, H, W]``
and the detection loss ``L_task`` of the same augmented batch:

    w_k   = mean_{i,j} dL_task / dA_{k,i,j}                 (Eq. 1: per image, per channel)
    M     = Norm( ReLU( sum_k w_k * A_k ) )                 (Eq. 2-4: ``[N, 1, H, W]``)
    L_GKD = sum_l mean_n mean_{i,j} | M_T - M_S |           (Eq. 5)

``Norm`` is min-max per image and per level, ``(M - min) / (max - min + eps)``: a flat map is 0.
The channel weights ``w`` are detached; the student's activations ``A_S`` stay in the autograd
graph, so ``L_GKD`` trains the student (the authors' released code compares two numpy maps,
constants that give no gradient). The teacher side carries no gradient.

Gradients (docs/method.md, 'GKD'): the teacher's ``dL/dA_T`` comes from its head re-entered with
``feats.detach().requires_grad_()`` (:func:`head_gradients`), so the backward stops at the FPN;
the student's from its own training forward (the distiller supplies them, see
``pipeline/distill/distiller.py``).

Switches: ``signed=False`` uses ``|dL/dA|`` and ``|A|`` as the released code does;
``sign="descent"`` negates the weights of a signed map (Grad-CAM's convention, see
:func:`channel_weights`);
``targets="pseudo"`` (handled by the distiller) uses the model's own confident detections as
the targets of ``L_task``. The KD method combining GKD with BMFI (Eq. 10) is
:class:`pipeline.distill.bmfi.GKDBMFI`.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.structures import Batch

EPS = 1e-7


#: ``distill.gkd.sign``: the sign of the channel weights of a signed map.
SIGNS = ("ascent", "descent")


def channel_weights(grad: Tensor, signed: bool = True, sign: str = "ascent") -> Tensor:
    """Eq. 1: ``[N, C, H, W]`` gradient -> ``[N, C, 1, 1]`` spatial mean per image and channel
    (of ``|grad|`` when not ``signed``), detached and float32.

    ``sign`` (signed maps only): ``"ascent"`` is Eq. 1 as printed, ``w = mean dL/dA``: after the
    ReLU of Eq. 3 the map keeps the features whose growth *raises* the loss, which on a trained
    detector are mostly background cells where it still errs. ``"descent"`` negates it,
    ``w = -mean dL/dA``, Grad-CAM's convention (weights from the gradient of what the model should
    increase): the map keeps the features whose growth lowers the loss, the evidence for the
    objects (docs/method.md, 'GKD's sign')."""
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    g = grad.detach().float()
    w = (g if signed else g.abs()).mean(dim=(2, 3), keepdim=True)
    return -w if signed and sign == "descent" else w


def minmax_normalize(maps: Tensor, eps: float = EPS) -> Tensor:
    """Eq. 4: ``[N, 1, H, W]`` -> ``(M - min) / (max - min + eps)`` per image (a flat map is 0)."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (maps - lo) / (hi - lo + eps)


def gradient_map(feats: Tensor, grad: Tensor, signed: bool = True, eps: float = EPS, sign: str = "ascent") -> Tensor:
    """Eq. 2-4 for one level: ``Norm(ReLU(sum_k w_k A_k))``.

    Args:
        feats: ``A`` ``[N, C, H, W]``; stays in the graph (gradient flows to it, not to ``w``).
        grad: ``dL_task/dA`` ``[N, C, H, W]`` (used detached).
        signed: ``False``: ``|grad|`` and ``|A|`` (the released code's reading).
        sign: ``"ascent"`` (Eq. 1 as printed) or ``"descent"`` (negated weights), see
            :func:`channel_weights`.

    Returns:
        ``[N, 1, H, W]`` float32 in ``[0, 1]``.
    """
    w = channel_weights(grad, signed, sign)
    # ReLU and Norm are positively homogeneous, so scaling an image's weights by a positive
    # number leaves its ideal map unchanged; scaling them to a largest magnitude of 1 makes the
    # eps of Norm act relative to the map's range. Otherwise gradients of 1e-6 (the task loss is
    # divided by the batch's positives) let eps distort the map, and the map would depend on the
    # batch size and on the number of data-parallel processes.
    w = w / w.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    a = feats.float() if signed else feats.float().abs()
    return minmax_normalize(F.relu((w * a).sum(dim=1, keepdim=True)), eps)


def gkd_loss(teacher_maps: list[Tensor], student_maps: list[Tensor]) -> Tensor:
    """Eq. 5: ``sum_l mean_n mean_{i,j} |M_T - M_S|`` over levels of ``[N, 1, H_l, W_l]`` maps."""
    if len(teacher_maps) != len(student_maps):
        raise ValueError(f"{len(teacher_maps)} teacher maps but {len(student_maps)} student maps")
    return sum((t.detach() - s).abs().mean() for t, s in zip(teacher_maps, student_maps))


def task_loss(losses: dict[str, Tensor]) -> Tensor:
    """``L_task``: the sum of a detector's loss terms."""
    return sum(losses.values())


class NonFiniteTally:
    """Counts the gradient values :func:`finite` replaced (a count that grows means the loss
    scale or the learning rate is wrong; the distiller logs it per epoch). The count stays on
    the tensors' device until read, so counting costs no synchronisation."""

    def __init__(self) -> None:
        self._count: Tensor | None = None

    def add(self, t: Tensor) -> None:
        bad = (~torch.isfinite(t)).sum()
        self._count = bad if self._count is None else self._count + bad

    def take(self) -> int:
        """The count since the last call, then reset to 0."""
        value = 0 if self._count is None else int(self._count)
        self._count = None
        return value


def scaled_grad(loss: Tensor, inputs: list[Tensor], scale: float = 1.0, retain_graph: bool = False,
                tally: NonFiniteTally | None = None) -> list[Tensor]:
    """``d loss / d inputs`` as float32 (zeros for inputs the loss does not use).

    ``scale`` multiplies the loss before the backward and divides the result after it, so the
    half-precision activation gradients of an autocast forward do not underflow (the distiller
    passes the GradScaler's current scale); a value that overflowed anyway becomes 0 (the maps
    only need the gradient's direction) and is counted in ``tally``.
    """
    grads = torch.autograd.grad(loss * scale if scale != 1.0 else loss, inputs, retain_graph=retain_graph,
                                allow_unused=True)
    return [torch.zeros_like(x, dtype=torch.float32) if g is None else finite(g.float() / scale, tally)
            for x, g in zip(inputs, grads)]


def finite(t: Tensor, tally: NonFiniteTally | None = None) -> Tensor:
    """``t`` with NaN and infinities replaced by 0 (counted in ``tally`` when given)."""
    if tally is not None:
        tally.add(t)
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)


def head_gradients(detector, feats: list[Tensor], batch: Batch, scale: float = 1.0,
                   tally: NonFiniteTally | None = None) -> tuple[dict[str, Tensor], list[Tensor], list[Tensor]]:
    """The teacher side of GKD: ``dL_task/dA`` with a backward that stops at the FPN.

    The features are detached and made leaves that require grad, the detector's head loss is
    computed on them and differentiated with respect to those leaves only: the backbone and
    neck are never traversed, and no parameter receives a gradient.

    Args:
        detector: a :class:`~pipeline.models.detector.Detector`.
        feats: its FPN levels ``[N, C, H_l, W_l]`` (e.g. computed under ``no_grad``).
        batch: the batch whose ``boxes``/``labels`` are the targets.
        scale: loss scale for autocast (see :func:`scaled_grad`).
        tally: counts replaced non-finite gradient values.

    Returns:
        ``(losses, leaves, grads)``: the detached loss terms, the leaf features and their
        float32 gradients ``[N, C, H_l, W_l]``.
    """
    leaves = [f.detach().requires_grad_() for f in feats]
    with torch.enable_grad():
        losses = detector.losses(leaves, batch)
        grads = scaled_grad(task_loss(losses), leaves, scale, tally=tally)
    return {k: v.detach() for k, v in losses.items()}, leaves, grads


@torch.no_grad()
def pseudo_targets(detector, feats: list[Tensor], batch: Batch, top_k: int = 10, score_thr: float = 0.3) -> Batch:
    """The batch with its ground truth replaced by the model's own detections (``targets:
    pseudo``, as the released code): per image the ``top_k`` highest-scoring detections with
    score ``> score_thr``; boxes x1,y1,x2,y2 in input pixels, ignore regions kept."""
    dets = detector.predict([f.detach() for f in feats], batch)
    boxes, labels = [], []
    for det in dets:
        keep = (det.scores > score_thr).nonzero().squeeze(1)
        keep = keep[det.scores[keep].argsort(descending=True)[:top_k]]
        boxes.append(det.boxes[keep].float())
        labels.append(det.labels[keep].long())
    return replace(batch, boxes=boxes, labels=labels)


def detector_gradient_maps(detector, batch: Batch, signed: bool = True, targets: str = "gt",
                           top_k: int = 10, score_thr: float = 0.3, sign: str = "ascent") -> list[Tensor]:
    """GKD maps of one detector on a batch, per level ``[N, 1, H_l, W_l]`` (for pictures).

    The features are computed without gradient, the gradients as for the teacher side
    (:func:`head_gradients`), so this costs one forward and one head backward.
    """
    with torch.no_grad():
        feats = detector.features(batch.images)
    target_batch = pseudo_targets(detector, feats, batch, top_k, score_thr) if targets == "pseudo" else batch
    _, _, grads = head_gradients(detector, feats, target_batch)
    return [gradient_map(f, g, signed, sign=sign).detach() for f, g in zip(feats, grads)]
