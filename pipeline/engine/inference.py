"""Run a detector over a curated split and score it with the project's metrics."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data.dataset import CuratedDataset, collate
from pipeline.metrics import evaluate_detections
from pipeline.structures import Detections


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: CuratedDataset, device: torch.device, batch_size: int,
                    num_workers: int = 0, progress: bool = True) -> dict[int, Detections]:
    """Detections per image id, boxes mapped back to original-image pixels (on CPU)."""
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    out: dict[int, Detections] = {}
    for batch in tqdm(loader, desc="predict", disable=not progress, mininterval=2.0, dynamic_ncols=True):
        batch = batch.to(device)
        dets = model.predict(model.features(batch.images), batch)
        for i, det in enumerate(dets):
            det = det.to("cpu")
            out[batch.image_ids[i]] = Detections(batch.to_original(i, det.boxes.cpu()), det.scores, det.labels)
    return out


def evaluate_model(model: nn.Module, dataset: CuratedDataset, device: torch.device, batch_size: int,
                   num_workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Predict over ``dataset`` and return the metrics dict (percent)."""
    detections = predict_dataset(model, dataset, device, batch_size, num_workers, progress)
    return evaluate_detections(dataset.coco, detections)
