"""What does each trained student share with its teacher: GKD maps, or features? (kd_claims' rows)

    .venv/bin/python benchmarks/gkd_maps.py --workdir .kd_claims/cpu --seeds 3 [--images 96]

Reads a finished ``benchmarks/kd_claims.py`` workdir (its teacher and every row's student of
each seed) and measures on its first ``--images`` val images (eval mode, no flip, ground-truth
targets, ``distill.gkd.signed`` and ``sign`` of that workdir's params unless ``--signed``/``--sign``
say otherwise):

- **map distance**: GKD's Eq. 5 between the student's and the teacher's gradient maps
  (Eq. 2-4), ``sum_l mean |M_T - M_S|`` over the FPN levels, and each level's term: how far the
  student is from what the GKD term pulls it towards;
- **feature distance**: ``sum_l mean (F_T - F_S)^2`` over the raw FPN features ``[N, C, H, W]``:
  what plain imitation pulls towards;
- **map lift on boxes**, per level and model (teacher included): the share of a map's mass on
  cells a ground-truth box covers (:func:`pipeline.distill.masks.binary_box_mask`), divided by
  the share of cells those boxes cover, averaged over images with a box and a non-zero map. 1
  means the map says nothing about where the objects are; the teacher's lift is what GKD can
  hand on.

Printed per row: the mean over seeds of each distance with its min-max over seeds, and the
lifts. Nothing is trained or written except ``<workdir>/gkd_maps_<sign>.json``. Not part of
``dvc repro`` or CI.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kd_claims import ABLATION, COMPARISON, DATASET, DETECTOR, TEACHER, finished_seeds, model_of  # noqa: E402

from pipeline.artifacts import curated_path  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.data.dataset import CuratedDataset, collate, load_curated  # noqa: E402
from pipeline.distill.gkd import SIGNS, gkd_loss  # noqa: E402
from pipeline.distill.gradmaps import maps_of  # noqa: E402
from pipeline.distill.masks import binary_box_mask  # noqa: E402
from pipeline.engine.checkpoint import load_trained  # noqa: E402
from pipeline.engine.runs import RunId  # noqa: E402
from pipeline.io import working_dir  # noqa: E402

ROWS = ("baseline", "inherit_only", *ABLATION, *COMPARISON)


def load(folder: Path, model: str, class_names: tuple[str, ...], fpn_channels: int):
    with working_dir(folder):
        detector, _ = load_trained(RunId(DATASET, DETECTOR, model), class_names, fpn_channels)
    return detector.eval()


def features_and_maps(detector, batches, signed: bool, sign: str
                      ) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per batch: the FPN levels ``[N, C, H_l, W_l]`` and the GKD maps ``[N, 1, H_l, W_l]``."""
    feats, maps = [], []
    for batch in batches:
        with torch.no_grad():
            feats.append([f.float() for f in detector.features(batch.images)])
        maps.append(maps_of(detector, batch, signed, sign=sign))
    return feats, maps


def lifts(maps: list[list[torch.Tensor]], batches, strides: tuple[int, ...]) -> list[float]:
    """Per level: mean over images of (map mass on box cells / map mass) / (box cells / cells)."""
    out = []
    for k, stride in enumerate(strides):
        values = []
        for level_maps, batch in zip(maps, batches):
            m = level_maps[k]
            mask = binary_box_mask([b.float() for b in batch.boxes], stride, m.shape[-2:])
            mass, on, area = m.flatten(1).sum(1), (m * mask).flatten(1).sum(1), mask.flatten(1).mean(1)
            ok = (mass > 0) & (area > 0)
            values.extend(((on[ok] / mass[ok]) / area[ok]).tolist())
        out.append(float(np.mean(values)) if values else float("nan"))
    return out


def box_shares(batches, strides: tuple[int, ...], sizes: list[tuple[int, int]]) -> list[float]:
    """Per level: the mean share of cells a ground-truth box covers (the lift's ceiling is its inverse)."""
    return [float(torch.cat([binary_box_mask([b.float() for b in batch.boxes], s, size).flatten(1).mean(1)
                             for batch in batches]).mean()) for s, size in zip(strides, sizes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", nargs="*", default=list(ROWS))
    parser.add_argument("--signed", action=argparse.BooleanOptionalAction, default=None,
                        help="maps from signed gradients and features (default: the workdir's distill.gkd.signed)")
    parser.add_argument("--sign", choices=SIGNS, default=None,
                        help="the signed maps' channel-weight sign (default: the workdir's distill.gkd.sign)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.workdir.resolve()
    params = load_params(root / "params.yaml")
    with working_dir(root):   # the curated file names its images relative to the workdir
        val = CuratedDataset(load_curated(curated_path(DATASET, "val")), params.input, train=False)
        count = min(args.images, len(val))
        batches = [collate([val[i] for i in range(s, min(s + args.batch, count))])
                   for s in range(0, count, args.batch)]
    names, width, g = tuple(val.class_names), params.model.fpn_channels, params.distill.gkd
    signed = g.signed if args.signed is None else args.signed
    sign = g.sign if args.sign is None else args.sign

    teacher = load(root, TEACHER, names, width)
    strides = tuple(teacher.strides)
    t_feats, t_maps = features_and_maps(teacher, batches, signed, sign)
    shares = box_shares(batches, strides, [tuple(m.shape[-2:]) for m in t_maps[0]])
    results = {"images": count, "signed": signed, "sign": sign, "box_cell_share": shares, "teacher": {"lift": lifts(t_maps, batches, strides)},
               "rows": {}}
    levels = " ".join(f"P{int(np.log2(s))}" for s in strides)
    print(f"{root}: {count} val images, {f'signed ({sign})' if signed else 'unsigned'} maps; map lift per level ({levels}); distances summed over levels\n")
    print("| model | seeds | map distance to teacher (Eq. 5; per level) | feature distance to teacher (MSE) | "
          "map lift |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| (share of cells on a box) | | | | {' '.join(f'{v:.2f}' for v in shares)} |")
    print(f"| {TEACHER} | | | | {' '.join(f'{v:.2f}' for v in results['teacher']['lift'])} |")
    for row in args.rows:
        folders = finished_seeds(root, args.seeds, row)
        if not folders:
            print(f"| {row} | 0 | not run yet | | |")
            continue
        map_d, level_d, feat_d, lift = [], [], [], []
        for folder in folders:
            student = load(folder, model_of(row), names, width)
            s_feats, s_maps = features_and_maps(student, batches, signed, sign)
            map_d.append(float(np.mean([gkd_loss(t, s) for t, s in zip(t_maps, s_maps)])))
            level_d.append([float(np.mean([(t[k] - s[k]).abs().mean() for t, s in zip(t_maps, s_maps)]))
                            for k in range(len(strides))])
            feat_d.append(float(np.mean([sum(((a - b) ** 2).mean() for a, b in zip(t, s))
                                         for t, s in zip(t_feats, s_feats)])))
            lift.append(lifts(s_maps, batches, strides))
        mean_lift, mean_level = np.mean(lift, axis=0).tolist(), np.mean(level_d, axis=0).tolist()
        results["rows"][row] = {"seeds": [f.relative_to(root).parts[0] for f in folders], "map_distance": map_d,
                                "map_distance_per_level": mean_level,
                                "feature_distance": feat_d, "lift": mean_lift}
        print(f"| {row} | {len(folders)} | {np.mean(map_d):.3f} [{min(map_d):.3f}, {max(map_d):.3f}] "
              f"({' '.join(f'{v:.2f}' for v in mean_level)}) | "
              f"{np.mean(feat_d):.4f} [{min(feat_d):.4f}, {max(feat_d):.4f}] | "
              f"{' '.join(f'{v:.2f}' for v in mean_lift)} |", flush=True)
    (root / f"gkd_maps_{sign if signed else 'unsigned'}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
