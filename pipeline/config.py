"""Typed, validated, immutable view of ``params.yaml``, and the one source of every default.

The defaults written here are the embedded default (the synthetic scenes on a 2-core CPU);
params.yaml states each of them with a comment, and a test keeps the two equal. Modules take
their default settings from these records rather than writing them again.

:func:`load_params` is the only way stages read parameters. Every record forbids unknown
keys and is frozen; a bad value ends with one line naming the key, the value and what is
allowed, e.g.::

    error: params.yaml: curate.val_fraction = 1.5 is not allowed: must be < 1

Every process (also each torchrun rank) reads the file directly: DVC's params API is not
used, because it fails under several processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")


class FieldError(ValueError):
    """A validator's complaint about one field of its record: ``field`` is its dotted path inside
    the record ("" for the validated field itself), the message reads on from the field's full
    name and ends with the fix, e.g. ``has duplicates ('gfl'); list each once``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Record(BaseModel):
    """Base of every params record: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def check_unique(record: Record, *keys: str) -> None:
    """Raise :class:`FieldError` for the first field of ``keys`` that lists a value twice."""
    for key in keys:
        values = list(getattr(record, key))
        repeated = sorted({v for v in values if values.count(v) > 1}, key=values.index)
        if repeated:
            raise FieldError(key, f"has duplicates ({', '.join(map(repr, repeated))}); list each once")


class SourceParams(Record):
    """Where and how a raw dataset is read.

    The raw data of dataset ``<name>`` lives in ``data/raw/<name>/`` (a folder or a
    symlink to your download), so DVC can track it as the curate stage's dependency.
    """

    format: Literal["kitti", "coco"]
    # coco only: paths inside data/raw/<name>/
    train_json: str = "annotations/instances_train2017.json"
    val_json: str = "annotations/instances_val2017.json"
    train_images: str = "train2017"
    val_images: str = "val2017"


class SyntheticParams(Record):
    """The built-in synthetic KITTI-format road scenes (written to ``data/raw/synthetic``)."""

    num_images: Annotated[int, Field(ge=1, le=100_000)] = 250
    width: Annotated[int, Field(ge=64, le=4096)] = 640
    height: Annotated[int, Field(ge=64, le=4096)] = 192
    seed: int = 0


class CurateParams(Record):
    """Curation: split and preview."""

    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    seed: int = 0
    min_box_size: Annotated[float, Field(ge=0.0)] = 1.0
    preview_images: Annotated[int, Field(ge=1, le=64)] = 8


class InputParams(Record):
    """Network input: keep-ratio resize into ``width x height``, flip, pad, normalise.

    An image of size (w, h) is scaled by ``min(width / w, height / h)``, so it fits the
    box; it is then padded at the right and bottom to the box rounded up to a multiple
    of ``pad_divisor``. Every batch therefore has the same fixed input shape, which is
    also the exported model's input shape.
    """

    width: Annotated[int, Field(ge=32, le=4096)] = 320
    height: Annotated[int, Field(ge=32, le=4096)] = 96
    pad_divisor: Annotated[int, Field(ge=1, le=128)] = 32
    flip_prob: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _one_per_channel(cls, value: Any, info: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) != 3:
            default = list(cls.model_fields[info.field_name].default)
            raise FieldError("", f"needs 3 values (one per RGB channel), got {len(value)}: {list(value)}; "
                                 f"write R, G, B as in the default {default}")
        return value

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every batch: the box rounded up to the pad divisor."""
        d = self.pad_divisor
        return (-(-self.height // d) * d, -(-self.width // d) * d)


DATASET_NAME = r"^[a-z][a-z0-9_]*$"
BACKBONE_NAMES = ("resnet18", "resnet50", "resnet101")
MODEL_NAME = r"^(teacher|baseline)-(resnet18|resnet50|resnet101)$"


class ModelParams(Record):
    """Which detectors and models the pipeline trains.

    ``train`` names the models of the `train` stage as ``<role>-<backbone>``: one
    ``teacher-*`` (the distillation teacher) and the ``baseline-*`` students.
    """

    detectors: Annotated[tuple[Literal["gfl", "faster_rcnn"], ...], Field(min_length=1)] = ("gfl",)
    train: Annotated[tuple[Annotated[str, Field(pattern=MODEL_NAME)], ...], Field(min_length=1)] = (
        "teacher-resnet101", "baseline-resnet18", "baseline-resnet50")
    weights: str = "none"
    fpn_channels: Annotated[int, Field(ge=8, le=1024)] = 256
    # MMDetection's backbone switches; None derives them from `weights` (pretrained: BatchNorm
    # kept in eval mode, stem + layer1 frozen; from scratch: everything trains).
    norm_eval: bool | None = None
    frozen_stages: Annotated[int | None, Field(ge=-1, le=4)] = None

    @model_validator(mode="after")
    def _one_teacher(self) -> "ModelParams":
        teachers = [m for m in self.train if m.startswith("teacher-")]
        if len(teachers) != 1:
            raise FieldError("train", f"must name exactly one teacher-<backbone>, got {teachers or 'none'}; "
                                      "keep exactly one")
        check_unique(self, "train")
        return self

    @property
    def teacher(self) -> str:
        return next(m for m in self.train if m.startswith("teacher-"))


class TrainParams(Record):
    """The training loop (SGD, linear warm-up, step decay) shared by every role.

    ``teacher_epochs`` lets the teacher train longer than the students, as a stronger
    teacher is the premise of distillation; ``None`` uses ``epochs``.
    ``epoch_val_images``: after each epoch the model's mAP50 on the first this many val images
    (0: off) joins the training curves (:mod:`pipeline.engine.validation`); the weights are the
    same either way.
    ``amp`` trains under autocast: bfloat16 on the CPU, float16 with a GradScaler on CUDA
    (parameters, optimiser, losses and KD maps stay float32); ``false`` trains in float32.
    """

    epochs: Annotated[int, Field(ge=1, le=1000)] = 3
    teacher_epochs: Annotated[int | None, Field(ge=1, le=1000)] = 5
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 4
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 0.01
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-4
    warmup_iters: Annotated[int, Field(ge=0)] = 50
    warmup_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    lr_steps: tuple[Annotated[int, Field(ge=1)], ...] = ()
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    grad_clip: Annotated[float | None, Field(gt=0.0)] = 35.0
    amp: bool = True
    num_workers: Annotated[int, Field(ge=0, le=64)] = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_train_images: Annotated[int | None, Field(ge=1)] = None
    epoch_val_images: Annotated[int, Field(ge=0)] = 16


class DistributedParams(Record):
    """Data-parallel training (see :mod:`pipeline.engine.distributed`).

    ``launcher`` is put in front of every training command by ``dvc.yaml``: ``python`` runs
    one process; ``torchrun --standalone --nproc-per-node=4`` four on this machine; several
    machines add torchrun's rendezvous options (README). ``train.batch_size`` stays the
    global batch, split evenly over the processes.
    """

    # a program and its options only: no shell syntax (; | & $ ` < > parentheses, quotes), as DVC
    # hands the command line to a shell
    launcher: Annotated[str, Field(pattern=r"^(python3?|torchrun)( [A-Za-z0-9_./:=,+-]+)*$")] = "python"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    sync_bn: bool = False


class EvalParams(Record):
    """Inference settings for evaluation (the detectors' own test configs otherwise), and the
    pictures of each evaluated model (``plots/eval/...``): ``pictures`` val images with the
    predictions scoring at least ``picture_score`` drawn (0: none), precision-recall curves and a
    confusion matrix at that score."""

    batch_size: Annotated[int, Field(ge=1, le=1024)] = 8
    pictures: Annotated[int, Field(ge=0, le=64)] = 4
    picture_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3


METHOD_NAME = r"^[a-z][a-z0-9_]*$"


class GKDWeights(Record):
    """Per-detector weights of GKD-BMFI (docs/method.md, BMFI weights; tuned by the authors at 1333x800).

    ``L_KD = gkd_weight * L_GKD + beta * L_BMFI`` (Eq. 10) with
    ``L_BMFI = imitation + alpha * attention`` (Eq. 9).
    """

    gkd_weight: Annotated[float, Field(ge=0.0)]
    beta: Annotated[float, Field(ge=0.0)]
    alpha: Annotated[float, Field(ge=0.0)]


class GKDParams(Record):
    """GKD-BMFI settings shared by its method names ``gkd_bmfi``, ``bmfi``, ``mfi``, ``gkd``.

    Choices the paper leaves open (docs/method.md, GKD and BMFI), defaults first:
    ``signed`` (false: maps from |grad| and |A|, as the released code), ``sign`` of a signed map's
    channel weights (``ascent``: Eq. 1 as printed; ``descent``: negated, Grad-CAM's convention),
    ``targets`` (``pseudo``:
    the model's own top ``pseudo_top_k`` detections with score > ``pseudo_score_thr``, as
    released), ``area_normalize`` (divide each box's mask patch by its grown area),
    ``temperature`` T of the attention, ``standardize`` (imitate per-channel standardised
    features, as PKD; off: the paper's raw features), and the per-detector weights (docs/method.md,
    BMFI weights: KITTI's GKD weights per detector, COCO-Traffic's in ``datasets``).
    """

    signed: bool = True
    sign: Literal["ascent", "descent"] = "ascent"
    targets: Literal["gt", "pseudo"] = "gt"
    pseudo_top_k: Annotated[int, Field(ge=1, le=1000)] = 10
    pseudo_score_thr: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    area_normalize: bool = True
    temperature: Annotated[float, Field(gt=0.0)] = 0.5
    standardize: bool = False
    gfl: GKDWeights = GKDWeights(gkd_weight=0.1, beta=1e-3, alpha=0.5)
    faster_rcnn: GKDWeights = GKDWeights(gkd_weight=0.5, beta=5e-5, alpha=1.0)
    #: per-dataset replacements of the per-detector weights (the authors' COCO-Traffic GKD weights)
    datasets: dict[Annotated[str, Field(pattern=DATASET_NAME)], dict[Literal["gfl", "faster_rcnn"], GKDWeights]] = {
        "coco_traffic": {"gfl": GKDWeights(gkd_weight=0.5, beta=1e-3, alpha=0.5),
                         "faster_rcnn": GKDWeights(gkd_weight=0.01, beta=5e-5, alpha=1.0)}}

    @model_validator(mode="after")
    def _sign_needs_signed_maps(self) -> "GKDParams":
        if self.sign == "descent" and not self.signed:
            raise FieldError("sign", "= descent negates the channel weights of signed maps, but signed is false "
                             "(maps from |grad| have no sign); set signed: true or sign: ascent")
        return self

    def weights(self, dataset: str | None, detector: str) -> GKDWeights:
        """The weights for ``detector`` on ``dataset``: ``datasets.<dataset>.<detector>`` if set,
        else the detector's."""
        return self.datasets.get(dataset or "", {}).get(detector) or getattr(self, detector)


class BalanceParams(Record):
    """How the KD terms are weighed against the detection loss (``pipeline/distill/balance.py``).

    ``mode: paper``: the weights as written (``distill.gkd``, ``distill.baselines`` and the
    methods' defaults). ``mode: auto``: before the first optimiser step, over the first
    ``batches`` training batches, every KD method's weights are multiplied by one factor so that
    the gradient norm of its terms at the student's FPN outputs is ``ratio`` times the task
    loss's (the same ``ratio`` for every method, so a comparison compares methods, not weights).
    ``mode: auto_terms``: the same, but each group of a method's terms (GKD-BMFI: ``gkd`` and
    ``bmfi``) gets its own share ``shares.<group>`` of ``ratio``, instead of the authors'
    proportion between them.
    """

    mode: Literal["auto", "auto_terms", "paper"] = "auto_terms"
    ratio: Annotated[float, Field(gt=0.0, le=100.0)] = 0.5
    batches: Annotated[int, Field(ge=1, le=64)] = 4
    #: ``auto_terms``: each term group's share of ``ratio`` (renormalised over the groups a method
    #: has; GKD-BMFI's groups are ``gkd`` and ``bmfi``)
    shares: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], Annotated[float, Field(gt=0.0, le=1.0)]] = {
        "gkd": 0.5, "bmfi": 0.5}


class DistillParams(Record):
    """The `distill` stage: students trained against a frozen teacher with KD methods.

    ``teacher`` names a model of ``model.train``; ``students`` are backbones and ``methods``
    names of ``pipeline/distill/methods.py`` (checked by the stage), giving the models
    ``<method>-<student>``. ``inherit`` copies the teacher's neck and head into each student
    first. ``epochs`` ``None`` uses ``train.epochs`` (the baselines' budget, for a fair
    comparison). ``student_grad``: how GKD gets the student's gradient (``fused``: one head
    backward; ``separate``: two, simpler). ``gradmap_images``: val images drawn as gradient-map
    pictures (0: none). ``baselines``: per method and detector, constructor arguments that
    override the method module's ``DEFAULTS``.
    """

    teacher: Annotated[str, Field(pattern=MODEL_NAME)] = "teacher-resnet101"
    students: Annotated[tuple[Literal["resnet18", "resnet50", "resnet101"], ...], Field(min_length=1)] = (
        "resnet18", "resnet50")
    methods: Annotated[tuple[Annotated[str, Field(pattern=METHOD_NAME)], ...], Field(min_length=1)] = (
        "inherit_only", "gkd_bmfi")
    inherit: bool = True
    epochs: Annotated[int | None, Field(ge=1, le=1000)] = None
    student_grad: Literal["fused", "separate"] = "fused"
    gradmap_images: Annotated[int, Field(ge=0, le=64)] = 4
    gkd: GKDParams = GKDParams()
    balance: BalanceParams = BalanceParams()
    #: seeds of the replicas (stages ``replica@...``): each student's baseline and every method
    #: trained again with ``seed`` replaced, for mean +- std and intervals over seeds
    extra_seeds: tuple[Annotated[int, Field(ge=0, le=2**31 - 1)], ...] = ()
    baselines: dict[Annotated[str, Field(pattern=METHOD_NAME)],
                    dict[Literal["gfl", "faster_rcnn"], dict[str, float | int | bool | str]]] = {}

    @model_validator(mode="after")
    def _no_duplicates(self) -> "DistillParams":
        check_unique(self, "students", "methods", "extra_seeds")
        return self


EXPORT_MODEL_NAME = r"^[a-z][a-z0-9_]*-(resnet18|resnet50|resnet101)$"


class ParityParams(Record):
    """Tolerances of the export parity gate (``pipeline/deploy/parity.py``): ONNX Runtime on the
    val split against PyTorch. ``map50_tol`` in mAP50 points; detections match with the same class,
    IoU >= ``box_iou`` and |score difference| <= ``score_tol``; at most ``max_unmatched`` of them
    may stay unmatched without a threshold/top-K boundary explaining it."""

    map50_tol: Annotated[float, Field(ge=0.0, le=100.0)] = 0.1
    box_iou: Annotated[float, Field(gt=0.0, le=1.0)] = 0.99
    score_tol: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-3
    #: a fraction of both sides' detections together (a moved box is unmatched on both sides); half
    #: of the 0.5% that the gate allowed when it divided by one side's count: the same gate
    max_unmatched: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0025


class TensorRTParams(Record):
    """Engine builds (skipped with a record where TensorRT or a GPU is missing)."""

    max_batch: Annotated[int, Field(ge=1, le=256)] = 8
    opt_batch: Annotated[int, Field(ge=1, le=256)] = 1
    workspace_mib: Annotated[int, Field(ge=64, le=65536)] = 2048
    #: boxes per image the target's NMS layer takes (it drops the rest silently): 5000, or 2000 on
    #: SM 5.3/6.2 boards (Jetson Nano, TX1, TX2); every TensorRT-targeted graph is held to it
    nms_max_boxes: Annotated[int, Field(ge=1)] = 5000

    @model_validator(mode="after")
    def _opt_within_max(self) -> "TensorRTParams":
        if self.nms_max_boxes > 5000:
            raise FieldError("nms_max_boxes", f"= {self.nms_max_boxes} is more than TensorRT's NMS layer takes on any "
                                              "GPU; set 5000, or 2000 for SM 5.3/6.2 (Jetson Nano/TX1/TX2)")
        if self.opt_batch > self.max_batch:
            raise FieldError("opt_batch", f"= {self.opt_batch} is larger than max_batch = {self.max_batch} (the "
                                          f"largest batch the engines accept); set opt_batch to at most "
                                          f"{self.max_batch} or raise max_batch")
        return self


class DeployParams(Record):
    """The `export` stage: every model in ``models`` -> ONNX (NMS inside) in each precision,
    parity-gated, evaluated with ONNX Runtime on CPU, and TensorRT engines where possible.

    ``models`` are ``<role or method>-<backbone>`` names of trained or distilled models;
    ``int8`` is calibrated on ``calib_images`` curated training images (never val). The default
    exports the three ResNet-18 students (distilled, inherit-only control, baseline) so that the
    latency-budgeted choice (``budgets_ms``, stage ``ship``) has more than one model to choose from.

    ``budgets_ms``: latency budgets in milliseconds of batch-1 p90 on the benchmark's hardware; for
    each, ``reports/ship.json`` and the summary name the most accurate exported variant that fits
    (:mod:`pipeline.report.ship`).

    ``int8_float32``: which Conv/Gemm layers both int8 files keep in float32: ``score_layers`` (the
    logit layers, :func:`pipeline.quant.placement.score_layers`) or ``auto`` (the smallest set of
    layer groups, chosen greedily from the int8 sensitivity table starting from the score layers,
    whose measured drop stays within ``int8_max_drop`` mAP50 points of fp32:
    :mod:`pipeline.deploy.int8_sensitivity`). The table itself (per layer group, the drop with it
    alone in int8 and alone in float32) is measured whenever an int8 precision is exported, on
    ``int8_sensitivity_images`` val images spread over the split (all of val when it has fewer).
    """

    models: Annotated[tuple[Annotated[str, Field(pattern=EXPORT_MODEL_NAME)], ...], Field(min_length=1)] = (
        "gkd_bmfi-resnet18", "inherit_only-resnet18", "baseline-resnet18")
    precisions: Annotated[tuple[Literal["fp32", "fp16", "int8", "int8_cpu"], ...], Field(min_length=1)] = (
        "fp32", "fp16", "int8", "int8_cpu")
    opset: Annotated[int, Field(ge=17, le=23)] = 17
    dynamic_batch: bool = True
    simplify: bool = True
    calib_images: Annotated[int, Field(ge=1, le=100_000)] = 32
    calib_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    parity: ParityParams = ParityParams()
    tensorrt: TensorRTParams = TensorRTParams()
    #: one hour at most: a budget is a per-image latency, not a job's run time
    budgets_ms: Annotated[tuple[Annotated[float, Field(gt=0.0, le=3_600_000.0, allow_inf_nan=False)], ...],
                          Field(min_length=1)] = (
        50.0, 80.0, 160.0)
    int8_float32: Literal["score_layers", "auto"] = "score_layers"
    int8_max_drop: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] = 0.5
    int8_sensitivity_images: Annotated[int, Field(ge=1, le=100_000)] = 50

    @model_validator(mode="after")
    def _fp32_first(self) -> "DeployParams":
        if "fp32" not in self.precisions:
            raise FieldError("precisions", f"must include fp32 (the parity-gated graph the others derive from), "
                                           f"got {list(self.precisions)}; add fp32")
        check_unique(self, "models", "precisions", "budgets_ms")
        return self


class QATParams(Record):
    """The `qat` and `qat_export` stages: quantization-aware training of deployed students.

    Each model of ``models`` (a model of ``deploy.models``, whose post-training int8 export it is
    compared with) is fine-tuned once per entry of ``methods`` with fake int8 quantization in the
    placement of the TensorRT int8 export (``pipeline/quant``): ``none`` is plain QAT (task loss
    only), any KD method of ``pipeline/distill/methods.py`` adds that method's terms against the
    float32 teacher ``distill.teacher``, balanced by ``distill.balance``. ``epochs`` at the
    constant learning rate ``lr`` (after ``train.warmup_iters``' warm-up). ``parity``: the export
    gate's tolerances for the Q/DQ graph against the PyTorch fake-quant model. They are wider than
    ``deploy.parity``'s: a last-bit difference of a convolution flips the rounding of an activation
    that sits on a quantization boundary, the flip travels through the later quantized layers and
    now and then moves a box across an NMS or top-100 decision. Measured on the default's two QAT
    students: mAP50 within 0.002; beyond IoU 0.9 / score 0.02, 19 unmatched detections of both sides
    against 5000 PyTorch detections (plain QAT, 0.4%), beyond IoU 0.95 / score 0.01, 28 (0.6%); the
    gate now divides by both sides' detections (about 10,000), which halves those fractions, so
    ``max_unmatched`` is 1% (the 2% chosen against one side's count: the same gate). A wrong scale
    or placement moves nearly every detection (tests/test_qat.py), far beyond it.
    """

    models: Annotated[tuple[Annotated[str, Field(pattern=EXPORT_MODEL_NAME)], ...], Field(min_length=1)] = (
        "gkd_bmfi-resnet18",)
    methods: Annotated[tuple[Annotated[str, Field(pattern=METHOD_NAME)], ...], Field(min_length=1)] = (
        "gkd_bmfi",)
    epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.001
    parity: ParityParams = ParityParams(box_iou=0.9, score_tol=0.02, max_unmatched=0.01)

    @model_validator(mode="after")
    def _no_duplicates(self) -> "QATParams":
        check_unique(self, "models", "methods")
        return self


class BenchmarkParams(Record):
    """The `benchmark` stage: latency percentiles at batch 1 after ``warmup_iters`` runs over
    ``iters`` timed runs, throughput at ``throughput_batch``; CPU backends pinned to ``threads``."""

    warmup_iters: Annotated[int, Field(ge=1, le=10_000)] = 5
    iters: Annotated[int, Field(ge=3, le=100_000)] = 20
    throughput_batch: Annotated[int, Field(ge=1, le=256)] = 4
    throughput_iters: Annotated[int, Field(ge=1, le=10_000)] = 5
    threads: Annotated[int, Field(ge=1, le=256)] = 2


class Params(Record):
    """The whole ``params.yaml``."""

    seed: int = 0
    datasets: Annotated[tuple[Annotated[str, Field(pattern=DATASET_NAME)], ...], Field(min_length=1)]
    sources: dict[Annotated[str, Field(pattern=DATASET_NAME)], SourceParams]
    synthetic: SyntheticParams = SyntheticParams()
    curate: CurateParams = CurateParams()
    input: InputParams = InputParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    eval: EvalParams = EvalParams()
    distributed: DistributedParams = DistributedParams()
    distill: DistillParams = DistillParams()
    deploy: DeployParams = DeployParams()
    qat: QATParams = QATParams()
    benchmark: BenchmarkParams = BenchmarkParams()

    @model_validator(mode="after")
    def _datasets_have_sources(self) -> "Params":
        for name in self.datasets:
            if name not in self.sources:
                raise ValueError(
                    f"datasets lists {name!r} but sources has no entry for it "
                    f"(known: {', '.join(sorted(self.sources))}); add sources.{name}"
                )
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets has duplicates: {list(self.datasets)}")
        return self

    @model_validator(mode="after")
    def _replica_seeds_differ(self) -> "Params":
        if self.seed in self.distill.extra_seeds:
            raise ValueError(f"distill.extra_seeds repeats seed = {self.seed}: the main run is that seed already; "
                             "list other seeds only")
        return self

    @model_validator(mode="after")
    def _distill_teacher_is_trained(self) -> "Params":
        if self.distill.teacher not in self.model.train:
            raise ValueError(f"distill.teacher = {self.distill.teacher!r} is not trained by the pipeline; "
                             f"use one of model.train {list(self.model.train)} or add it there")
        return self

    @model_validator(mode="after")
    def _exported_models_are_trained(self) -> "Params":
        """``deploy.models`` and ``qat.models`` name models the pipeline trains (else DVC stops on
        the missing checkpoint with a bare "No such file")."""
        trained = self.trained_models()
        for name in self.deploy.models:
            if name not in trained:
                raise ValueError(f"deploy.models names {name!r}, which no stage trains; use one of {sorted(trained)} "
                                 "(model.train baselines, or <distill.methods>-<distill.students>)")
        for name in self.qat.models:
            if name not in trained:
                raise ValueError(f"qat.models names {name!r}, which no stage trains; use a model of deploy.models "
                                 f"{list(self.deploy.models)} (QAT starts from a deployed model)")
        return self

    def trained_models(self) -> set[str]:
        """Names of every model the `train` and `distill` stages write."""
        distilled = {f"{method}-{student}" for method in self.distill.methods for student in self.distill.students}
        return set(self.model.train) | distilled

    def source(self, dataset: str) -> SourceParams:
        if dataset not in self.sources:
            raise UserError(
                f"params.yaml: unknown dataset {dataset!r}; known: {', '.join(sorted(self.sources))}"
            )
        return self.sources[dataset]


def _format_location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<top level>"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the record that holds ``loc[-1]`` (best effort, for messages)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            if isinstance(part, str) and current is SourceParams:
                continue
            return []
        annotation = fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        elif getattr(annotation, "__origin__", None) is dict:
            current = annotation.__args__[1]
        else:
            return []
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line for the first problem pydantic found: the file, the dotted key, the reason (and the
    fix, where a validator states it); never a whole section's value."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        field = tuple(cause.field.split(".")) if cause.field else ()
        return f"{source}: {_format_location(loc + field)} {cause}"
    key = _format_location(loc)
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(Params, loc)
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"{source}: unknown key {key!r}{hint}"
    if first["type"] == "missing":
        return f"{source}: missing key {key!r}"
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    message = message[:1].lower() + message[1:]
    if not loc:
        return f"{source}: {message}"
    if isinstance(value, dict):
        return f"{source}: {key}: {message}"
    return f"{source}: {key} = {value!r} is not allowed: {message}"


def parse_params(data: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping; raise :class:`UserError` with one line."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source)) from None


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found; run from the repository root or pass --params")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return parse_params(data, str(path))
