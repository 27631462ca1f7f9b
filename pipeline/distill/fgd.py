"""FGD: Focal and Global Knowledge Distillation (Yang et al., CVPR 2022), on every FPN level.

For one level with teacher features ``F^T`` and student features ``F^S``, both
``[N, C, H, W]``, and the ground-truth boxes of the augmented batch (x1,y1,x2,y2 in input
pixels, scaled to the level by its stride):

* Masks (Eq. 2-3 of the arXiv version, :func:`~pipeline.distill.masks.fgd_scale_masks`): ``M`` 1 inside boxes;
  scale ``S = 1 / (H_r W_r)`` inside box ``r`` (smallest box where boxes overlap) and
  ``1 / N_bg`` on the background, ``N_bg = sum (1 - M)``.
* Attention (Eq. 4-5, :func:`attention`), temperature ``T``:
  ``A^S = H W softmax(mean_c |F_c| / T)`` over the positions and
  ``A^C = C softmax(mean_{i,j} |F_{i,j}| / T)`` over the channels; the *teacher's* attention
  weights the feature loss.
* Focal feature loss (Eq. 6)::

      L_fea = alpha * sum M S A^S_T A^C_T (F^T - F^S)^2 + beta * sum (1 - M) S A^S_T A^C_T (F^T - F^S)^2

* Attention loss (Eq. 7): ``L_at = gamma * (|A^S_T - A^S_S|_1 + |A^C_T - A^C_S|_1)``.
* Global relation loss (Eq. 9): ``L_global = lambda * sum (G(F^T) - G(F^S))^2`` with the
  GcBlock ``G(F) = F + W_v2 ReLU(LN(W_v1 sum_j softmax_j(W_k F_j) F_j))`` (context modelling,
  then the channel-add transform).

Every sum runs over channels and positions and is divided by the batch size ``N``, as the
released code does; the level terms are added (the released configs attach one loss module per
FPN level). The GcBlocks are trainable parameters of this method: one for the student side and
one for the teacher side *per FPN level*, as in the released code (``conv_mask_s`` /
``conv_mask_t``, ``channel_add_conv_s`` / ``channel_add_conv_t`` in each level's loss); the
distiller puts :meth:`parameters` into the optimiser. Their last conv starts at zero (so
``G`` starts as the identity) and the context conv with Kaiming (fan-in) weights, as released.
FGD's 1x1 alignment conv exists only when student and teacher widths differ; both FPNs here are
256 wide, so no adaptation layer is used.

Weights ``(T, alpha, beta, gamma, lambda)``: GFL 0.5, 1e-3, 5e-4, 5e-4, 5e-6; Faster R-CNN 0.5,
5e-5, 2.5e-5, 5e-5, 5e-7 (docs/method.md, 'Baselines'; the released Faster R-CNN config).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.distill.base import KDContext, KDMethod
from pipeline.distill.masks import fgd_scale_masks
from pipeline.distill.mimic import check_levels, check_weight
from pipeline.structures import Batch

DEFAULTS: dict[str, dict[str, float]] = {
    "gfl": {"temperature": 0.5, "alpha": 1e-3, "beta": 5e-4, "gamma": 5e-4, "lam": 5e-6},
    "faster_rcnn": {"temperature": 0.5, "alpha": 5e-5, "beta": 2.5e-5, "gamma": 5e-5, "lam": 5e-7},
}


def attention(feats: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """FGD's spatial and channel attention (Eq. 4-5).

    Args:
        feats: ``[N, C, H, W]``.
        temperature: ``T``.

    Returns:
        ``(A^S [N, 1, H, W], A^C [N, C, 1, 1])``; ``A^S`` sums to ``H*W`` and ``A^C`` to ``C``
        per image.
    """
    n, c, h, w = feats.shape
    value = feats.abs()
    spatial = value.mean(dim=1).reshape(n, h * w) / temperature
    channel = value.mean(dim=(2, 3)) / temperature
    a_s = (h * w) * F.softmax(spatial, dim=1)
    a_c = c * F.softmax(channel, dim=1)
    return a_s.view(n, 1, h, w), a_c.view(n, c, 1, 1)


class GlobalContextBlock(nn.Module):
    """GcBlock (Cao et al., GCNet 2019) as FGD uses it (Eq. 9): ``[N, C, H, W] -> [N, C, H, W]``.

    Context modelling: a 1x1 conv to one logit per position, softmax over the positions, the
    weighted sum of the features -> ``[N, C, 1, 1]``. Transform: 1x1 conv to ``C / 2``,
    LayerNorm, ReLU, 1x1 conv back to ``C``, added to every position.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = channels // 2
        self.context = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.context.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.context.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        weights = F.softmax(self.context(x).view(n, 1, h * w), dim=2)  # [N, 1, HW]
        context = torch.bmm(x.reshape(n, c, h * w), weights.transpose(1, 2))  # [N, C, 1]
        return x + self.transform(context.view(n, c, 1, 1))


class FGD(KDMethod):
    """FGD on every FPN level (equations in the module docstring).

    Args:
        temperature: ``T`` of the attention.
        alpha, beta: foreground and background feature-loss weights.
        gamma: attention-loss weight.
        lam: global relation-loss weight (``lambda``).
        num_levels: FPN levels (one pair of GcBlocks each).
        channels: FPN width.

    Returns from :meth:`forward`: ``kd_fgd_fg``, ``kd_fgd_bg``, ``kd_fgd_attention``,
    ``kd_fgd_relation``, each already weighted. With identical student and teacher features
    the first three are zero; the relation term is zero only while the student and teacher
    GcBlocks agree (at initialisation, where both are the identity), not by construction.
    """

    name = "fgd"
    WEIGHTS = ("alpha", "beta", "gamma", "lam")

    def __init__(self, temperature: float = 0.5, alpha: float = 1e-3, beta: float = 5e-4, gamma: float = 5e-4,
                 lam: float = 5e-6, num_levels: int = 5, channels: int = 256) -> None:
        super().__init__()
        if not float(temperature) > 0:
            raise ValueError(f"temperature = {temperature} must be > 0 (the paper uses 0.5)")
        self.temperature = float(temperature)
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.gamma = check_weight("gamma", gamma)
        self.lam = check_weight("lam", lam)
        self.num_levels = int(num_levels)
        self.student_gc = nn.ModuleList(GlobalContextBlock(channels) for _ in range(num_levels))
        self.teacher_gc = nn.ModuleList(GlobalContextBlock(channels) for _ in range(num_levels))

    def forward(self, student_feats: list[Tensor], teacher_feats: list[Tensor], batch: Batch,
                context: KDContext) -> dict[str, Tensor]:
        """Per level ``[N, C, H_l, W_l]`` student (in the graph) and teacher features, the
        batch's boxes (input pixels), ``context.strides`` -> the four weighted terms."""
        check_levels(self.name, student_feats, teacher_feats, context, self.num_levels)
        fg_loss = bg_loss = at_loss = rel_loss = student_feats[0].new_zeros(())
        for level, (s, t) in enumerate(zip(student_feats, teacher_feats)):
            t = t.detach()
            n = s.shape[0]
            fg, bg = fgd_scale_masks([b.to(s.device) for b in batch.boxes], context.strides[level], s.shape[-2:])
            a_s_t, a_c_t = attention(t, self.temperature)
            a_s_s, a_c_s = attention(s, self.temperature)
            weighted = (t - s).pow(2) * a_s_t * a_c_t
            fg_loss = fg_loss + (weighted * fg).sum() / n
            bg_loss = bg_loss + (weighted * bg).sum() / n
            at_loss = at_loss + ((a_s_t - a_s_s).abs().sum() + (a_c_t - a_c_s).abs().sum()) / n
            rel = self.teacher_gc[level](t) - self.student_gc[level](s)
            rel_loss = rel_loss + rel.pow(2).sum() / n
        return {
            "kd_fgd_fg": self.alpha * fg_loss,
            "kd_fgd_bg": self.beta * bg_loss,
            "kd_fgd_attention": self.gamma * at_loss,
            "kd_fgd_relation": self.lam * rel_loss,
        }
