"""A missing raw folder ends with one line naming it and what to download (stage check_raw, which
curate waits for, so the line comes before DVC's own "[Errno 2]")."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO
from stages import check_raw as check_raw_stage


def run(tmp_path, monkeypatch, dataset):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    check_raw_stage.main([dataset])


@pytest.mark.parametrize("dataset, expected", [
    ("kitti", "data/raw/kitti is missing: download the KITTI 2D object 'left color images' (data_object_image_2.zip"),
    ("coco_traffic", "data/raw/coco_traffic is missing: download train2017.zip, val2017.zip and annotations"),
])
def test_a_missing_raw_folder_is_one_line_naming_the_folder_and_the_download(tmp_path, monkeypatch, capsys,
                                                                             dataset, expected):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, monkeypatch, dataset)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {expected}") and "\n" not in err
    assert "README 'Pointing it at real data'" in err and f"drop '{dataset}' from params.yaml's datasets" in err
    assert not (tmp_path / "data" / "raw_checks" / f"{dataset}.json").exists()


def test_a_dangling_link_is_named_as_one(tmp_path, monkeypatch, capsys):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "kitti").symlink_to(tmp_path / "gone")
    with pytest.raises(SystemExit):
        run(tmp_path, monkeypatch, "kitti")
    assert f"data/raw/kitti is a link to {tmp_path / 'gone'}, which is not a folder" in capsys.readouterr().err


def test_a_present_folder_and_the_generated_synthetic_set_pass(tmp_path, monkeypatch):
    (tmp_path / "data" / "raw" / "kitti" / "image_2").mkdir(parents=True)
    run(tmp_path, monkeypatch, "kitti")
    run(tmp_path, monkeypatch, "synthetic")     # the synthesize stage writes it later
    record = json.loads((tmp_path / "data" / "raw_checks" / "synthetic.json").read_text())
    assert record["written_by"] == "the synthesize stage"
    assert (tmp_path / "data" / "raw_checks" / "kitti.json").is_file()


def test_curate_waits_for_the_check_of_its_dataset():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    check = stages["check_raw"]
    assert check["outs"] == ["data/raw_checks/${item.dataset}.json"]
    assert not any(str(d).startswith("data/raw/") for d in check["deps"])   # DVC would stop at it first
    assert "data/raw_checks/${item.dataset}.json" in stages["curate"]["deps"]
