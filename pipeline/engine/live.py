"""Training metrics through DVCLive: step-level loss terms, learning rate and throughput, and
the per-epoch record, in ``dvclive/<dataset>/<detector>/<model>/`` (rank 0 only).

Files (DVCLive's layout, read by ``dvc.yaml``): ``metrics.json`` (the latest values, rewritten
at every logged step: a plain cached output, not a DVC metric, since its dozen loss terms would
widen every ``dvc metrics show`` and ``dvc exp show`` table) and
``plots/metrics/{train,epoch}/<name>.tsv`` (one row per logged step: ``step`` is the global
iteration; epoch rows are logged at the epoch's last iteration; DVC plots). Both are persistent
outputs in DVC's cache, so a clone or an experiment restores them with the model. No
``dvc.yaml`` section, report or git commit of DVCLive's own: the pipeline's ``dvc.yaml``
declares these files.

A resumed run continues the same files: rows at or after the iteration it resumes from
(written by the killed attempt) are dropped first, so every step appears once.

DVCLive's own git/DVC integration (experiment names, Studio) is optional here: where it fails,
e.g. in a git repository without a commit, the files are still written and training goes on.
"""
from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping
from pathlib import Path

from dvclive import Live

#: Loss terms and rates are logged every this many iterations (and at each epoch's end).
DEFAULT_EVERY = 10


def _prune(folder: Path, first_stale_step: int) -> None:
    """Drop the rows with ``step >= first_stale_step`` from every tsv under ``folder``."""
    for tsv in folder.glob("plots/metrics/**/*.tsv"):
        with open(tsv, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
            fields = rows[0].keys() if rows else None
        if fields is None:
            continue
        kept = [r for r in rows if int(r["step"]) < first_stale_step]
        with open(tsv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fields), delimiter="\t")
            writer.writeheader()
            writer.writerows(kept)


class _FileLive(Live):
    """DVCLive whose repository integration may fail without stopping training (DVCLive 3.49 asks
    git for the current commit before checking that there is one)."""

    def _init_dvc(self) -> None:
        try:
            super()._init_dvc()
        except Exception as err:  # noqa: BLE001 - any failure of the optional integration
            warnings.warn(f"DVCLive's git/DVC integration is off ({type(err).__name__}: {err}); "
                          "metrics files are still written", stacklevel=2)
            self._dvc_repo = None
            self._inside_dvc_exp = False
            self._save_dvc_exp = False


class TrainingLog:
    """The trainer's metrics sink (see :func:`pipeline.engine.trainer.train`'s ``log``).

    Args:
        folder: the run's DVCLive folder (:func:`pipeline.artifacts.live_dir`).
        start_iteration: the first iteration this process runs (0, or where it resumes).
        every: log the step metrics every this many iterations.
    """

    def __init__(self, folder: Path, start_iteration: int = 0, every: int = DEFAULT_EVERY) -> None:
        self.folder = Path(folder)
        self.every = max(1, int(every))
        if start_iteration > 0:
            _prune(self.folder, start_iteration)
        else:
            for stale in self.folder.glob("plots/metrics/**/*.tsv"):
                stale.unlink()
        self.live = _FileLive(dir=str(self.folder), resume=start_iteration > 0, report=None, save_dvc_exp=False,
                         dvcyaml=None)

    def _log(self, iteration: int, values: Mapping[str, float]) -> None:
        self.live.step = int(iteration)
        for name, value in values.items():
            self.live.log_metric(name, float(value))
        self.live.next_step()

    def step(self, iteration: int, values: Mapping[str, float], last_of_epoch: bool = False) -> None:
        """Step-level figures (``train/<name>``) every ``every`` iterations and at an epoch's end."""
        if iteration % self.every == 0 or last_of_epoch:
            self._log(iteration, {f"train/{k}": v for k, v in values.items()})

    def epoch(self, iteration: int, record: Mapping[str, float]) -> None:
        """The epoch's record (``epoch/<name>``, the epoch number included) at its last iteration."""
        self._log(iteration, {f"epoch/{k}": v for k, v in record.items()})

    def close(self) -> None:
        self.live.end()
