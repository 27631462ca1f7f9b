"""One balancing rule for every KD method: the KD-to-task gradient-norm ratio at the student's FPN.

The methods' published weights were tuned for other inputs, students and loss conventions (a
sum over box cells x channels x levels for FGD and BMFI, a mean for mimic, a masked mean for
DeFeat and FGFI; docs/method.md, 'Balancing the KD terms'), so the same numbers give terms of very different
strength. ``distill.balance.mode: auto`` measures, for the student's FPN outputs
``F = (F_1 .. F_L)`` (each ``[N, C, H_l, W_l]``) and a few fixed training batches ``b``::

    g_task = mean_b || d L_task / dF ||_2          (all levels as one vector)
    g_kd   = mean_b || d sum_t L_t / dF ||_2       (L_t: the method's weighted KD terms)

and multiplies every loss weight of the method (:attr:`~pipeline.distill.base.KDMethod.WEIGHTS`)
by ``ratio * g_task / g_kd``, so that afterwards ``g_kd / g_task = ratio`` on those batches,
for every method alike. This is GradNorm's measure (Chen et al., ICML 2018: balance loss
weights by their gradient norms at a shared layer) applied once, before the first optimiser
step; the FPN outputs are the layer every KD method here reads. The proportions *inside* a
method (GKD's weight against BMFI's, FGD's four terms) stay the authors'; only the method's
total strength against the task is set. The KD terms are linear in these weights, so one
measurement gives the factor exactly.

``mode: auto_terms`` balances each group of a method's terms on its own
(:meth:`~pipeline.distill.base.KDMethod.term_groups`; GKD-BMFI: ``gkd`` through ``gkd_weight``,
``bmfi`` through ``beta``): group ``k`` with share ``s_k`` (``distill.balance.shares``,
renormalised over the groups the method has) gets its weights multiplied by
``ratio * s_k * g_task / g_k``, ``g_k = mean_b || d sum_{t in k} L_t / dF ||_2``, so that
afterwards ``g_k / g_task = ratio * s_k`` for every group. The authors' proportion between the
groups no longer decides; the shares do. A method with one group is balanced as in ``auto``.

The same measurement on the same batches after each epoch (:func:`measure`) is logged as
``kd_task_grad_ratio``, so drift of the balance during training is visible.
Measuring never changes the student: its buffers (BatchNorm statistics) are restored. It runs in
float32 whatever ``train.amp`` is, so a float32 and a mixed-precision run of the same student get
the same weights from the same batches (the terms are float32 under autocast too).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.config import BalanceParams
from pipeline.data.dataset import collate
from pipeline.engine.trainer import EpochSampler
from pipeline.errors import UserError
from pipeline.structures import Batch


@dataclass(frozen=True)
class GradNorms:
    """Mean gradient norms at the student's FPN outputs over the measured batches.

    Attributes:
        task: ``g_task``, of the detection loss.
        kd: ``g_kd``, of the sum of the method's terms.
        terms: per named KD term, its own gradient norm.
    """

    task: float
    kd: float
    terms: dict[str, float]
    groups: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """``g_kd / g_task`` (0 when the method has no term)."""
        return self.kd / self.task if self.task > 0 else float("nan")

    def term_ratios(self) -> dict[str, float]:
        """``g_t / g_task`` per named term."""
        return {name: value / self.task if self.task > 0 else float("nan") for name, value in self.terms.items()}

    def group_ratios(self) -> dict[str, float]:
        """``g_k / g_task`` per term group (``auto_terms``)."""
        return {name: value / self.task if self.task > 0 else float("nan") for name, value in self.groups.items()}


def feature_grad_norm(loss: Tensor, feats: list[Tensor]) -> float:
    """``|| d loss / d feats ||_2`` over all levels as one vector (the graph is kept)."""
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, feats, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))


@contextmanager
def preserved_state(*modules: nn.Module) -> Iterator[None]:
    """Run a block without leaving a trace in ``modules``' buffers (BatchNorm running
    statistics) or training flags."""
    saved = [({k: v.clone() for k, v in m.named_buffers()}, [s.training for s in m.modules()]) for m in modules]
    try:
        yield
    finally:
        for m, (buffers, flags) in zip(modules, saved):
            with torch.no_grad():
                for name, value in m.named_buffers():
                    value.copy_(buffers[name])
            for sub, flag in zip(m.modules(), flags):
                sub.training = flag


def calibration_batches(dataset, batch_size: int, count: int, seed: int) -> list[Batch]:
    """The first ``count`` batches the training loop draws in its first epoch (same order,
    same augmentation), so calibration sees what the first steps see."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    sampler = EpochSampler(len(dataset), seed)
    sampler.set_epoch(0)
    order = list(sampler)[: count * batch_size]
    if not order:
        raise UserError("distill.balance: the training set is empty; there is nothing to calibrate on")
    return [collate([dataset[i] for i in order[k:k + batch_size]]) for k in range(0, len(order), batch_size)]


def group_terms(method) -> dict[str, tuple[str, ...] | None]:
    """The term names of each of ``method``'s balance groups (``None``: all its terms)."""
    return {name: terms for name, (_, terms) in method.term_groups().items()}


def measure(distiller, batches: list[Batch], device: torch.device) -> GradNorms:
    """:class:`GradNorms` of ``distiller``'s method on ``batches`` (student in training mode,
    as in a step; nothing of the student or the distiller changes), per term and per term
    group of the method (:meth:`~pipeline.distill.base.KDMethod.term_groups`)."""
    student = distiller.student
    groups = group_terms(distiller.method)
    task_sum, kd_sum, term_sums, group_sums = 0.0, 0.0, {}, {}
    with preserved_state(student, distiller.method), distiller.measuring():
        student.train()
        for batch in batches:
            batch = batch.to(device)
            feats = student.features(batch.images)
            losses = student.losses(feats, batch)
            task_sum += feature_grad_norm(sum(losses.values()), feats)
            terms = distiller(feats, batch, losses)
            if terms:
                kd_sum += feature_grad_norm(sum(terms.values()), feats)
            term_norms = {name: feature_grad_norm(value, feats) for name, value in terms.items()}
            for name, norm in term_norms.items():
                term_sums[name] = term_sums.get(name, 0.0) + norm
            if len(groups) > 1:
                for group, names in groups.items():
                    members = [k for k in terms if names is None or k in names]
                    norm = (term_norms[members[0]] if len(members) == 1     # a one-term group: its term's norm
                            else feature_grad_norm(sum(terms[k] for k in members), feats) if members else 0.0)
                    group_sums[group] = group_sums.get(group, 0.0) + norm
    n = len(batches)
    return GradNorms(task_sum / n, kd_sum / n, {k: v / n for k, v in term_sums.items()},
                     {k: v / n for k, v in group_sums.items()})


def group_shares(method, shares: dict[str, float]) -> dict[str, float]:
    """``distill.balance.shares`` of ``method``'s term groups (two or more; a method with one is
    balanced as in ``auto``), renormalised to sum to 1 over the groups it has."""
    groups = list(method.term_groups())
    missing = [g for g in groups if g not in shares]
    if missing:
        raise UserError(f"params.yaml: distill.balance.shares has no share for {', '.join(missing)} (the term "
                        f"groups of {method.name}: {', '.join(groups)}); add them, e.g. {{{groups[0]}: 0.5, ...}}")
    total = sum(shares[g] for g in groups)
    return {g: shares[g] / total for g in groups}


def _balance_groups(method, before: GradNorms, params: BalanceParams) -> dict[str, float]:
    """Scale each term group of ``method`` to its share of ``params.ratio``; returns the factors."""
    shares = group_shares(method, params.shares)
    factors = {}
    for group, (weights, _) in method.term_groups().items():
        ratio = before.group_ratios()[group]
        if not (ratio > 0 and math.isfinite(ratio)):
            raise UserError(f"distill.balance: the {group} terms of {method.name} give a gradient norm ratio of "
                            f"{ratio} at the student's FPN outputs, so no weight reaches its share; use "
                            "distill.balance.mode: auto or paper")
        factors[group] = params.ratio * shares[group] / ratio
        method.scale_weights(factors[group], weights)
    return factors


def calibrate(distiller, batches: list[Batch], device: torch.device, params: BalanceParams) -> dict:
    """Apply ``distill.balance`` to ``distiller.method`` (in place) and describe the result.

    Returns a json-ready record: ``mode``, ``target_ratio`` (``None`` in paper mode),
    ``ratio_before`` (at the written weights), ``factor``, ``weights_before`` and ``weights``
    (the method's loss weights after balancing: put them in params with ``mode: paper`` to
    repeat the run), ``ratio`` (after), ``term_ratios`` (after), ``batches``.

    Raises:
        UserError: ``auto`` on a method whose terms give no gradient at the features.
    """
    method = distiller.method
    before = measure(distiller, batches, device)
    weights_before = method.loss_weights()
    factor, factors = 1.0, None
    if params.mode in ("auto", "auto_terms") and method.WEIGHTS:
        if not (before.kd > 0 and math.isfinite(before.kd)):
            raise UserError(f"distill.balance: the {method.name} terms give a gradient norm of {before.kd} at the "
                            "student's FPN outputs, so no weight reaches the target ratio; check the method's "
                            "weights or use distill.balance.mode: paper")
        if params.mode == "auto" or len(method.term_groups()) == 1:    # one group: auto_terms is auto
            factor = params.ratio / before.ratio
            method.scale_weights(factor)
        else:
            factors = _balance_groups(method, before, params)
    record = {
        "mode": params.mode,
        "target_ratio": params.ratio if params.mode != "paper" else None,
        "ratio_before": before.ratio,
        "factor": factor,
        "weights_before": weights_before,
        "weights": method.loss_weights(),
        "ratio": before.ratio * factor,
        "term_ratios": {k: v * factor for k, v in before.term_ratios().items()},
        "task_grad_norm": before.task,
        "batches": len(batches),
    }
    if factors is not None:      # each group moved by its own factor: measure the result
        after = measure(distiller, batches, device)
        record.update(factor=None, group_factors=factors, ratio=after.ratio, term_ratios=after.term_ratios(),
                      group_ratios=after.group_ratios(),
                      target_group_ratios={g: params.ratio * s for g, s in group_shares(method, params.shares).items()})
    return record


def epoch_figures(distiller, batches: list[Batch], device: torch.device, balance: dict) -> dict[str, float]:
    """What a KD run adds to each epoch's record: the gradient values replaced by 0 since the last
    call, the balanced weights (``kd_weight_<name>``) and, for a method with weights, the
    KD-to-task gradient-norm ratio now (total, ``kd_task_grad_ratio``, and per term) on the
    calibration ``batches``: its drift from ``balance["ratio"]`` is the DVC plot of the stage."""
    figures = {"kd_nonfinite_grads": float(distiller.take_nonfinite()),
               **{f"kd_weight_{k}": v for k, v in balance["weights"].items()}}
    if distiller.method.WEIGHTS:
        norms = measure(distiller, batches, device)
        figures["kd_task_grad_ratio"] = norms.ratio
        figures.update({f"ratio_{k}": v for k, v in norms.term_ratios().items()})
        figures.update({f"ratio_group_{k}": v for k, v in norms.group_ratios().items()})
    return figures


def describe(balance: dict) -> str:
    """One line for a :func:`calibrate` record: the mode, the factor(s), the weights and the
    KD-to-task gradient ratio before and after (per term group under ``auto_terms``)."""
    if balance.get("group_factors"):
        factors = ", ".join(f"{g} x{f:.4g}" for g, f in balance["group_factors"].items())
        groups = ", ".join(f"{g} {r:.4g}" for g, r in balance["group_ratios"].items())
        return (f"KD weights {balance['mode']}: {factors} -> {balance['weights']} (KD/task gradient ratio "
                f"{balance['ratio_before']:.4g} -> {balance['ratio']:.4g}; per group {groups})")
    return (f"KD weights {balance['mode']}: x{balance['factor']:.4g} -> {balance['weights']} "
            f"(KD/task gradient ratio {balance['ratio_before']:.4g} -> {balance['ratio']:.4g})")
