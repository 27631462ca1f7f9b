"""DVC stage `distill_tables@<dataset>-<detector>`: the distillation tables from the metrics files.

Writes reports/tables/distill_<dataset>_<detector>.md and .json: the paper's Tables 1-2
(teacher, each student's baseline and every method of ``distill.methods``, mAP50 and voc_mAP50),
each method's gain over its baseline and over ``inherit_only`` with paired bootstrap 95% intervals
(from detections/<dataset>/<detector>/<model>.npz and the curated val split), the KD weights as
balanced, and, when ablation methods (``mfi``, ``bmfi``, ``gkd``) ran, a Table-3-style ablation.
"""
from __future__ import annotations

import argparse

from pipeline.artifacts import curated_path, metrics_dir, replica_copy, table_paths
from pipeline.config import load_params
from pipeline.data.dataset import load_curated
from pipeline.engine.runs import RunId
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_file, write_json
from pipeline.metrics.bootstrap import ImageMatches, image_matches, load_detections
from pipeline.report.tables import ablation_rows, distill_rows, markdown


def val_matches(dataset: str, detector: str, models: list[str], seeds: tuple[int, ...] = ()
                ) -> dict[str, list[ImageMatches]]:
    """Each model's val detections matched once, for the bootstrap: the main run's first, then
    each replica seed's that exists (models not evaluated yet are left out; without the
    curated val split there is nothing to match)."""
    val_path = curated_path(dataset, "val")
    if not val_path.is_file():
        return {}
    val = load_curated(val_path)
    out = {}
    for model in models:
        run = RunId(dataset, detector, model)
        paths = [run.detections_path] + [replica_copy(run.detections_path.parent, seed, run.backbone)
                                         / run.detections_path.name for seed in seeds]
        found = [image_matches(val, load_detections(p)) for p in paths if p.is_file()]
        if found and paths[0].is_file():
            out[model] = found
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    d = load_params(args.params).distill
    metrics = metrics_dir(args.dataset, args.detector)
    models = [f"{role}-{s}" for s in d.students for role in ("baseline", *d.methods)]
    rows = distill_rows(metrics, d.teacher, d.students, d.methods,
                        val_matches(args.dataset, args.detector, models, d.extra_seeds))
    ablation = ablation_rows(metrics, d.students, d.methods)
    md_path, json_path = table_paths("distill", args.dataset, args.detector)
    text = markdown(args.dataset, args.detector, rows, ablation)
    with atomic_file(md_path) as handle:
        handle.write(text)
    write_json(json_path, {"dataset": args.dataset, "detector": args.detector, "rows": rows, "ablation": ablation})
    print(text)


if __name__ == "__main__":
    main()
