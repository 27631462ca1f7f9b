"""Run identity: which model a stage trains, evaluates or exports, and its name in the tables.

:class:`RunId` is one model ``<dataset>/<detector>/<model>``; :class:`QATRun` one quantization-aware
fine-tuning of a deployed model. Their files are where :mod:`pipeline.artifacts` puts them (each
property below asks it). Pure python: no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import artifacts


class _Files:
    """The files every run has, asked of :mod:`pipeline.artifacts` with the run's :meth:`_where`."""

    def _where(self) -> tuple[str, str, str, str | None]:
        """(dataset, detector, model folder name, QAT method or None) as the artifacts functions take them."""
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.dataset}/{self.detector}/{self.model}"  # type: ignore[attr-defined]

    @property
    def model_path(self) -> Path:
        return artifacts.model_path(*self._where())

    @property
    def checkpoint_dir(self) -> Path:
        return artifacts.checkpoint_dir(*self._where())

    @property
    def metrics_path(self) -> Path:
        return artifacts.metrics_path(*self._where())

    @property
    def detections_path(self) -> Path:
        return artifacts.detections_path(*self._where())

    @property
    def live_dir(self) -> Path:
        """The run's DVCLive folder (training metrics, :mod:`pipeline.engine.live`)."""
        return artifacts.live_dir(*self._where())

    @property
    def export_dir(self) -> Path:
        return artifacts.export_dir(*self._where())

    @property
    def benchmark_metrics_path(self) -> Path:
        return artifacts.benchmark_metrics_path(*self._where())

    @property
    def benchmark_detections_dir(self) -> Path:
        return artifacts.benchmark_detections_dir(*self._where())


@dataclass(frozen=True)
class RunId(_Files):
    """One model of the pipeline: ``<dataset>/<detector>/<model>``, model = ``<role>-<backbone>``."""

    dataset: str
    detector: str
    model: str

    def _where(self) -> tuple[str, str, str, str | None]:
        return self.dataset, self.detector, self.model, None

    @property
    def role(self) -> str:
        return self.model.rsplit("-", 1)[0]

    @property
    def backbone(self) -> str:
        return self.model.rsplit("-", 1)[1]

    @property
    def pictures_dir(self) -> Path:
        """Predictions drawn, precision-recall curves, confusion matrix (the evaluate stage)."""
        return artifacts.eval_pictures_dir(self.dataset, self.detector, self.model)

    @property
    def gradmap_dir(self) -> Path:
        """Gradient-map pictures of a distilled model (the distill stage)."""
        return artifacts.gradmap_dir(self.dataset, self.detector, self.model)

    @property
    def balance_log_path(self) -> Path:
        """The KD-to-task gradient ratio by epoch of a distilled model (the distill stage)."""
        return artifacts.balance_log_path(self.dataset, self.detector, self.model)


@dataclass(frozen=True)
class QATRun(_Files):
    """A quantization-aware fine-tuning of the deployed model ``parent`` with KD ``method``
    (``none``: plain QAT). Its files sit under ``.../qat/<method>/<parent>`` so that dvc.yaml can
    name them from the matrix; :attr:`model` is its display name (``<role>_qat[_<method>]-<backbone>``)."""

    dataset: str
    detector: str
    parent: str
    method: str

    def _where(self) -> tuple[str, str, str, str | None]:
        return self.dataset, self.detector, self.parent, self.method

    @property
    def model(self) -> str:
        role, backbone = self.parent.rsplit("-", 1)
        return f"{role}_qat-{backbone}" if self.method == "none" else f"{role}_qat_{self.method}-{backbone}"

    @property
    def backbone(self) -> str:
        return self.parent.rsplit("-", 1)[1]

    @property
    def role(self) -> str:
        return self.model.rsplit("-", 1)[0]
