"""Bounding-box-aware multi-grained feature imitation, BMFI (Lan & Tian, WACV 2024, Sec. 3.2,
Eq. 6-9), and the full GKD-BMFI objective (Eq. 10) with the ablation switches of Table 3.

Attention of plain features ``A`` ``[N, C, H, W]`` with temperature ``T`` (Eq. 7-8)::

    S = H*W * softmax_{spatial}( mean_k |A_k| / T )          [N, 1, H, W]
    C = C   * softmax_{channel}( mean_{i,j} |A_{i,j}| / T )  [N, C, 1, 1]

BMFI on one level, summed over levels, each sum divided by the batch size ``N`` (Eq. 9)::

    L_BMFI = sum M_box * S_T * C_T * (A_T - A_S)^2  +  alpha * ( |S_T - S_S|_1 + |C_T - C_S|_1 )

    L_KD   = gkd_weight * L_GKD + beta * L_BMFI                               (Eq. 10)

``M_box`` is the top-flattened Gaussian box mask (:func:`pipeline.distill.masks.gaussian_box_mask`).
The teacher's attention weights the imitation term. The paper's Eq. 10 has no weight on
``L_GKD``; the authors' configs use one per detector (docs/method.md, BMFI weights), ``gkd_weight``.
The per-detector defaults live in params (``distill.gkd``, ``pipeline/config.py``
:class:`GKDParams`); the constructor's defaults are GFL's.

Ablation switches (Table 3): ``gkd`` (the L_GKD term), ``mask`` (``M_box``; off: all ones,
normalised as one box covering the map, :func:`uniform_mask`),
``mfi`` (the ``S, C`` weighting and the attention L1; off: plain squared error). The imitation
term is present when ``mask`` or ``mfi`` is on; ``gkd`` alone is Table 3's "GKD only" row.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.distill.base import KDContext, KDMethod
from pipeline.distill.gkd import EPS, SIGNS, gkd_loss, gradient_map, scaled_grad, task_loss
from pipeline.distill.masks import gaussian_box_mask
from pipeline.structures import Batch

def spatial_attention(feats: Tensor, temperature: float) -> Tensor:
    """Eq. 7: ``[N, C, H, W]`` -> ``S = H*W * softmax_{i,j}(mean_k |A_k| / T)`` ``[N, 1, H, W]``."""
    n, _, h, w = feats.shape
    logits = feats.float().abs().mean(dim=1).reshape(n, -1) / temperature
    return (h * w * torch.softmax(logits, dim=1)).reshape(n, 1, h, w)


def channel_attention(feats: Tensor, temperature: float) -> Tensor:
    """Eq. 8: ``[N, C, H, W]`` -> ``C = C * softmax_k(mean_{i,j} |A_k| / T)`` ``[N, C, 1, 1]``."""
    n, c = feats.shape[:2]
    logits = feats.float().abs().mean(dim=(2, 3)) / temperature
    return (c * torch.softmax(logits, dim=1)).reshape(n, c, 1, 1)


def uniform_mask(feats: Tensor, area_normalize: bool = True) -> Tensor:
    """The mask of the ``mask``-off ablation: ``[N, C, H, W]`` -> ``[N, 1, H, W]``, all ones
    divided by ``H * W`` with ``area_normalize``.

    This is exactly :func:`~pipeline.distill.masks.gaussian_box_mask` of one box covering the
    whole map (every cell inside it, its patch divided by its cell count), so switching the box
    mask off changes *where* the term imitates, not its scale: without the normalisation the
    MFI row of Table 3 would weigh every cell ``H * W`` times more (a term of 737 against 12.6
    with the mask, measured at the first step of the default).
    """
    n, _, h, w = feats.shape
    value = 1.0 / (h * w) if area_normalize else 1.0
    return feats.new_full((n, 1, h, w), value, dtype=torch.float32)


def standardized(feats: Tensor, eps: float = 1e-5) -> Tensor:
    """PKD's normalisation (Cao et al., NeurIPS 2022; mmrazor's ``PKDLoss.norm``) of one
    feature level: each channel ``c`` to zero mean and unit variance over all ``M = N*H*W`` cells of
    the batch, ``[N, C, H, W]`` -> same shape, float32::

        F^_c = (F_c - mu_c) / sqrt(sigma_c^2 + eps),   mu_c, sigma_c^2 over dims (0, 2, 3)

    ``sigma^2`` is the population variance (divisor ``M``), so ``F^`` has exactly unit variance
    and ``sum (F^_T - F^_S)^2 = 2 M (1 - r)`` per channel (``eps`` aside), ``r`` the Pearson
    correlation of teacher and student, which is what makes PKD's loss a PCC loss. mmrazor's
    unbiased ``std + 1e-6`` differs by the factor ``sqrt((M-1)/M)``, and is NaN at ``M = 1``.

    Few cells: no minimum-cell rule. The statistics use all ``M`` cells; a standardised value is
    at most ``sqrt(M - 1)`` in magnitude, and ``eps`` keeps the denominator at least
    ``sqrt(eps)``, so the result and its gradient are finite for every ``M >= 1``. A channel
    whose cells all equal their mean (any channel of a ``1x1`` level at batch 1, a dead channel)
    becomes zeros; at ``M = 1`` teacher and student both do, so the level adds 0 to the loss and
    its gradient (a correlation of one cell is undefined). A cut-off would add a hyper-parameter
    and a jump in the loss where a level crosses it, for levels that then carry no PKD term.

    The statistics couple the images of a batch (as PKD's), per process: not synchronised across
    data-parallel replicas. They are computed in float32 with autocast off, whatever the input's
    dtype or the autocast region.
    """
    with torch.autocast(feats.device.type, enabled=False):
        f = feats.float()
        mean = f.mean(dim=(0, 2, 3), keepdim=True)
        var = f.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
        return (f - mean) / (var + eps).sqrt()


def imitation_loss(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float | None,
                   standardize: bool = False) -> Tensor:
    """Eq. 9's first term on one level: ``sum M * S_T * C_T * (A_T - A_S)^2 / N``.

    Args:
        student, teacher: ``[N, C, H, W]`` (teacher detached).
        mask: ``[N, 1, H, W]``: ``M_box``, or :func:`uniform_mask` (``mask`` off).
        temperature: ``T`` of the teacher's attention, or ``None`` for no attention (``mfi`` off).
        standardize: imitate :func:`standardized` features (``distill.gkd.standardize``: each
            level's channels over ``N x H x W``, teacher and student alike). The weights ``S_T``,
            ``C_T`` still come from the teacher's *raw* features, deliberately: they say where to
            imitate (Eq. 7-8, softmax of mean ``|A|`` / T), and on standardised features every
            channel's mean ``|A|`` is about the same, which would flatten ``C_T`` to near-uniform
            and change ``S_T``; standardisation changes only what is compared, not where.
    """
    t = teacher.detach().float()
    weight = mask
    if temperature is not None:
        weight = weight * spatial_attention(t, temperature) * channel_attention(t, temperature)
    s = student.float()
    if standardize:
        t, s = standardized(t), standardized(s)
    return (weight * (t - s) ** 2).sum() / student.shape[0]


def attention_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Eq. 9's second term (without ``alpha``) on one level:
    ``(|S_T - S_S|_1 + |C_T - C_S|_1) / N``; ``student, teacher`` ``[N, C, H, W]`` -> scalar.

    Always on the raw features, ``distill.gkd.standardize`` or not: the term transfers the
    teacher's attention maps themselves (Eq. 7-8), which standardisation would flatten."""
    t = teacher.detach()
    s_term = (spatial_attention(t, temperature) - spatial_attention(student, temperature)).abs().sum()
    c_term = (channel_attention(t, temperature) - channel_attention(student, temperature)).abs().sum()
    return (s_term + c_term) / student.shape[0]


class GKDBMFI(KDMethod):
    """GKD-BMFI (Eq. 10) and its Table-3 ablations, one module for the four method names.

    Args:
        name: the method name used in loss-term names (``kd_<name>_<term>``).
        gkd, mask, mfi: the ablation switches (see the module docstring).
        gkd_weight: weight of ``L_GKD``.
        beta: weight of ``L_BMFI`` (Eq. 10).
        alpha: weight of the attention L1 inside ``L_BMFI`` (Eq. 9).
        temperature: ``T`` of the attention (Eq. 7-8).
        signed: ``False``: GKD maps from ``|grad|`` and ``|A|`` (the released code).
        sign: ``"ascent"`` (Eq. 1 as printed) or ``"descent"`` (Grad-CAM's sign) for signed maps
            (:func:`pipeline.distill.gkd.channel_weights`).
        targets: ``"gt"`` or ``"pseudo"``: the targets of the ``L_task`` whose gradient weights
            the GKD maps (the distiller computes them).
        area_normalize: divide each box's mask patch by its area (``M_box``).
        pseudo_top_k, pseudo_score_thr: the pseudo targets' selection.
        standardize: imitate per-channel standardised features (:func:`standardized`, PKD's
            normalisation over ``N x H x W`` of each level), making the imitation term independent
            of the features' scale; the attention weights and the attention L1 stay on raw features.

    Returns (forward): ``kd_<name>_gkd`` (when ``gkd``), ``kd_<name>_imitation`` (when ``mask`` or
    ``mfi``), ``kd_<name>_attention`` (when ``mfi``): weighted scalars.
    """

    def __init__(self, name: str = "gkd_bmfi", gkd: bool = True, mask: bool = True, mfi: bool = True,
                 gkd_weight: float = 0.1, beta: float = 1e-3, alpha: float = 0.5, temperature: float = 0.5,
                 signed: bool = True, targets: str = "gt", area_normalize: bool = True,
                 pseudo_top_k: int = 10, pseudo_score_thr: float = 0.3, standardize: bool = False,
                 sign: str = "ascent") -> None:
        super().__init__()
        if targets not in ("gt", "pseudo"):
            raise ValueError(f"targets must be 'gt' or 'pseudo', got {targets!r}")
        if not (gkd or mask or mfi):
            raise ValueError("GKDBMFI needs at least one of gkd, mask, mfi")
        self.name = name
        self.use_gkd, self.use_mask, self.use_mfi = gkd, mask, mfi
        self.gkd_weight, self.beta, self.alpha, self.temperature = gkd_weight, beta, alpha, temperature
        if sign not in SIGNS:
            raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
        self.signed, self.sign, self.targets, self.area_normalize = signed, sign, targets, area_normalize
        self.pseudo_top_k, self.pseudo_score_thr = pseudo_top_k, pseudo_score_thr
        self.standardize = standardize
        self.needs_teacher_loss = gkd
        self.needs_feature_grads = gkd
        # alpha weighs a term inside L_BMFI (Eq. 9), so it is relative: beta scales it too
        self.WEIGHTS = tuple(w for w, on in (("gkd_weight", gkd), ("beta", mask or mfi)) if on)

    def term_groups(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]]:
        """``gkd``: ``L_GKD`` through ``gkd_weight``; ``bmfi``: ``L_BMFI``'s imitation and
        attention terms through ``beta`` (``alpha`` stays their proportion, Eq. 9). Only the groups
        this ablation has."""
        groups: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {}
        if self.use_gkd:
            groups["gkd"] = (("gkd_weight",), (f"kd_{self.name}_gkd",))
        if self.use_mask or self.use_mfi:
            groups["bmfi"] = (("beta",), (f"kd_{self.name}_imitation", f"kd_{self.name}_attention"))
        return groups

    def forward(self, student_feats: list[Tensor], teacher_feats: list[Tensor], batch: Batch,
                context: KDContext) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.use_gkd:
            s_grads, t_grads = self._gradients(student_feats, context)
            s_maps = [gradient_map(f, g, self.signed, EPS, self.sign) for f, g in zip(student_feats, s_grads)]
            t_maps = [gradient_map(f, g, self.signed, EPS, self.sign) for f, g in zip(teacher_feats, t_grads)]
            terms[f"kd_{self.name}_gkd"] = self.gkd_weight * gkd_loss(t_maps, s_maps)
        if self.use_mask or self.use_mfi:
            temperature = self.temperature if self.use_mfi else None
            imitation = student_feats[0].new_zeros((), dtype=torch.float32)
            attention = imitation.clone()
            for s, t, stride in zip(student_feats, teacher_feats, context.strides):
                mask = (gaussian_box_mask(batch.boxes, stride, tuple(s.shape[-2:]), self.area_normalize)
                        if self.use_mask else uniform_mask(s, self.area_normalize))
                imitation = imitation + imitation_loss(s, t, mask, temperature, self.standardize)
                if self.use_mfi:
                    attention = attention + attention_loss(s, t, self.temperature)
            terms[f"kd_{self.name}_imitation"] = self.beta * imitation
            if self.use_mfi:
                terms[f"kd_{self.name}_attention"] = self.beta * self.alpha * attention
        return terms

    @staticmethod
    def _gradients(student_feats: list[Tensor], context: KDContext) -> tuple[list[Tensor], list[Tensor]]:
        """``dL/dA`` of student and teacher: the distiller's, or computed here from the
        context's loss terms (student: retaining the graph for the training backward)."""
        s_grads = context.student_grads
        if s_grads is None:
            s_grads = scaled_grad(task_loss(context.student_losses), list(student_feats), retain_graph=True)
        t_grads = context.teacher_grads
        if t_grads is None:
            if context.teacher_losses is None or context.teacher_feats_grad is None:
                raise ValueError("GKD needs context.teacher_losses and teacher_feats_grad (needs_teacher_loss)")
            t_grads = scaled_grad(task_loss(context.teacher_losses), context.teacher_feats_grad)
        return s_grads, t_grads
