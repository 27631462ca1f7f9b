"""DVC stage `export@<dataset>-<detector>-<model>`: a trained model -> exports/<dataset>/<detector>/<model>/.

Writes model.onnx (fp32, NMS inside, parity-gated against PyTorch on the val split),
model-fp16.onnx and model-int8.onnx (as ``deploy.precisions`` lists; each evaluated with ONNX
Runtime on CPU over val), model-<precision>.engine where TensorRT and a GPU exist, and
manifest.json. A failed parity gate (or any error) leaves no folder behind.
"""
from __future__ import annotations

import argparse
import time

from pipeline.artifacts import curated_path
from pipeline.config import load_params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.deploy.bundle import export_bundle
from pipeline.deploy.parity import previous_export_note
from pipeline.engine.checkpoint import load_trained
from pipeline.engine.runs import RunId
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_dir


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("model", help="<role or method>-<backbone>, e.g. baseline-resnet18")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run = RunId(args.dataset, args.detector, args.model)
    val = CuratedDataset(load_curated(curated_path(run.dataset, "val")), params.input, train=False)
    train = CuratedDataset(load_curated(curated_path(run.dataset, "train")), params.input, train=False)
    model, _ = load_trained(run, val.class_names, params.model.fpn_channels)
    identity = {"dataset": run.dataset, "detector": run.detector, "model": run.model, "backbone": run.backbone}
    start = time.perf_counter()
    with previous_export_note(run.export_dir), atomic_dir(run.export_dir) as folder:
        manifest = export_bundle(model, folder, params, val, train, identity, run.model_path)
    parity = manifest["parity"]
    scores = "  ".join(f"{e['precision']} {e['eval']['mAP50']:.2f}" if "mAP50" in e.get("eval", {})
                       else f"{e['precision']} skipped" for e in manifest["artifacts"].values() if e["kind"] == "onnx")
    print(f"exported {run} in {time.perf_counter() - start:.0f} s: parity mAP50 PyTorch "
          f"{parity['mAP50_pytorch']:.2f} / ONNX {parity['mAP50_onnx']:.2f}, {parity['matched']} of "
          f"{parity['detections_pytorch']} PyTorch detections matched; ORT CPU mAP50 {scores}; TensorRT: "
          f"{manifest['tensorrt'].get('skipped', 'built')} -> {run.export_dir}")


if __name__ == "__main__":
    main()
