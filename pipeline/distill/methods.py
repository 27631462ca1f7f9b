"""The KD methods by name: the one explicit dict of this family (docs/architecture.md).

* ``gkd_bmfi``, ``bmfi``, ``mfi``, ``gkd``: GKD-BMFI and the rows of the paper's Table 3
  (all terms; mask + MFI; MFI only; GKD only), one module (:class:`~pipeline.distill.bmfi.GKDBMFI`)
  with settings from params ``distill.gkd``;
* ``inherit_only``: the control, inheriting without any KD term
  (:class:`~pipeline.distill.inherit.InheritOnly`);
* ``mimic``, ``fgd``, ``fgfi``, ``defeat``: the baselines (docs/method.md, 'Baselines'), each
  built from its module's per-detector ``DEFAULTS`` overridden by params
  ``distill.baselines.<method>.<detector>``.

A method name never contains ``-``: models are named ``<method>-<student backbone>``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from pipeline.config import DistillParams
from pipeline.distill.base import KDMethod
from pipeline.errors import UserError

#: Constructor arguments the builder sets from the detector, never from params.
STRUCTURAL = ("num_levels", "channels")


def _gkd_family(name: str, detector: str, params: DistillParams, channels: int, num_levels: int,
                dataset: str | None, *, gkd: bool, mask: bool, mfi: bool) -> KDMethod:
    from pipeline.distill.bmfi import GKDBMFI

    g = params.gkd
    weights = g.weights(dataset, detector)
    return GKDBMFI(name=name, gkd=gkd, mask=mask, mfi=mfi, gkd_weight=weights.gkd_weight, beta=weights.beta,
                   alpha=weights.alpha, temperature=g.temperature, signed=g.signed, sign=g.sign, targets=g.targets,
                   area_normalize=g.area_normalize, pseudo_top_k=g.pseudo_top_k,
                   pseudo_score_thr=g.pseudo_score_thr, standardize=g.standardize)


def _inherit_only(name: str, detector: str, params: DistillParams, channels: int, num_levels: int,
                  dataset: str | None) -> KDMethod:
    from pipeline.distill.inherit import InheritOnly

    if not params.inherit:
        raise UserError("params.yaml: distill.methods has inherit_only but distill.inherit is false; the control "
                        "is the inherited student: set distill.inherit: true or drop inherit_only")
    return InheritOnly()


def _mimic() -> tuple[type, dict]:
    from pipeline.distill.mimic import DEFAULTS, Mimic
    return Mimic, DEFAULTS


def _fgd() -> tuple[type, dict]:
    from pipeline.distill.fgd import DEFAULTS, FGD
    return FGD, DEFAULTS


def _fgfi() -> tuple[type, dict]:
    from pipeline.distill.fgfi import DEFAULTS, FGFI
    return FGFI, DEFAULTS


def _defeat() -> tuple[type, dict]:
    from pipeline.distill.defeat import DEFAULTS, DeFeat
    return DeFeat, DEFAULTS


def _baseline(load: Callable[[], tuple[type, dict]], name: str, detector: str, params: DistillParams,
              channels: int, num_levels: int, dataset: str | None) -> KDMethod:
    cls, defaults = load()
    accepted = [p for p in inspect.signature(cls).parameters if p not in STRUCTURAL]
    overrides = dict(params.baselines.get(name, {}).get(detector, {}))
    for key in overrides:
        if key not in accepted:
            raise UserError(f"params.yaml: distill.baselines.{name}.{detector}.{key} is not a setting of "
                            f"{name}; allowed: {', '.join(accepted)}")
    kwargs = {**defaults.get(detector, {}), **overrides}
    kwargs.update({k: v for k, v in (("channels", channels), ("num_levels", num_levels))
                   if k in inspect.signature(cls).parameters})
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"params.yaml: distill.baselines.{name}.{detector}: {err}") from None


#: The baselines by name: ``() -> (module class, per-detector DEFAULTS)``, imported on demand.
BASELINES: dict[str, Callable[[], tuple[type, dict]]] = {"mimic": _mimic, "fgd": _fgd, "fgfi": _fgfi,
                                                         "defeat": _defeat}

MethodBuilder = Callable[[str, str, DistillParams, int, int, str | None], KDMethod]

#: name -> builder ``(name, detector, params.distill, fpn_channels, num_levels, dataset) -> KDMethod``.
METHODS: dict[str, MethodBuilder] = {
    "gkd_bmfi": partial(_gkd_family, gkd=True, mask=True, mfi=True),
    "bmfi": partial(_gkd_family, gkd=False, mask=True, mfi=True),
    "mfi": partial(_gkd_family, gkd=False, mask=False, mfi=True),
    "gkd": partial(_gkd_family, gkd=True, mask=False, mfi=False),
    "inherit_only": _inherit_only,
    **{name: partial(_baseline, load) for name, load in BASELINES.items()},
}

#: The method names built by :func:`_gkd_family` (weights in ``distill.gkd``).
GKD_FAMILY = ("gkd_bmfi", "bmfi", "mfi", "gkd")

#: The Table-3 ablation rows, in the paper's order (none = the baseline student).
ABLATIONS = ("mfi", "bmfi", "gkd_bmfi", "gkd")


def check_method(name: str) -> None:
    """One line for a method name that does not exist."""
    if name not in METHODS:
        raise UserError(f"unknown KD method {name!r}; choose one of {', '.join(METHODS)} "
                        "(params.yaml distill.methods)")


def build_method(name: str, detector: str, params: DistillParams, channels: int = 256,
                 num_levels: int = 5, dataset: str | None = None) -> KDMethod:
    """The KD method ``name`` for ``detector`` (trained on ``dataset``) with the settings of
    params' ``distill`` section."""
    check_method(name)
    for method in params.baselines:
        check_method(method)
    return METHODS[name](name, detector, params, channels, num_levels, dataset)


def paper_overrides(name: str, detector: str, method: KDMethod, params: DistillParams,
                    dataset: str | None = None) -> dict:
    """The ``distill`` params (nested dict) that rebuild ``method`` with its current weights in
    ``balance.mode: paper``: put them in params.yaml to repeat a balanced run without
    calibrating. GKD-BMFI's family reads ``distill.gkd.<detector>`` (or
    ``distill.gkd.datasets.<dataset>.<detector>`` where that exists), the baselines
    ``distill.baselines.<method>.<detector>``."""
    if name in GKD_FAMILY:
        weights = {"gkd_weight": method.gkd_weight, "beta": method.beta, "alpha": method.alpha}
        if detector in params.gkd.datasets.get(dataset or "", {}):
            return {"gkd": {"datasets": {dataset: {detector: weights}}}}
        return {"gkd": {detector: weights}}
    if not method.WEIGHTS:
        return {}
    return {"baselines": {name: {detector: method.loss_weights()}}}


#: Where each ``distill`` setting reaches a run: the one definition of which settings enter a
#: distill (or qat) run's resume key and its ``kd_settings`` file (:func:`method_settings`), and
#: which its DVC stage reads from params itself. Dotted keys under ``distill``; a ``gkd.<field>``
#: entry overrides ``gkd``'s for that field.
#:
#: * ``every``: in the settings of every method;
#: * ``kd``: of every method with KD terms (not ``inherit_only``);
#: * ``gkd``: of the GKD-BMFI family;
#: * ``own weights``: only this detector's (and dataset's) entry, of the methods it belongs to
#:   (``gkd.<detector>`` / ``gkd.datasets.<dataset>.<detector>`` for the family,
#:   ``baselines.<method>.<detector>`` for a baseline);
#: * ``stage``: not in the settings file; the stage reads it from params and dvc.yaml lists it
#:   (``epochs`` enters the resume key through the loop settings; ``gradmap_images`` changes the
#:   pictures, not the weights);
#: * ``matrix``: which stages exist, nothing inside one.
SETTING_SCOPES: dict[str, str] = {
    "teacher": "every", "inherit": "every", "gkd.signed": "every", "gkd.sign": "every",
    "gkd": "gkd", "student_grad": "gkd",
    "balance": "kd",
    "gkd.gfl": "own weights", "gkd.faster_rcnn": "own weights", "gkd.datasets": "own weights",
    "baselines": "own weights",
    "epochs": "stage", "gradmap_images": "stage",
    "students": "matrix", "methods": "matrix", "extra_seeds": "matrix",
}


def _gkd_fields_of(scope: str) -> set[str]:
    """The ``gkd`` fields whose own entry in :data:`SETTING_SCOPES` is ``scope``."""
    return {key.split(".", 1)[1] for key, s in SETTING_SCOPES.items() if key.startswith("gkd.") and s == scope}


def method_settings(name: str, detector: str, params: DistillParams, dataset: str | None = None) -> dict:
    """Every ``distill`` setting that a run of method ``name`` for ``detector`` on ``dataset``
    reads, resolved (json-serialisable): the one list of what enters that run's resume key and the
    ``kd_settings`` file its DVC stage depends on, so that editing another method's settings, or
    another detector's or dataset's weights, neither restarts the run nor makes it stale.

    :data:`SETTING_SCOPES` says which: all methods: the teacher, ``inherit``, ``gkd.signed`` and
    ``gkd.sign`` (the gradient-map pictures). The GKD-BMFI family: ``distill.gkd`` with the weights of this
    dataset and detector only, ``student_grad`` and ``balance``. A baseline: its module's
    ``DEFAULTS`` for the detector with ``distill.baselines.<name>.<detector>`` over them, and
    ``balance``. ``inherit_only``: nothing more (it has no KD term to balance).
    """
    check_method(name)
    settings: dict = {"method": name, "teacher": params.teacher, "inherit": params.inherit,
                      "gradmaps_signed": params.gkd.signed, "gradmaps_sign": params.gkd.sign}
    if name in GKD_FAMILY:
        g = params.gkd
        settings["gkd"] = {**g.model_dump(mode="json", exclude=_gkd_fields_of("own weights")),
                           **g.weights(dataset, detector).model_dump(mode="json")}
        settings["student_grad"] = params.student_grad
    elif name != "inherit_only":
        _, defaults = BASELINES[name]()
        settings[name] = {**defaults.get(detector, {}), **params.baselines.get(name, {}).get(detector, {})}
    if name != "inherit_only":
        settings["balance"] = params.balance.model_dump(mode="json")
    return settings
