"""Names and paths of the pipeline's artifacts (docs/architecture.md, 'Output contract')."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.engine.checkpoint import Arch, load_weights, read_model_file
from pipeline.errors import UserError
from pipeline.models.detector import Detector
from pipeline.models.factory import build_detector


@dataclass(frozen=True)
class RunId:
    """One model of the pipeline: ``<dataset>/<detector>/<model>``, model = ``<role>-<backbone>``."""

    dataset: str
    detector: str
    model: str

    @property
    def role(self) -> str:
        return self.model.rsplit("-", 1)[0]

    @property
    def backbone(self) -> str:
        return self.model.rsplit("-", 1)[1]

    @property
    def model_path(self) -> Path:
        return Path("models") / self.dataset / self.detector / f"{self.model}.pt"

    @property
    def checkpoint_dir(self) -> Path:
        return Path("checkpoints") / self.dataset / self.detector / self.model

    @property
    def metrics_path(self) -> Path:
        return Path("metrics") / self.dataset / self.detector / f"{self.model}.json"

    @property
    def detections_path(self) -> Path:
        return Path("detections") / self.dataset / self.detector / f"{self.model}.npz"

    @property
    def pictures_dir(self) -> Path:
        """Predictions drawn, precision-recall curves, confusion matrix (the evaluate stage)."""
        return Path("plots") / "eval" / self.dataset / self.detector / self.model

    @property
    def live_dir(self) -> Path:
        """The run's DVCLive folder (training metrics, :mod:`pipeline.engine.live`)."""
        return Path("dvclive") / self.dataset / self.detector / self.model

    def __str__(self) -> str:
        return f"{self.dataset}/{self.detector}/{self.model}"


@dataclass(frozen=True)
class QATRun:
    """A quantization-aware fine-tuning of the deployed model ``parent`` with KD ``method``
    (``none``: plain QAT). Its files sit under ``.../qat/<method>/<parent>`` so that dvc.yaml can
    name them from the matrix; :attr:`model` is its display name (``<role>_qat[_<method>]-<backbone>``)."""

    dataset: str
    detector: str
    parent: str
    method: str

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

    def _under(self, root: str) -> Path:
        return Path(root) / self.dataset / self.detector / "qat" / self.method

    @property
    def model_path(self) -> Path:
        return self._under("models") / f"{self.parent}.pt"

    @property
    def checkpoint_dir(self) -> Path:
        return self._under("checkpoints") / self.parent

    @property
    def live_dir(self) -> Path:
        return self._under("dvclive") / self.parent

    @property
    def export_dir(self) -> Path:
        return self._under("exports") / self.parent

    @property
    def detections_path(self) -> Path:
        return self._under("detections") / f"{self.parent}.npz"

    @property
    def metrics_path(self) -> Path:
        return self._under("metrics") / f"{self.parent}.json"

    def __str__(self) -> str:
        return f"{self.dataset}/{self.detector}/{self.model}"


def curated_path(dataset: str, split: str) -> Path:
    return Path("data") / "curated" / dataset / f"{split}.json"


def kd_settings_path(dataset: str, detector: str, method: str, qat: bool = False) -> Path:
    """The resolved settings of KD method ``method`` for ``detector`` on ``dataset`` (stage
    ``kd_settings``, or ``qat_kd_settings`` for a method of ``qat.methods``, ``none`` included):
    the distill (qat) stages of that method depend on this file, not on params."""
    return Path("models") / dataset / detector / ("qat" if qat else "") / "kd_settings" / f"{method}.json"


def resolve_device(choice: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("params.yaml: train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def fingerprint(*parts: Any) -> str:
    """Stable hash of json-serialisable configuration parts (for resuming checkpoints)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_trained(run: RunId, class_names: list[str] | tuple[str, ...], fpn_channels: int
                 ) -> tuple[Detector, dict[str, Any]]:
    """The model file of ``run`` in a freshly built detector: ``(model, meta)``.

    The file's architecture is checked against the run's detector and backbone, the dataset's
    ``class_names`` and params' ``fpn_channels`` first, so a mismatch ends with one line.
    """
    arch, _, _ = read_model_file(run.model_path)
    model = build_detector(arch.detector, arch.backbone, arch.num_classes, "none", arch.fpn_channels)
    expected = Arch(run.detector, run.backbone, len(class_names), tuple(class_names), fpn_channels)
    return model, load_weights(run.model_path, model, expected)
