"""The committed params profiles against dvc.yaml and the typed loader (one source of defaults)."""
from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO
from pipeline.config import Params, load_params

PROFILES = ("params.yaml", "params-gpu.yaml")
#: Mappings whose keys are data (names), not settings: a profile need not list every entry.
OPEN_MAPPINGS = ("sources", "distill.baselines", "distill.gkd.datasets")


def dvc_param_keys(datasets: list[str] = ("synthetic",), detectors: list[str] = ("gfl",)) -> set[str]:
    """Every params key dvc.yaml reads: the stages' ``params`` lists (``${item.dataset}`` and
    ``${item.detector}`` expanded over ``datasets`` and ``detectors``) and the ``${...}``
    interpolations."""
    text = (REPO / "dvc.yaml").read_text()
    keys = {k for k in re.findall(r"\$\{([a-z_.]+)\}", text) if not k.startswith("item.")}
    for stage in yaml.safe_load(text)["stages"].values():
        for key in stage.get("params", []):
            keys.update(key.replace("${item.dataset}", d).replace("${item.detector}", m)
                        for d in datasets for m in detectors)
    return keys


def lookup(data: dict, dotted: str) -> bool:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def leaves(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name not in OPEN_MAPPINGS:
            out |= leaves(value, f"{name}.")
        else:
            out.add(name)
    return out


def test_dvc_yaml_reads_key_level_params():
    keys = dvc_param_keys(detectors=("gfl", "faster_rcnn"))
    assert {"train.lr", "deploy.opset", "benchmark.iters", "distill.gkd.gfl", "distill.gkd.faster_rcnn"} <= keys
    # whole sections would rerun stages on unrelated edits (deploy.models, train.num_workers, ...);
    # deploy.models is read only as the export matrix
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        declared = set(stage.get("params", []))
        assert not declared & {"model", "train", "deploy", "input", "benchmark", "distill", "distill.gkd",
                               "train.num_workers", "deploy.models"}, (name, declared)
        # only the cheap settings stages read the methods' settings, and of the GKD weights only
        # their detector's; a training stage reads its method's resolved settings file, so another
        # method's settings or another detector's weights leave it up to date
        if name not in ("kd_settings", "qat_kd_settings"):
            assert not any(key.startswith(("distill.gkd", "distill.baselines", "distill.balance"))
                           for key in declared), name


@pytest.mark.parametrize("profile", PROFILES)
def test_every_key_dvc_reads_is_in_the_profile(profile):
    raw = yaml.safe_load((REPO / profile).read_text())
    missing = sorted(k for k in dvc_param_keys(raw["datasets"], raw["model"]["detectors"]) if not lookup(raw, k))
    assert not missing, f"{profile} lacks {missing}: DVC would stop with 'Parameters ... are missing'"


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_loads_and_states_every_setting(profile):
    params = load_params(REPO / profile)
    raw = yaml.safe_load((REPO / profile).read_text())
    every = leaves(params.model_dump(mode="json"))
    assert every - leaves(raw) == set(), f"{profile} leaves settings to hidden defaults"


def test_params_yaml_is_the_defaults_written_out():
    """config.py holds each default once; params.yaml states exactly those values."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = Params.model_validate({"datasets": raw["datasets"], "sources": raw["sources"]})
    assert load_params(REPO / "params.yaml") == defaults


@pytest.mark.parametrize("profile", PROFILES)
def test_every_replica_workspace_gets_valid_params(profile):
    from pipeline.config import parse_params
    from stages.replica import replica_params

    raw = yaml.safe_load((REPO / profile).read_text())
    params = load_params(REPO / profile)
    for student in params.distill.students:          # each student's workspace, e.g. ResNet-50's
        replica = parse_params(replica_params(raw, params.datasets[0], params.model.detectors[0], student, 7))
        assert replica.seed == 7 and replica.distill.students == (student,)
        assert replica.eval.pictures == 0 and replica.deploy.models == (f"baseline-{student}",)
