"""Checkpoints: a model file for other stages and resumable training state.

A model file (``models/<dataset>/<detector>/<model>.pt``) is a dict of tensors and plain
values, loadable with ``torch.load(..., weights_only=True)``::

    {"format": "gkd-bmfi/1", "arch": {"detector", "backbone", "num_classes",
     "class_names", "fpn_channels"}, "state_dict": {...}, "meta": {...}}

Loading checks the architecture before touching weights, so a checkpoint of another
detector, backbone or class count ends with one clear line instead of a shape dump.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.engine.runs import RunId
from pipeline.errors import UserError
from pipeline.io import atomic_file
from pipeline.models.detector import Detector
from pipeline.models.factory import build_detector

FORMAT = "gkd-bmfi/1"


@dataclass(frozen=True)
class Arch:
    """What a state dict needs to fit a model."""

    detector: str
    backbone: str
    num_classes: int
    class_names: tuple[str, ...]
    fpn_channels: int = 256

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Arch":
        return Arch(detector=data["detector"], backbone=data["backbone"], num_classes=int(data["num_classes"]),
                    class_names=tuple(data["class_names"]), fpn_channels=int(data.get("fpn_channels", 256)))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        return data


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file renamed into place."""
    with atomic_file(Path(path), "wb") as handle:
        torch.save(obj, handle)


def load_torch(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with one clear line for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; run the stage that produces it (dvc repro)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: corrupted or not a PyTorch checkpoint ({first}); delete it and re-run") from None


def save_model(path: Path, model: nn.Module, arch: Arch, meta: dict[str, Any] | None = None) -> None:
    """Write a model file (weights on CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch({"format": FORMAT, "arch": arch.as_dict(), "state_dict": state, "meta": meta or {}}, path)


def read_model_file(path: Path) -> tuple[Arch, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a model file: ``(arch, state_dict, meta)``."""
    data = load_torch(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or "arch" not in data:
        raise UserError(f"{path}: not a model file of this project (no '{FORMAT}' header); "
                        "use a models/<dataset>/<detector>/<model>.pt written by the train stage")
    return Arch.from_dict(data["arch"]), data["state_dict"], data.get("meta", {})


def check_arch(path: Path, found: Arch, expected: Arch, what: str = "model") -> None:
    """Raise one line if ``found`` cannot load into a model of ``expected`` architecture."""
    for field in ("detector", "backbone", "num_classes", "fpn_channels"):
        have, want = getattr(found, field), getattr(expected, field)
        if have != want:
            raise UserError(f"{path}: checkpoint {field} is {have!r} but the {what} needs {want!r}; "
                            "use a checkpoint trained for this configuration")
    if found.class_names != expected.class_names:
        raise UserError(f"{path}: checkpoint classes {list(found.class_names)} differ from the dataset's "
                        f"{list(expected.class_names)}; re-train on this dataset")


def load_weights(path: Path, model: nn.Module, expected: Arch, what: str = "model") -> dict[str, Any]:
    """Load a model file into ``model`` after checking its architecture; returns its meta."""
    arch, state, meta = read_model_file(path)
    check_arch(path, arch, expected, what)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].strip()
        raise UserError(f"{path}: state dict does not fit the {what} ({detail}); re-train it") from None
    if result.missing_keys or result.unexpected_keys:
        names = (result.missing_keys or result.unexpected_keys)[:3]
        kind = "missing" if result.missing_keys else "unexpected"
        raise UserError(f"{path}: state dict does not fit the {what} ({kind} tensors such as {names}); "
                        "the checkpoint comes from a different code version, re-train it")
    return meta


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
