"""The per-epoch val mAP50 of the training curves (pipeline/engine/validation.py): on a fixed subset,
in each epoch's record and DVCLive, without changing the trained weights, once per epoch across a
resume."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import InputParams
from pipeline.data.curate import curate_kitti
from pipeline.data.dataset import CuratedDataset
from pipeline.data.synthetic import write_synthetic_kitti
from pipeline.engine.trainer import LoopConfig, train
from pipeline.engine.validation import first_images, val_map50
from pipeline.models.factory import build_detector

INPUT = InputParams(width=128, height=32)
CFG = LoopConfig(epochs=2, batch_size=2, lr=0.01, warmup_iters=1, seed=0)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw") / "synthetic"
    write_synthetic_kitti(root, num_images=6, width=256, height=64, seed=3)
    curated = curate_kitti(root, "synthetic", val_fraction=0.34, seed=0, min_box_size=1.0)
    return curated.train, curated.val


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector("gfl", "resnet18", 3, fpn_channels=16)


def test_the_subset_is_the_first_val_images_with_their_annotations(splits):
    _, val = splits
    cut = first_images(val, 1)
    assert [r["id"] for r in cut["images"]] == [val["images"][0]["id"]]
    assert cut["annotations"] and {a["image_id"] for a in cut["annotations"]} == {val["images"][0]["id"]}
    assert first_images(val, 100)["images"] == val["images"]


def test_measuring_restores_the_random_generators_and_the_train_mode(splits):
    _, val = splits
    model = tiny_model().train()
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    figures = val_map50(model, CuratedDataset(val, INPUT, train=False), CPU, batch_size=2)
    assert set(figures) == {"val_mAP50"} and 0.0 <= figures["val_mAP50"] <= 100.0
    assert model.training
    assert random.getstate() == state[0]
    np.testing.assert_array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])     # a DataLoader draws its base seed from it


@pytest.mark.slow
def test_weights_are_the_same_with_the_measurement_on_and_off_and_a_resume_logs_each_epoch_once(
        splits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_split, val = splits
    data = CuratedDataset(train_split, INPUT, train=True)
    calls = []

    def validate(model):
        calls.append(model.training)
        return val_map50(model, CuratedDataset(val, INPUT, train=False), CPU, batch_size=2)

    off, on = tiny_model(), tiny_model()
    train(off, data, CFG, tmp_path / "off", CPU, "fp")
    result = train(on, data, CFG, tmp_path / "on", CPU, "fp", validate=validate, log_dir=tmp_path / "live")
    for a, b in zip(off.state_dict().values(), on.state_dict().values()):
        assert torch.equal(a, b)
    assert calls == [True, True]                          # after each epoch, on the model in training mode
    assert all("val_mAP50" in h for h in result.history)

    first = tiny_model()                                  # killed after epoch 1, then resumed
    train(first, data, LoopConfig(**{**CFG.__dict__, "epochs": 1}), tmp_path / "resumed", CPU, "fp",
          validate=validate, log_dir=tmp_path / "live2")
    resumed = train(tiny_model(), data, CFG, tmp_path / "resumed", CPU, "fp", validate=validate,
                    log_dir=tmp_path / "live2")
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert [h["val_mAP50"] for h in resumed.history] == [h["val_mAP50"] for h in result.history]

    def rows(live: Path) -> list[str]:
        lines = (live / "plots" / "metrics" / "epoch" / "val_mAP50.tsv").read_text().splitlines()
        return [line.split("\t")[0] for line in lines[1:]]

    assert rows(tmp_path / "live2") == rows(tmp_path / "live") and len(rows(tmp_path / "live")) == 2
