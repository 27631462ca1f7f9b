"""Where every file the pipeline writes or reads lives, relative to the repository root.

The one place that builds artifact paths: the stage scripts, the ``gkd-bmfi`` command, the
benchmarks and the library take their paths from here, and ``dvc.yaml`` names the same places
(``${item.dataset}`` etc. for the arguments below). Pure :mod:`pathlib`: importing this module
imports neither torch nor onnxruntime, so the command line can use it.

A model is ``<dataset>/<detector>/<model>`` with ``model = <role>-<backbone>`` (``teacher-resnet101``,
``baseline-resnet18``, ``gkd_bmfi-resnet18``). A QAT fine-tuning of the deployed model ``parent``
with KD method ``method`` (``none``: plain QAT) keeps its files under
``<root>/<dataset>/<detector>/qat/<method>/`` named after ``parent``, so that ``dvc.yaml`` can name
them from its matrix. Functions taking ``qat_method`` return the QAT place when it is given.

Layout (``<ds>/<det>`` = dataset/detector; QAT runs put ``qat/<method>/`` after ``<det>``):

* data: ``data/raw/<ds>/`` (images), ``data/raw_checks/<ds>.json``, ``data/curated/<ds>/{train,val,split}.json``;
* trained models ``models/<ds>/<det>/<model>.pt``, resolved KD settings
  ``models/<ds>/<det>/[qat/]kd_settings/<method>.json``, resumable state
  ``checkpoints/<ds>/<det>/<model>/``, training curves (DVCLive) ``dvclive/<ds>/<det>/<model>/``,
  the KD balance ``logs/kd_balance/<ds>/<det>/<model>.json``;
* evaluation ``metrics/<ds>/<det>/<model>.json`` and ``detections/<ds>/<det>/<model>.npz``,
  pictures ``plots/eval/<ds>/<det>/<model>/`` and ``plots/gradmaps/<ds>/<det>/<model>/``;
* exports ``exports/<ds>/<det>/<model>/``; benchmark ``metrics/benchmark/<ds>/<det>/<model>.json``
  and ``detections/benchmark/<ds>/<det>/<model>/<backend>.npz``;
* reports ``reports/ship.json``, ``reports/summary.md``, ``reports/tables/<kind>_<ds>_<det>.{md,json}``,
  ``plots/benchmark/<ds>_<det>.png``;
* seed replicas: workspaces ``replicas/seed<k>/<ds>/<det>/<student>/`` of this same layout, their
  results copied to ``{metrics,detections}/<ds>/<det>/seed<k>/<student>/``.
"""
from __future__ import annotations

from pathlib import Path

DATA_ROOT = Path("data")
RAW_ROOT = DATA_ROOT / "raw"
CURATED_ROOT = DATA_ROOT / "curated"
SHIP_PATH = Path("reports") / "ship.json"
SUMMARY_PATH = Path("reports") / "summary.md"
TABLES_DIR = Path("reports") / "tables"
REPLICAS_ROOT = Path("replicas")


# --- data -------------------------------------------------------------------------------------

def raw_dir(dataset: str) -> Path:
    """The raw images (and labels) of ``dataset``: ``data/raw/<dataset>/``."""
    return RAW_ROOT / dataset


def raw_check_path(dataset: str) -> Path:
    """The record of the raw-folder check (stage ``check_raw``): ``data/raw_checks/<dataset>.json``."""
    return DATA_ROOT / "raw_checks" / f"{dataset}.json"


def curated_path(dataset: str, split: str) -> Path:
    """The curated COCO json of ``split`` (``train``, ``val``, ``split``): ``data/curated/<dataset>/<split>.json``."""
    return CURATED_ROOT / dataset / f"{split}.json"


# --- one model ---------------------------------------------------------------------------------

def _place(root: str, dataset: str, detector: str, qat_method: str | None = None) -> Path:
    """``<root>/<dataset>/<detector>`` (a QAT run's: ``.../qat/<qat_method>``)."""
    base = Path(root) / dataset / detector
    return base if qat_method is None else base / "qat" / qat_method


def model_path(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """The trained model file: ``models/<ds>/<det>/<model>.pt`` (QAT: ``.../qat/<method>/<model>.pt``)."""
    return _place("models", dataset, detector, qat_method) / f"{model}.pt"


def checkpoint_dir(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """The run's resumable state (``last.pt``): ``checkpoints/<ds>/<det>/<model>/``."""
    return _place("checkpoints", dataset, detector, qat_method) / model


def live_dir(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """The run's DVCLive folder (training curves): ``dvclive/<ds>/<det>/<model>/``."""
    return _place("dvclive", dataset, detector, qat_method) / model


def kd_settings_path(dataset: str, detector: str, method: str, qat: bool = False) -> Path:
    """The resolved settings of KD method ``method`` for ``detector`` on ``dataset`` (stage
    ``kd_settings``, or ``qat_kd_settings`` for a method of ``qat.methods``, ``none`` included):
    the distill (qat) stages of that method depend on this file, not on params."""
    return Path("models") / dataset / detector / ("qat" if qat else "") / "kd_settings" / f"{method}.json"


def balance_log_path(dataset: str, detector: str, model: str) -> Path:
    """The KD-to-task gradient ratio of a distilled model by epoch: ``logs/kd_balance/<ds>/<det>/<model>.json``."""
    return Path("logs") / "kd_balance" / dataset / detector / f"{model}.json"


def metrics_dir(dataset: str, detector: str) -> Path:
    """Every evaluated model's metrics of (dataset, detector): ``metrics/<ds>/<det>/``."""
    return Path("metrics") / dataset / detector


def metrics_path(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """The model's val metrics: ``metrics/<ds>/<det>/<model>.json``."""
    return _place("metrics", dataset, detector, qat_method) / f"{model}.json"


def detections_path(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """The model's val detections (the paired bootstrap's input): ``detections/<ds>/<det>/<model>.npz``."""
    return _place("detections", dataset, detector, qat_method) / f"{model}.npz"


def eval_pictures_dir(dataset: str, detector: str, model: str) -> Path:
    """Predictions drawn, precision-recall curves, confusion matrix (the evaluate stage):
    ``plots/eval/<ds>/<det>/<model>/``."""
    return Path("plots") / "eval" / dataset / detector / model


def gradmap_dir(dataset: str, detector: str, model: str) -> Path:
    """A distilled model's gradient-map pictures: ``plots/gradmaps/<ds>/<det>/<model>/``."""
    return Path("plots") / "gradmaps" / dataset / detector / model


def gradmaps_root(dataset: str, detector: str) -> Path:
    """Every distilled model's gradient-map folder of (dataset, detector): ``plots/gradmaps/<ds>/<det>/``."""
    return Path("plots") / "gradmaps" / dataset / detector


# --- deployment ---------------------------------------------------------------------------------

def exports_root(dataset: str, detector: str) -> Path:
    """Every export of (dataset, detector): ``exports/<ds>/<det>/``."""
    return Path("exports") / dataset / detector


def export_dir(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """One export folder (ONNX files, engines, manifest.json): ``exports/<ds>/<det>/<model>/``
    (QAT: ``exports/<ds>/<det>/qat/<method>/<model>/``)."""
    return _place("exports", dataset, detector, qat_method) / model


def benchmark_metrics_dir(dataset: str, detector: str) -> Path:
    """Every benchmark record of (dataset, detector): ``metrics/benchmark/<ds>/<det>/``."""
    return Path("metrics") / "benchmark" / dataset / detector


def benchmark_metrics_path(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """An export's latencies per backend: ``metrics/benchmark/<ds>/<det>/<model>.json``
    (QAT: ``.../qat/<method>/<model>.json``)."""
    return _place(str(Path("metrics") / "benchmark"), dataset, detector, qat_method) / f"{model}.json"


def score_path(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """A model's accuracy headline, a DVC metric: ``scores/<ds>/<det>/<model>.json``
    (QAT export: ``scores/<ds>/<det>/qat/<method>/<model>.json``)."""
    return _place("scores", dataset, detector, qat_method) / f"{model}.json"


def latency_scores_dir(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """An export's latency headlines, one DVC metric per backend:
    ``scores/<ds>/<det>/latency/<model>/`` (QAT: ``scores/<ds>/<det>/latency/qat/<method>/<model>/``)."""
    base = Path("scores") / dataset / detector / "latency"
    return (base if qat_method is None else base / "qat" / qat_method) / model


def benchmark_detections_dir(dataset: str, detector: str, model: str, qat_method: str | None = None) -> Path:
    """The val detections of every backend timed: ``detections/benchmark/<ds>/<det>/<model>/``."""
    return _place(str(Path("detections") / "benchmark"), dataset, detector, qat_method) / model


def benchmark_detections_of(record_path: Path, backend: str) -> Path:
    """The val detections of ``backend`` of the benchmark record at ``record_path``: the same
    relative place under ``detections/`` as the record under ``metrics/``, one file per backend."""
    return Path("detections", *Path(record_path).with_suffix("").parts[1:]) / f"{backend}.npz"


# --- reports ------------------------------------------------------------------------------------

def table_paths(kind: str, dataset: str, detector: str) -> tuple[Path, Path]:
    """The markdown and json of a table (``kind``: ``distill`` or ``qat``):
    ``reports/tables/<kind>_<ds>_<det>.{md,json}``."""
    stem = TABLES_DIR / f"{kind}_{dataset}_{detector}"
    return stem.with_suffix(".md"), stem.with_suffix(".json")


def benchmark_plot_path(dataset: str, detector: str) -> Path:
    """Every variant's mAP50 against latency: ``plots/benchmark/<ds>_<det>.png``."""
    return Path("plots") / "benchmark" / f"{dataset}_{detector}.png"


# --- seed replicas ------------------------------------------------------------------------------

def replica_workspace(seed: int, dataset: str, detector: str, student: str, root: Path = REPLICAS_ROOT) -> Path:
    """The replica folder of ``student`` on ``dataset``/``detector`` under ``seed``:
    ``replicas/seed<seed>/<ds>/<det>/<student>/``."""
    return Path(root) / f"seed{seed}" / dataset / detector / student


def replica_copy(folder: Path, seed: int, student: str) -> Path:
    """Where a replica's metrics or detections are copied: ``<folder>/seed<seed>/<student>`` beside
    the main run's (``folder``: ``metrics/<ds>/<det>`` or ``detections/<ds>/<det>``)."""
    return Path(folder) / f"seed{seed}" / student
