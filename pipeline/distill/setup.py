"""Setting up a distillation run from params: the student, and the KD terms with their weights balanced.

The distill stage, the qat stage (a KD method of ``qat.methods``) and the benchmarks build their
runs with these functions, so the order (seed, build, inherit; wrap, draw the calibration
batches, calibrate) is written once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config import DistillParams, Params
from pipeline.distill.balance import calibrate, calibration_batches, describe, epoch_figures
from pipeline.distill.base import KDMethod
from pipeline.distill.distiller import Distiller
from pipeline.distill.inherit import inherit_neck_and_head
from pipeline.engine.checkpoint import Arch
from pipeline.engine.runs import RunId
from pipeline.models.detector import Detector
from pipeline.models.factory import build_detector
from pipeline.structures import Batch


def build_student(params: Params, run: RunId, arch: Arch, teacher: Detector) -> tuple[Detector, list[str]]:
    """The student of ``run`` (its detector and backbone, ``arch``'s class count), seeded with
    ``params.seed``, with the teacher's neck and head copied in when ``distill.inherit``; returns
    it and the names of the inherited tensors."""
    torch.manual_seed(params.seed)
    student = build_detector(run.detector, run.backbone, arch.num_classes, params.model.weights,
                             params.model.fpn_channels, params.model.norm_eval, params.model.frozen_stages)
    copied: list[str] = []
    if params.distill.inherit:
        copied, _ = inherit_neck_and_head(student, teacher)
    return student, copied


@dataclass
class BalancedKD:
    """A :class:`Distiller` whose KD weights :func:`calibrate` has set, with the calibration
    batches it measured on (measured again after every epoch: :meth:`epoch_metrics`) and the
    calibration record ``balance`` (what the model file's meta keeps as ``kd_balance``)."""

    distiller: Distiller
    batches: list[Batch]
    balance: dict
    device: torch.device

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """The KD-to-task gradient ratio on the calibration batches now (the trainer's ``epoch_metrics``)."""
        return epoch_figures(self.distiller, self.batches, self.device, self.balance)


def balanced_distiller(student: Detector, teacher: Detector, method: KDMethod, d: DistillParams, data,
                       batch_size: int, seed: int, device: torch.device, label: str,
                       announce: bool = True) -> BalancedKD:
    """``student`` distilled from ``teacher`` with ``method``, its weights balanced by
    ``distill.balance`` over the first ``distill.balance.batches`` batches of ``data`` (batches of
    ``batch_size``, drawn with ``seed``: the training loop's). Prints ``<label>: <the weights as
    balanced>`` when ``announce`` and the method has weights."""
    distiller = Distiller(student, teacher, method, d.student_grad).to(device)
    batches = calibration_batches(data, batch_size, d.balance.batches, seed)
    balance = calibrate(distiller, batches, device, d.balance)
    if announce and method.WEIGHTS:
        print(f"{label}: {describe(balance)}")
    return BalancedKD(distiller, batches, balance, device)
