"""The distiller, teacher loading, inheriting, the distill stage and the distillation tables."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, plain_batch
from pipeline.config import DistillParams, load_params
from pipeline.data.curate import curate_kitti
from pipeline.data.dataset import Sample
from pipeline.data.synthetic import write_synthetic_kitti
from pipeline.distill.base import KDMethod
from pipeline.distill.distiller import Distiller, load_teacher
from pipeline.distill.gkd import head_gradients
from pipeline.distill.inherit import inherit_neck_and_head
from pipeline.distill.methods import METHODS, build_method, check_method
from pipeline.engine.checkpoint import FORMAT, Arch, read_model_file, save_model, save_torch
from pipeline.engine.runs import RunId
from pipeline.engine.trainer import LoopConfig, train
from pipeline.errors import UserError
from pipeline.models.backbone import ResNetBackbone
from pipeline.models.detector import Detector
from pipeline.models.factory import build_detector
from pipeline.models.fpn import FPN
from pipeline.models.gfl_head import GFLHead
from pipeline.report.tables import ablation_rows, distill_rows, markdown
from pipeline.structures import Batch
from stages import distill as distill_stage
from stages import distill_tables as tables_stage

CLASSES = ("car", "person")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_detector(width: int = 32, num_classes: int = 2) -> Detector:
    """GFL on ResNet-18 as the factory builds it, with a ``width``-channel FPN and a one-conv,
    ``width``-channel head: the same code paths at a fraction of the cost."""
    body = ResNetBackbone(18, out_indices=(0, 1, 2, 3))
    neck = FPN(list(body.out_channels), width, num_outs=5, start_level=1, add_extra_convs="on_output")
    head = GFLHead(num_classes, in_channels=width, feat_channels=width, stacked_convs=1, num_groups=8)
    return Detector("gfl", "resnet18", body, neck, head, num_classes, (8, 16, 32, 64, 128))


def tiny_batch(n: int = 2, h: int = 32, w: int = 128) -> Batch:
    g = torch.Generator().manual_seed(0)
    boxes = [torch.tensor([[8.0, 4.0, 48.0, 28.0], [70.0, 10.0, 120.0, 30.0]])] * n
    return plain_batch(torch.randn(n, 3, h, w, generator=g), boxes, [torch.tensor([0, 1])] * n)


class TinyScenes(torch.utils.data.Dataset):
    """Four random 32x128 images with two boxes each."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Sample:
        g = np.random.default_rng(i)
        return Sample(image=g.standard_normal((3, 32, 128)).astype("float32"),
                      boxes=np.array([[8 + i, 4, 48 + i, 28], [70, 10, 120, 30]], "float32"),
                      labels=np.array([0, 1]), ignore_boxes=np.zeros((0, 4), "float32"), image_id=i,
                      scale=(1.0, 1.0), flipped=False, image_size=(32, 128), orig_size=(32, 128))


CFG = LoopConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=1, num_workers=0, seed=0, grad_clip=35.0)


@pytest.fixture(scope="module")
def pair():
    """A tiny GFL teacher and student (2 classes), built once."""
    torch.manual_seed(0)
    return tiny_detector(), tiny_detector()


def fake_model_file(path: Path, detector: str = "gfl", num_classes: int = 2, fpn: int = 256) -> Path:
    """A model file header without weights: loading checks the header before any tensor."""
    names = list(CLASSES) + [f"c{i}" for i in range(num_classes - len(CLASSES))]
    arch = {"detector": detector, "backbone": "resnet101", "num_classes": num_classes,
            "class_names": names[:num_classes], "fpn_channels": fpn}
    save_torch({"format": FORMAT, "arch": arch, "state_dict": {}, "meta": {}}, path)
    return path


STUDENT = Arch("gfl", "resnet18", 2, CLASSES, 256)


@pytest.mark.parametrize("kwargs, message", [
    ({"detector": "faster_rcnn"}, r"teacher is a 'faster_rcnn' detector but the student is 'gfl'"),
    ({"num_classes": 3}, r"teacher has 3 classes .* student's dataset has 2"),
    ({"fpn": 128}, r"FPN width is 128 but the student's is 256"),
])
def test_a_teacher_that_does_not_fit_the_student_is_refused_in_one_line(tmp_path, kwargs, message):
    path = fake_model_file(tmp_path / "teacher.pt", **kwargs)
    with pytest.raises(UserError, match=message) as err:
        load_teacher(path, STUDENT)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_unknown_method_names_and_baseline_settings_are_refused():
    with pytest.raises(UserError, match=r"unknown KD method 'gkd-bmfi'; choose one of gkd_bmfi, bmfi"):
        check_method("gkd-bmfi")
    bad = DistillParams(baselines={"mimic": {"gfl": {"wieght": 2.0}}})
    with pytest.raises(UserError, match=r"distill.baselines.mimic.gfl.wieght is not a setting of mimic"):
        build_method("mimic", "gfl", bad)
    assert {"gkd_bmfi", "bmfi", "mfi", "gkd", "mimic", "fgd", "fgfi", "defeat"} <= set(METHODS)


@pytest.mark.slow
def test_teacher_gets_no_gradient_and_stays_in_eval_mode_through_training(tmp_path, pair):
    teacher, student = (copy.deepcopy(m) for m in pair)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(student, teacher, build_method("gkd_bmfi", "gfl", DistillParams()))
    teacher.train()                                    # even if someone flips it, a step puts it back
    result = train(student, TinyScenes(), CFG, tmp_path, torch.device("cpu"), "fp", extra=distiller,
                   extra_module=distiller.method)
    assert not teacher.training and distiller.steps == 2
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert {"kd_gkd_bmfi_gkd", "kd_gkd_bmfi_imitation", "kd_gkd_bmfi_attention"} <= set(result.history[0])
    assert not any(p is q for p in student.parameters() for q in teacher.parameters())


def _one_step_grads(student, teacher, mode):
    batch = tiny_batch()
    distiller = Distiller(student, teacher, build_method("gkd_bmfi", "gfl", DistillParams()), student_grad=mode)
    torch.manual_seed(1)
    feats = student.features(batch.images)
    losses = student.losses(feats, batch)
    values = {k: float(v.detach()) for k, v in losses.items()}
    losses.update(distiller(feats, batch, losses))
    sum(losses.values()).backward()
    distiller.close()
    return values, {k: float(v.detach()) for k, v in losses.items()}, \
        {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_fused_student_gradient_equals_the_separate_backward(pair):
    teacher, student = pair
    plain, fused_terms, fused = _one_step_grads(copy.deepcopy(student), teacher, "fused")
    _, sep_terms, separate = _one_step_grads(copy.deepcopy(student), teacher, "separate")
    assert set(fused) == set(separate) and len(fused) == len(list(student.parameters()))
    for name, g in separate.items():
        assert torch.allclose(fused[name], g, rtol=1e-4, atol=1e-6 * g.abs().max().item()), name
    assert fused_terms == pytest.approx(sep_terms, rel=1e-6)
    assert all(fused_terms[k] == pytest.approx(v, rel=1e-6) for k, v in plain.items())   # logged values unchanged


def test_student_and_teacher_gradients_are_both_the_heads_direct_gradient(pair):
    """GFL's P6/P7 are made from P5 in the neck: the student's dL/dP5 must not include them."""
    _, student = pair
    student = copy.deepcopy(student)
    batch = tiny_batch()
    captured = {}

    class Capture(KDMethod):
        needs_feature_grads = True

        def forward(self, s, t, b, context):
            captured["grads"] = context.student_grads
            captured["feats"] = [f.detach() for f in s]
            return {}

    distiller = Distiller(student, copy.deepcopy(student), Capture())
    feats = student.features(batch.images)
    distiller(feats, batch, student.losses(feats, batch))
    distiller.close()
    _, _, direct = head_gradients(student, captured["feats"], batch)
    for got, want in zip(captured["grads"], direct):
        assert want.abs().max() > 0 and torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


class Scaled(KDMethod):
    """A KD method with a trainable parameter: the loop must optimise and checkpoint it."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, s, t, b, context):
        return {"kd_scaled_mse": sum(((self.gain * x - y) ** 2).mean() for x, y in zip(s, t))}


@pytest.mark.slow
def test_a_methods_own_parameters_are_trained_and_checkpointed(tmp_path, pair):
    teacher, student = (copy.deepcopy(m) for m in pair)
    method = Scaled()
    train(student, TinyScenes(), CFG, tmp_path, torch.device("cpu"), "fp",
          extra=Distiller(student, teacher, method), extra_module=method)
    assert method.gain.item() != 1.0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["extra_module"]["gain"] == method.gain.detach()


def test_inherit_copies_neck_and_head_but_not_backbone_and_skips_laterals_of_other_widths():
    torch.manual_seed(0)
    teacher = build_detector("gfl", "resnet50", 2)
    student = build_detector("gfl", "resnet18", 2)
    backbone_before = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("backbone.")}
    copied, skipped = inherit_neck_and_head(student, teacher)
    s, t = student.state_dict(), teacher.state_dict()
    assert copied and all(torch.equal(s[k], t[k]) for k in copied)
    assert any(k.startswith("head.") for k in copied) and any(k.startswith("neck.fpn_convs") for k in copied)
    assert sorted(skipped) == sorted(k for k in t if k.startswith("neck.lateral_convs"))
    assert all(torch.equal(s[k], v) for k, v in backbone_before.items())
    narrow = build_detector("gfl", "resnet18", 2, fpn_channels=64)
    with pytest.raises(UserError, match=r"teacher's FPN width is 256 but the student's is 64; .*distill.inherit"):
        inherit_neck_and_head(narrow, teacher)


# ---------------------------------------------------------------------------------- stage


def write_project(root: Path, **distill) -> Path:
    """A tiny curated synthetic dataset, params.yaml and an (untrained) R18 teacher under ``root``."""
    raw = root / "data" / "raw" / "synthetic"
    write_synthetic_kitti(raw, num_images=5, width=256, height=64, seed=2)
    curated = curate_kitti(raw, "synthetic", val_fraction=0.4, seed=0, min_box_size=1.0)
    out = root / "data" / "curated" / "synthetic"
    out.mkdir(parents=True)
    (out / "train.json").write_text(json.dumps(curated.train))
    (out / "val.json").write_text(json.dumps(curated.val))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update({"datasets": ["synthetic"], "input": {**params["input"], "width": 128, "height": 32}})
    params["model"] = {**params["model"], "train": ["teacher-resnet18", "baseline-resnet18"], "fpn_channels": 32}
    params["train"] = {**params["train"], "epochs": 1, "batch_size": 2, "warmup_iters": 1, "device": "cpu"}
    params["distill"] = {**params["distill"], "teacher": "teacher-resnet18", "students": ["resnet18"],
                         "gradmap_images": 1, **distill}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    classes = [c["name"] for c in curated.train["categories"]]
    torch.manual_seed(5)
    teacher = build_detector("gfl", "resnet18", len(classes), fpn_channels=32)
    save_model(root / "models/synthetic/gfl/teacher-resnet18.pt", teacher,
               Arch("gfl", "resnet18", len(classes), tuple(classes), 32), meta={"role": "teacher"})
    return root


@pytest.mark.slow
def test_distill_stage_writes_model_log_and_gradient_map_pictures(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(write_project(tmp_path))
    captured = {}
    real_train = distill_stage.train

    def spy(student, *args, **kwargs):     # the inherited head must still be there at the first step
        hook = kwargs["extra"]

        def first_step(feats, batch, losses):
            if "head" not in captured:
                captured["head"] = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("head.")}
            return hook(feats, batch, losses)
        return real_train(student, *args, **{**kwargs, "extra": first_step})

    monkeypatch.setattr(distill_stage, "train", spy)
    distill_stage.main(["synthetic", "gfl", "resnet18", "gkd_bmfi"])
    run = RunId("synthetic", "gfl", "gkd_bmfi-resnet18")
    arch, state, meta = read_model_file(run.model_path)
    assert (arch.detector, arch.backbone, meta["role"], meta["teacher"]) == ("gfl", "resnet18", "gkd_bmfi",
                                                                            "teacher-resnet18")
    teacher_state = read_model_file(Path("models/synthetic/gfl/teacher-resnet18.pt"))[1]
    assert all(torch.equal(v, teacher_state[k]) for k, v in captured["head"].items())
    live = json.loads((run.live_dir / "metrics.json").read_text())        # DVCLive: step and epoch figures
    assert live["epoch"]["epoch"] == 1 and "kd_gkd_bmfi_gkd" in live["epoch"] and "kd_task_grad_ratio" in live["epoch"]
    assert {"loss", "lr", "images_per_s", "kd_gkd_bmfi_gkd"} <= set(live["train"])
    steps = (run.live_dir / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert steps[0] == "step\tloss" and len(steps) > 1
    assert "val_mAP50" in live["epoch"]                                    # the per-epoch val figure
    pictures = sorted((Path("plots/gradmaps/synthetic/gfl") / run.model).glob("*.png"))
    assert len(pictures) == 1
    with Image.open(pictures[0]) as image:      # 128x32 input: P3 only (4x16 cells), three rows, a colour bar
        assert image.size == (480, 455)
    assert (run.checkpoint_dir / "last.pt").is_file()
    assert "distilled synthetic/gfl/gkd_bmfi-resnet18" in capsys.readouterr().out


@pytest.mark.slow
def test_a_method_without_a_kd_term_draws_no_gradient_map(tmp_path, monkeypatch):
    monkeypatch.chdir(write_project(tmp_path))
    distill_stage.main(["synthetic", "gfl", "resnet18", "inherit_only"])
    folder = Path("plots/gradmaps/synthetic/gfl/inherit_only-resnet18")
    assert folder.is_dir() and not list(folder.iterdir())     # an empty output: DVC records 0 files


def test_gradient_map_pictures_draw_the_levels_with_enough_cells_and_say_which_are_left_out(tmp_path):
    from pipeline.distill.gradmaps import MIN_LEVEL_ROWS, drawn_levels, render

    batch = plain_batch(torch.rand(1, 3, 64, 256) * 255, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)])
    shapes = [(8, 32), (4, 16), (2, 8)]                        # strides 8, 16, 32 on a 64x256 input
    maps = [torch.rand(1, 1, h, w) for h, w in shapes]
    assert MIN_LEVEL_ROWS == 4 and drawn_levels(maps) == [0, 1]
    assert drawn_levels([torch.rand(1, 1, 1, 3)]) == [0]        # the finest level always
    rows = {"teacher": maps, "student start": [torch.zeros_like(m) for m in maps]}
    one = render(batch, {k: v[:1] for k, v in rows.items()}, (8,), tmp_path / "one", (0.0,) * 3, (1.0,) * 3, "a/b/c")
    two = render(batch, rows, (8, 16, 32), tmp_path / "two", (0.0,) * 3, (1.0,) * 3, "a/b/c")
    with Image.open(one[0]) as narrow, Image.open(two[0]) as wide:
        assert wide.width > narrow.width + 200 and wide.height == narrow.height    # a column per drawn level


@pytest.mark.parametrize("args, distill, message", [
    (["synthetic", "gfl", "resnet18", "gkd_bmfi2"], {}, r"unknown KD method 'gkd_bmfi2'"),
    (["synthetic", "faster_rcnn", "resnet18", "mimic"], {"teacher": "teacher-resnet18"},
     r"teacher is a 'gfl' detector but the student is 'faster_rcnn'"),
    (["synthetic", "gfl", "resnet18", "mimic"], {"teacher": "teacher-resnet50"},
     r"distill.teacher = 'teacher-resnet50' is not trained by the pipeline"),
])
def test_distill_stage_bad_input_ends_with_one_line(tmp_path, monkeypatch, capsys, args, distill, message):
    monkeypatch.chdir(write_project(tmp_path, **distill))
    if args[1] == "faster_rcnn":        # the gfl teacher file stands in for a faster_rcnn teacher
        Path("models/synthetic/faster_rcnn").mkdir(parents=True)
        Path("models/synthetic/gfl/teacher-resnet18.pt").rename("models/synthetic/faster_rcnn/teacher-resnet18.pt")
    with pytest.raises(SystemExit) as code:
        distill_stage.main(args)
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not Path("models/synthetic/gfl/" + f"{args[3]}-resnet18.pt").exists()


# ---------------------------------------------------------------------------------- tables


def test_tables_compare_each_method_with_the_students_baseline(tmp_path, monkeypatch, capsys):
    metrics = tmp_path / "metrics" / "kitti" / "gfl"
    metrics.mkdir(parents=True)
    values = {"teacher-resnet101": (89.4, 88.0), "baseline-resnet18": (81.9, 80.0), "gkd_bmfi-resnet18": (88.7, 86.5),
              "mimic-resnet18": (83.0, 81.0), "mfi-resnet18": (85.0, 84.0)}
    for model, (coco, voc) in values.items():
        (metrics / f"{model}.json").write_text(json.dumps({"mAP50": coco, "voc_mAP50": voc, "params_M": 19.1}))
    rows = distill_rows(metrics, "teacher-resnet101", ("resnet18", "resnet50"), ("gkd_bmfi", "mimic"))
    assert [r["model"] for r in rows] == ["teacher-resnet101", "baseline-resnet18", "gkd_bmfi-resnet18",
                                          "mimic-resnet18", "baseline-resnet50", "gkd_bmfi-resnet50",
                                          "mimic-resnet50"]
    assert rows[2]["mAP50_gain"] == pytest.approx(6.8) and rows[2]["voc_mAP50_gain"] == pytest.approx(6.5)
    assert rows[5]["mAP50"] is None                         # not evaluated yet: shown as "-"
    assert ablation_rows(metrics, ("resnet18",), ("gkd_bmfi", "mimic")) == []
    ablation = ablation_rows(metrics, ("resnet18",), ("gkd_bmfi", "mfi"))
    assert [(r["terms"], r["mAP50"]) for r in ablation] == [("none", 81.9), ("MFI", 85.0), ("GKD + MASK + MFI", 88.7)]
    text = markdown("kitti", "gfl", rows, ablation)
    assert "| gkd_bmfi | R18 | 88.7 | +6.8 | 86.5 | +6.5 | 19.10 |" in text and "| R18 | MFI | 85.0 | 84.0 |" in text

    params = load_params(REPO / "params.yaml").model_dump(mode="json")
    params["distill"].update({"teacher": "teacher-resnet101", "students": ["resnet18"],
                              "methods": ["gkd_bmfi", "mfi"]})
    params["deploy"]["models"] = ["gkd_bmfi-resnet18"]
    params["datasets"] = ["kitti"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    tables_stage.main(["kitti", "gfl"])
    saved = json.loads(Path("reports/tables/distill_kitti_gfl.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["teacher-resnet101", "baseline-resnet18", "gkd_bmfi-resnet18",
                                                   "mfi-resnet18"]
    assert Path("reports/tables/distill_kitti_gfl.md").read_text() == capsys.readouterr().out.rstrip("\n") + "\n"


def test_tables_put_each_models_classes_beside_its_mean(tmp_path):
    metrics = tmp_path / "metrics" / "kitti" / "gfl"
    metrics.mkdir(parents=True)
    kitti = {f"{c}_{d}": v for c, v in (("Car", 30.5), ("Pedestrian", 0.0), ("Cyclist", 0.0), ("mAP", 10.2))
             for d in ("easy", "moderate", "hard")}
    for model, per_class in (("teacher-resnet101", {"Car": 40.0, "Pedestrian": 12.0, "Cyclist": 9.0}),
                             ("baseline-resnet18", {"Car": 20.0, "Pedestrian": 3.0, "Cyclist": 1.5}),
                             ("gkd_bmfi-resnet18", {"Car": 32.2, "Pedestrian": 0.01, "Cyclist": 0.04})):
        (metrics / f"{model}.json").write_text(json.dumps({
            "mAP50": sum(per_class.values()) / 3, "voc_mAP50": 1.0, "kitti": kitti,
            "per_class": {name: {"AP50": ap} for name, ap in per_class.items()}}))
    text = markdown("kitti", "gfl", distill_rows(metrics, "teacher-resnet101", ("resnet18",), ("gkd_bmfi",)), [])
    assert "#### Per class, kitti, gfl (AP at IoU 0.5, %)" in text
    assert "| gkd_bmfi-resnet18 | 10.75 | 32.20 | 0.01 | 0.04 | Pedestrian, Cyclist |" in text
    assert "| teacher-resnet101 | 30.5 / 30.5 / 30.5 | 0.0 / 0.0 / 0.0 | 0.0 / 0.0 / 0.0 | 10.2 / 10.2 / 10.2 |" in text
    assert "- gkd_bmfi-resnet18 has not learned Pedestrian (AP50 0.01), Cyclist (0.04)." in text
    assert "baseline-resnet18 has not learned" not in text


def test_reading_says_when_the_control_reaches_the_teacher():
    from pipeline.report.tables import reading

    def row(role, value, ci=None):
        return {"role": role, "backbone": "resnet18", "mAP50": value, "ci_vs_baseline": ci, "ci_vs_control": None}

    gain = {"gain": 4.4, "low": 3.4, "high": 5.4}
    rows = [row("teacher", 10.4), row("baseline", 7.5), row("inherit_only", 11.7, gain), row("gkd_bmfi", 11.9, gain)]
    said = "\n".join(reading(rows))
    assert "inherit-only R18 student (11.7) already scores at or above the teacher (10.4)" in said
    assert "gkd_bmfi R18: above the baseline by 4.4 [+3.4, +5.4], an interval that excludes 0" in said
    rows[2]["mAP50"] = 9.0
    assert "already scores" not in "\n".join(reading(rows))
