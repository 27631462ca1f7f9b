"""params.yaml loading: the committed file is valid; every bad value is one clear line."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from pipeline.config import load_params, parse_params
from pipeline.errors import UserError

from conftest import REPO


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_committed_params_load_as_frozen_records():
    params = load_params(REPO / "params.yaml")
    assert params.datasets == ("synthetic",)
    assert params.input.padded_shape[0] % params.input.pad_divisor == 0
    with pytest.raises(Exception):
        params.curate.val_fraction = 0.5  # records are immutable


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["curate"].update(bogus=1), "unknown key 'curate.bogus'; allowed keys here: "),
    (lambda d: d.update(colour="red"), "unknown key 'colour'"),
    (lambda d: d["synthetic"].update(num_images="many"), "synthetic.num_images = 'many' is not allowed"),
    (lambda d: d["curate"].update(val_fraction=1.5), "curate.val_fraction = 1.5 is not allowed: input should be less than 1"),
    (lambda d: d["input"].update(flip_prob=-0.1), "input.flip_prob = -0.1 is not allowed"),
    (lambda d: d["sources"]["kitti"].update(format="voc"), "sources.kitti.format = 'voc' is not allowed: input should be 'kitti' or 'coco'"),
    (lambda d: d.update(datasets=["nuscenes"]), "datasets lists 'nuscenes' but sources has no entry for it"),
    (lambda d: d.update(datasets=[]), "datasets = [] is not allowed"),
    (lambda d: d.pop("sources"), "missing key 'sources'"),
    (lambda d: d["distill"].update(extra_seeds=[1, 0]), "distill.extra_seeds repeats seed = 0"),
    (lambda d: d["distill"].update(extra_seeds=[3, 3]), "extra_seeds has duplicates"),
    (lambda d: d["distill"]["balance"].update(mode="grad"), "distill.balance.mode = 'grad' is not allowed"),
    (lambda d: d["distill"]["balance"].update(ratio=0), "distill.balance.ratio = 0 is not allowed"),
    (lambda d: d["deploy"].update(budgets_ms=[0, 60]),
     "deploy.budgets_ms.0 = 0 is not allowed: input should be greater than 0"),
    (lambda d: d["deploy"].update(budgets_ms=[60, 60.0]), "deploy.budgets_ms has duplicates (60.0); list each once"),
    (lambda d: d["deploy"].update(budgets_ms=[float("nan")]),
     "deploy.budgets_ms.0 = nan is not allowed: input should be a finite number"),
    (lambda d: d["deploy"].update(budgets_ms=[]), "deploy.budgets_ms = [] is not allowed"),
])
def test_bad_params_give_one_line_naming_key_value_and_rule(raw, mutate, expected):
    data = copy.deepcopy(raw)
    mutate(data)
    with pytest.raises(UserError) as info:
        parse_params(data)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_stage_exits_nonzero_with_one_line_on_unknown_key(tmp_path, raw):
    data = copy.deepcopy(raw)
    data["train_epochs"] = 3
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "curate.py"), "synthetic", "--params", str(bad),
                             "--raw-root", str(tmp_path / "raw"), "--out-root", str(tmp_path / "curated")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {bad}: unknown key 'train_epochs'; allowed keys here: ")
    assert "datasets" in lines[0] and "sources" in lines[0]
    assert not (tmp_path / "curated").exists()


def test_invalid_yaml_is_reported_with_its_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\ndatasets: [synthetic\n")
    with pytest.raises(UserError, match=r"not valid YAML \(line \d+\)"):
        load_params(bad)


def test_gpu_profile_is_valid_and_paper_scale():
    params = load_params(REPO / "params-gpu.yaml")
    assert (params.input.width, params.input.height) == (1333, 800)
    assert params.train.epochs == 12 and params.train.lr_steps == (8, 11)
    assert set(params.model.detectors) == {"gfl", "faster_rcnn"}
