"""Training loop, schedule and checkpoints: resume, NaN stop, and bad checkpoints."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.engine.checkpoint import Arch, load_weights, save_model, save_torch
from pipeline.engine.schedule import lr_factor
from pipeline.engine.trainer import EpochSampler, LoopConfig, train
from pipeline.errors import UserError
from pipeline.models.factory import build_detector
from pipeline.structures import Batch


def test_warmup_is_linear_then_steps_decay_after_the_listed_epochs():
    kw = dict(warmup_iters=10, warmup_ratio=0.1, steps=(8, 11), gamma=0.1)
    assert lr_factor(0, 0, **kw) == pytest.approx(0.1)
    assert lr_factor(5, 0, **kw) == pytest.approx(0.55)
    assert lr_factor(10, 0, **kw) == pytest.approx(1.0)
    assert lr_factor(100, 7, **kw) == pytest.approx(1.0)      # 8th epoch still at full lr
    assert lr_factor(100, 8, **kw) == pytest.approx(0.1)      # decays after the 8th
    assert lr_factor(100, 11, **kw) == pytest.approx(0.01)


def test_epoch_sampler_shards_one_permutation_per_epoch():
    single = list(EpochSampler(10, seed=1))
    ranks = [list(EpochSampler(10, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert sorted(single) == list(range(10))
    assert sorted(ranks[0] + ranks[1]) == list(range(10))
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    sampler = EpochSampler(10, seed=1)
    sampler.set_epoch(1)
    assert list(sampler) != single


class ToyDetector(nn.Module):
    """A 2-parameter stand-in with the detector interface, for fast loop tests."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.scale = 1.0

    def features(self, images):
        return [self.conv(images)]

    def losses(self, feats, batch):
        target = torch.stack([b.float().mean() if len(b) else torch.tensor(0.0) for b in batch.boxes])
        return {"loss_fit": ((feats[0].mean(dim=(1, 2, 3)) * self.scale - target / 100) ** 2).mean()}


class ToyData(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        import numpy as np

        from pipeline.data.dataset import Sample
        g = np.random.default_rng(i)
        return Sample(image=g.standard_normal((3, 8, 8)).astype("float32"),
                      boxes=np.array([[i, i, i + 4, i + 4]], "float32"), labels=np.array([0]),
                      ignore_boxes=np.zeros((0, 4), "float32"), image_id=i, scale=(1.0, 1.0), flipped=False,
                      image_size=(8, 8), orig_size=(8, 8))


CFG = LoopConfig(epochs=3, batch_size=2, lr=0.05, warmup_iters=2, num_workers=0, seed=0)


def test_killed_run_resumes_from_last_checkpoint_and_matches_uninterrupted(tmp_path):
    torch.manual_seed(0)
    full = ToyDetector()
    train(full, ToyData(), CFG, tmp_path / "full", torch.device("cpu"), "fp")

    torch.manual_seed(0)
    first = ToyDetector()
    short = LoopConfig(**{**CFG.__dict__, "epochs": 2})
    train(first, ToyData(), short, tmp_path / "killed", torch.device("cpu"), "fp")   # "killed" after 2 epochs
    resumed = ToyDetector()
    result = train(resumed, ToyData(), CFG, tmp_path / "killed", torch.device("cpu"), "fp")
    assert result.resumed_from_epoch == 2
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    train(ToyDetector(), ToyData(), CFG, tmp_path, torch.device("cpu"), "old")
    result = train(ToyDetector(), ToyData(), CFG, tmp_path, torch.device("cpu"), "new")
    assert result.resumed_from_epoch == 0


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path):
    model = ToyDetector()
    train(model, ToyData(), LoopConfig(**{**CFG.__dict__, "epochs": 1}), tmp_path, torch.device("cpu"), "fp")
    good = (tmp_path / "last.pt").read_bytes()
    model.scale = float("nan")
    with pytest.raises(UserError) as info:
        train(model, ToyData(), CFG, tmp_path, torch.device("cpu"), "fp")
    assert "iteration 3: loss term 'loss_fit' is nan" in str(info.value)
    assert (tmp_path / "last.pt").read_bytes() == good


GFL_ARCH = Arch("gfl", "resnet18", 3, ("Car", "Pedestrian", "Cyclist"))


@pytest.fixture(scope="module")
def gfl_r18():
    return build_detector("gfl", "resnet18", 3)


def test_model_file_round_trip(tmp_path, gfl_r18):
    save_model(tmp_path / "m.pt", gfl_r18, GFL_ARCH, meta={"role": "baseline"})
    other = build_detector("gfl", "resnet18", 3)
    assert load_weights(tmp_path / "m.pt", other, GFL_ARCH) == {"role": "baseline"}
    for (name, a), b in zip(gfl_r18.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("arch, expected", [
    (Arch("faster_rcnn", "resnet18", 3, GFL_ARCH.class_names), "checkpoint detector is 'gfl' but the model needs 'faster_rcnn'"),
    (Arch("gfl", "resnet50", 3, GFL_ARCH.class_names), "checkpoint backbone is 'resnet18' but the model needs 'resnet50'"),
    (Arch("gfl", "resnet18", 2, ("Car", "Pedestrian")), "checkpoint num_classes is 3 but the model needs 2"),
])
def test_checkpoint_of_wrong_architecture_is_refused_in_one_line(tmp_path, gfl_r18, arch, expected):
    save_model(tmp_path / "m.pt", gfl_r18, GFL_ARCH)
    with pytest.raises(UserError, match=expected):
        load_weights(tmp_path / "m.pt", build_detector(arch.detector, arch.backbone, arch.num_classes), arch)


def test_corrupted_and_foreign_checkpoints(tmp_path, gfl_r18):
    save_model(tmp_path / "m.pt", gfl_r18, GFL_ARCH)
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut.pt: corrupted or not a PyTorch checkpoint"):
        load_weights(tmp_path / "cut.pt", gfl_r18, GFL_ARCH)
    save_torch({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match=r"foreign.pt: not a model file of this project"):
        load_weights(tmp_path / "foreign.pt", gfl_r18, GFL_ARCH)
    with pytest.raises(UserError, match=r"missing.pt: checkpoint not found"):
        load_weights(tmp_path / "missing.pt", gfl_r18, GFL_ARCH)


@pytest.mark.parametrize("detector, backbone, expected", [
    ("yolo", "resnet18", "unknown detector 'yolo'; choose one of gfl, faster_rcnn"),
    ("gfl", "resnet34", "unknown backbone 'resnet34'; choose one of resnet18, resnet50, resnet101"),
])
def test_unknown_names_are_one_line_errors(detector, backbone, expected):
    with pytest.raises(UserError, match=expected):
        build_detector(detector, backbone, 3)


def test_batch_to_original_round_trip():
    batch = Batch(images=torch.zeros(1, 3, 32, 64), boxes=[], labels=[], ignore_boxes=[], image_ids=[0],
                  scale_factors=torch.tensor([[0.5, 0.25]]), flipped=torch.tensor([True]),
                  image_sizes=[(25, 50)], orig_sizes=[(100, 100)])
    original = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    inp = original * torch.tensor([0.5, 0.25, 0.5, 0.25])
    inp = torch.stack([50 - inp[:, 2], inp[:, 1], 50 - inp[:, 0], inp[:, 3]], dim=1)
    torch.testing.assert_close(batch.to_original(0, inp), original)


def _tsv(path):
    lines = path.read_text().splitlines()
    return [tuple(line.split("\t")) for line in lines[1:]]


def test_dvclive_log_has_step_and_epoch_metrics_and_a_resumed_run_continues_it(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    every_step = LoopConfig(**{**CFG.__dict__, "epochs": 2})
    torch.manual_seed(0)
    train(ToyDetector(), ToyData(), every_step, tmp_path / "ckpt", torch.device("cpu"), "fp", log_dir=tmp_path / "live")
    uninterrupted = {p.relative_to(tmp_path / "live"): _tsv(p) for p in (tmp_path / "live").rglob("*.tsv")}
    torch.manual_seed(0)
    first = LoopConfig(**{**CFG.__dict__, "epochs": 1})
    train(ToyDetector(), ToyData(), first, tmp_path / "ckpt2", torch.device("cpu"), "fp", log_dir=tmp_path / "live2")
    loss = tmp_path / "live2" / "plots" / "metrics" / "train" / "loss.tsv"
    with open(loss, "a") as handle:                       # a killed attempt's row past the checkpoint
        handle.write("4\t99.0\n")
    train(ToyDetector(), ToyData(), every_step, tmp_path / "ckpt2", torch.device("cpu"), "fp",
          log_dir=tmp_path / "live2")
    resumed = {p.relative_to(tmp_path / "live2"): _tsv(p) for p in (tmp_path / "live2").rglob("*.tsv")}
    # 3 iterations per epoch: steps logged at 0 and at each epoch's end; epochs at 2 and 5
    assert [row[0] for row in uninterrupted[Path("plots/metrics/train/loss.tsv")]] == ["0", "2", "5"]
    assert [row for row in uninterrupted[Path("plots/metrics/epoch/epoch.tsv")]] == [("2", "1.0"), ("5", "2.0")]
    assert set(resumed) == set(uninterrupted)
    for name, rows in uninterrupted.items():                # same steps, each once (timestamps aside)
        assert [r[0] for r in resumed[name]] == [r[0] for r in rows], name
    summary = json.loads((tmp_path / "live2" / "metrics.json").read_text())
    assert summary["epoch"]["epoch"] == 2 and {"loss", "loss_fit", "lr", "images_per_s"} <= set(summary["train"])


def tiny_split(root: Path, box_x: float = 2.0, pixel: int = 0) -> dict:
    """A two-image curated split (see docs/curated-format.md) with its PNGs under ``root``; ``box_x``
    moves the first label, ``pixel`` sets one pixel of the second image."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for name, value in (("a.png", 0), ("b.png", pixel)):
        array = np.full((16, 32, 3), 40, np.uint8)
        array[0, 0] = value
        Image.fromarray(array).save(root / name)
    return {"info": {"image_root": str(root)}, "categories": [{"id": 1, "name": "Car"}],
            "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 16},
                       {"id": 2, "file_name": "b.png", "width": 32, "height": 16}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [box_x, 2, 10, 8], "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [4, 2, 10, 8], "iscrowd": 0}]}


@pytest.fixture
def resume_key(tmp_path):
    """``resume_key(split=..., train=..., distill=...)``: the resume fingerprint of a distilled run
    under the default params with those changes."""
    import yaml

    from pipeline.config import parse_params
    from pipeline.data.dataset import CuratedDataset
    from pipeline.distill.methods import method_settings
    from pipeline.engine.recipe import loop_config, weights_fingerprint
    from pipeline.engine.runs import RunId

    from conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    run = RunId("synthetic", "gfl", "gkd_bmfi-resnet18")
    arch = Arch("gfl", "resnet18", 1, ("Car",), 256)

    def key(split: dict | None = None, train: dict | None = None, distill: dict | None = None,
            method: str = "gkd_bmfi") -> str:
        params = parse_params({**raw, "train": {**raw["train"], **(train or {})},
                               "distill": {**raw["distill"], **(distill or {})}})
        data = CuratedDataset(split or tiny_split(tmp_path / "same"), params.input, train=True)
        return weights_fingerprint(run, arch, loop_config(params, 3), params, data,
                                   method_settings(method, "gfl", params.distill, "synthetic"))

    return key


def test_resume_fingerprint_changes_with_the_weights_recipe_only(resume_key):
    key = resume_key
    assert key() == key(train={"num_workers": 4})           # the worker count: same weights, resumes
    assert key() != key(train={"lr": 0.02}) and key() != key(train={"batch_size": 8})
    assert key() != key(train={"grad_clip": None})
    assert key(train={"amp": True}) != key(train={"amp": False})   # bfloat16 / float16 vs float32 weights


def test_resume_fingerprint_follows_the_content_of_labels_and_images(resume_key, tmp_path):
    key = resume_key
    same = key(split=tiny_split(tmp_path / "moved"))          # the same files elsewhere: resumes
    assert same == key()
    assert key(split=tiny_split(tmp_path / "label", box_x=3.0)) != same       # one label line changed
    assert key(split=tiny_split(tmp_path / "image", pixel=1)) != same         # one pixel of one image


def test_resume_fingerprint_ignores_the_settings_of_other_methods_and_detectors(resume_key):
    import yaml

    from conftest import REPO

    gkd = yaml.safe_load((REPO / "params.yaml").read_text())["distill"]["gkd"]
    key = resume_key
    assert key(distill={"baselines": {"fgd": {"gfl": {"alpha": 0.001}}}}) == key()
    assert key(distill={"gkd": {**gkd, "faster_rcnn": {"gkd_weight": 9.0, "beta": 1.0, "alpha": 1.0}}}) == key()
    assert key(distill={"gkd": {**gkd, "gfl": {"gkd_weight": 9.0, "beta": 1.0, "alpha": 1.0}}}) != key()
    # inherit_only has no KD term: neither GKD's weights nor the balance restart it
    control = {"method": "inherit_only"}
    assert key(distill={"balance": {"mode": "paper"}}, **control) == key(**control)
    assert key(distill={"gkd": {**gkd, "gfl": {"gkd_weight": 9.0, "beta": 1.0, "alpha": 1.0}}}, **control) \
        == key(**control)
    fgd = {"method": "fgd"}
    assert key(distill={"baselines": {"fgd": {"gfl": {"alpha": 0.002}}}}, **fgd) != key(**fgd)


def test_training_log_works_in_a_git_repository_without_commits(tmp_path, monkeypatch):
    import subprocess

    from pipeline.engine.live import TrainingLog

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    log = TrainingLog(tmp_path / "live")
    log.step(0, {"loss": 1.0})
    log.close()
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().startswith("step\tloss")


def test_every_distill_setting_has_one_scope_and_the_stages_read_the_others():
    """SETTING_SCOPES classifies every ``distill`` setting once; the GKD family's settings hold
    ``gkd`` but the per-detector weights, which are replaced by this detector's; and the distill
    stage lists exactly the ``stage`` settings as params (the rest reaches it via kd_settings)."""
    import yaml

    from pipeline.config import DistillParams, GKDParams, GKDWeights
    from pipeline.distill.methods import SETTING_SCOPES, method_settings

    from conftest import REPO

    top = set(DistillParams.model_fields)
    assert {k for k in SETTING_SCOPES if "." not in k} == top
    assert {k.split(".", 1)[1] for k in SETTING_SCOPES if k.startswith("gkd.")} <= set(GKDParams.model_fields)
    own = {k.split(".", 1)[1] for k, s in SETTING_SCOPES.items() if k.startswith("gkd.") and s == "own weights"}
    assert own == {f for f, info in GKDParams.model_fields.items() if info.annotation is GKDWeights} | {"datasets"}

    settings = method_settings("gkd_bmfi", "gfl", DistillParams(), "synthetic")
    assert set(settings["gkd"]) == (set(GKDParams.model_fields) - own) | set(GKDWeights.model_fields)
    assert settings["gkd"]["gkd_weight"] == DistillParams().gkd.gfl.gkd_weight

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    read = {p.removeprefix("distill.") for p in stages["distill"]["params"] if p.startswith("distill.")}
    assert read == {k for k, s in SETTING_SCOPES.items() if s == "stage"}
