"""Every bad input a user can hand the pipeline ends with one line naming the file, the field and
the fix, a non-zero exit and no half-written output (or, for boxes reaching outside their image,
a clip and a count)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.config import load_params, parse_params
from pipeline.data.curate import curate_coco_traffic, curate_kitti
from pipeline.data.dataset import read_rgb
from pipeline.engine.trainer import _resume
from pipeline.errors import UserError
from pipeline.io import atomic_dir, atomic_file, write_json
from pipeline.report.summary import model_rows
from stages import curate as curate_stage

from conftest import REPO, kitti_line, write_coco, write_kitti
from test_curate_coco import SOURCE, TRAIN_IMAGES, VAL_IMAGES


def one_line(err: UserError) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text
    return text


def kitti_with(tmp_path: Path, line: str) -> Path:
    frames = {i: [kitti_line("Car", (10, 5, 40, 30))] for i in range(4)}
    root = write_kitti(tmp_path / "kitti", frames)
    (root / "label_2" / "000002.txt").write_text(kitti_line("Car", (10, 5, 40, 30)) + "\n" + line + "\n")
    return root


# ------------------------------------------------------------------------------------- KITTI labels
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_box_coordinate_is_refused(tmp_path, value):
    line = kitti_line("Car", (10, 5, 40, 30)).split()
    line[6] = value                                     # x2
    root = kitti_with(tmp_path, " ".join(line))
    with pytest.raises(UserError) as info:
        curate_kitti(root, "kit", 0.25, 0, 1.0)
    assert "000002.txt line 2: field 'x2'" in one_line(info.value) and "not a finite number" in str(info.value)


def test_curate_stage_on_a_nan_box_exits_2_and_writes_nothing(tmp_path, capsys):
    line = kitti_line("Pedestrian", (10, 5, 40, 30)).replace("40.00", "nan")
    raw = tmp_path / "raw"
    raw.mkdir()
    kitti_with(tmp_path, line).rename(raw / "kit")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sources"]["kit"] = {"format": "kitti"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as info:
        curate_stage.main(["kit", "--params", str(tmp_path / "params.yaml"), "--raw-root", str(raw),
                           "--out-root", str(tmp_path / "curated")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "'x2'" in err
    assert not (tmp_path / "curated" / "kit").exists()


def test_boxes_reaching_outside_the_image_are_clipped_and_counted(tmp_path):
    frames = {0: [kitti_line("Car", (-5, 2, 30, 20)),          # left edge outside: clipped
                  kitti_line("Car", (100, 30, 130, 45)),       # beyond the right and bottom: clipped
                  kitti_line("Cyclist", (125, 41, 140, 50)),   # entirely outside (image 120 x 40): dropped
                  kitti_line("Car", (10, 5, 40, 30))],         # inside: kept as is
              1: [kitti_line("Car", (10, 5, 40, 30))]}
    root = write_kitti(tmp_path / "kitti", frames, size=(120, 40))
    curated = curate_kitti(root, "kit", 0.5, 0, 1.0)
    anns = curated.train["annotations"] + curated.val["annotations"]
    boxes = sorted(tuple(a["bbox"]) for a in anns if a["image_id"] == 0)
    assert boxes == [(0.0, 2.0, 30.0, 18.0), (10.0, 5.0, 30.0, 25.0), (100.0, 30.0, 20.0, 10.0)]
    assert curated.split["boxes_clipped_to_image"] == 3 and curated.split["boxes_outside_image_dropped"] == 1
    for a in anns:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 120 and y + h <= 40


def test_non_utf8_label_file_names_the_line(tmp_path):
    root = kitti_with(tmp_path, kitti_line("Car", (1, 1, 5, 5)))
    path = root / "label_2" / "000002.txt"
    path.write_bytes(path.read_bytes() + b"Car 0.00 0 -1.57 1 1 5 5 1.5 1.6 3.9 1 1.7 20 -1.57 \xff\n")
    with pytest.raises(UserError) as info:
        curate_kitti(root, "kit", 0.25, 0, 1.0)
    assert "000002.txt line 3: byte 0xff is not UTF-8" in one_line(info.value)


def test_two_files_of_one_frame_id_are_refused(tmp_path):
    root = write_kitti(tmp_path / "kitti", {i: [kitti_line("Car", (10, 5, 40, 30))] for i in range(10)})
    Image.open(root / "image_2" / "000009.png").save(root / "image_2" / "9.png")
    (root / "label_2" / "9.txt").write_text(kitti_line("Car", (1, 1, 9, 9)) + "\n")
    with pytest.raises(UserError) as info:
        curate_kitti(root, "kit", 0.2, 0, 1.0)
    assert "frame id 9 is also" in one_line(info.value) and "rename or remove" in str(info.value)


def test_sixteen_bit_png_is_refused_not_read_white(tmp_path):
    root = write_kitti(tmp_path / "kitti", {i: [kitti_line("Car", (10, 5, 40, 30))] for i in range(3)})
    deep = root / "image_2" / "000001.png"
    Image.fromarray(np.full((40, 120), 3000, np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith("I")
    with pytest.raises(UserError) as info:
        curate_kitti(root, "kit", 0.3, 0, 1.0)
    assert "000001.png: image mode" in one_line(info.value) and "8-bit" in str(info.value)
    with pytest.raises(UserError, match="not 8-bit"):
        read_rgb(deep)


# ------------------------------------------------------------------------------------- COCO jsons
def coco_root_with(tmp_path: Path, change) -> Path:
    root = tmp_path / "coco"
    write_coco(root, "train", TRAIN_IMAGES)
    write_coco(root, "val", VAL_IMAGES)
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["images"].append(dict(d["images"][0])), r"images\[6\]\.id = 1000 is used by another image"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), r"annotations\[1\]\.bbox = \[1, 2, 3\] is not four numbers"),
    (lambda d: d["annotations"][1].update(bbox="1 2 3 4"), r"annotations\[1\]\.bbox = '1 2 3 4' is not four numbers"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, None, 4]), r"is not four numbers"),
    (lambda d: d.update(images={"1000": d["images"][0]}), r"'images' is a dict; COCO keeps images as a list"),
], ids=["duplicate_image_id", "bbox_three_numbers", "bbox_string", "bbox_null", "images_dict"])
def test_malformed_coco_json_is_one_line(tmp_path, change, expected):
    root = coco_root_with(tmp_path, change)
    with pytest.raises(UserError, match=expected) as info:
        curate_coco_traffic(root, "coco_traffic", SOURCE, min_box_size=1.0)
    assert "instances_train2017.json" in one_line(info.value)


# ------------------------------------------------------------------------------------- params
def base_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_empty_params_file_is_our_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    with pytest.raises(UserError, match=r"params.yaml: expected a mapping of keys at the top level, got NoneType"):
        load_params(path)


def test_unknown_dataset_names_the_fix():
    data = base_params()
    data["datasets"] = ["kiti"]
    with pytest.raises(UserError, match=r"datasets lists 'kiti' but sources has no entry for it .*add sources\.kiti"):
        parse_params(data)


def test_deploy_model_that_is_never_trained_is_refused():
    data = base_params()
    data["deploy"]["models"] = ["baseline-resnet18", "fgd-resnet18"]
    with pytest.raises(UserError) as info:
        parse_params(data)
    assert "deploy.models names 'fgd-resnet18', which no stage trains" in one_line(info.value)


@pytest.mark.parametrize("launcher", ["python ; rm -rf data", "torchrun --nproc-per-node=2 && echo", "python $(id)",
                                      "python | tee log", "pythonx"])
def test_launcher_refuses_shell_syntax(launcher):
    data = base_params()
    data["distributed"]["launcher"] = launcher
    with pytest.raises(UserError, match="distributed.launcher"):
        parse_params(data)


def test_launcher_accepts_torchrun_options():
    data = base_params()
    data["distributed"]["launcher"] = ("torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 --rdzv-backend=c10d "
                                       "--rdzv-endpoint=host-1.cluster:29400")
    parse_params(data)


# ------------------------------------------------------------------------------------- files the pipeline wrote
def test_resume_checkpoint_holding_the_wrong_object_is_one_line(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for wrong in ([1, 2, 3], {"state_dict": model.state_dict()}):
        torch.save(wrong, tmp_path / "last.pt")
        with pytest.raises(UserError) as info:
            _resume(tmp_path, "key", model, optimizer, torch.device("cpu"))
        assert "last.pt: not a resume checkpoint of this pipeline" in one_line(info.value)


def test_corrupt_metrics_json_read_by_the_report_is_one_line(tmp_path):
    write_json(tmp_path / "baseline-resnet18.json", {"mAP50": 10.0})
    (tmp_path / "teacher-resnet101.json").write_text('{"mAP50": 1')
    with pytest.raises(UserError) as info:
        model_rows(tmp_path)
    assert "teacher-resnet101.json: not valid json" in one_line(info.value) and "evaluate stage" in str(info.value)
    (tmp_path / "teacher-resnet101.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a metrics file"):
        model_rows(tmp_path)


def test_runtime_on_a_missing_folder_names_that_folder(tmp_path):
    from pipeline.deploy.runtime import DeployedDetector

    (tmp_path / "manifest.json").write_text("{}")            # a parent manifest must not be read instead
    with pytest.raises(UserError) as info:
        DeployedDetector(tmp_path / "no-such-export")
    assert one_line(info.value).startswith(f"{tmp_path / 'no-such-export'}: no such export folder")


# ------------------------------------------------------------------------------------- leftovers, permissions
def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    final = tmp_path / "export"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale_dir = tmp_path / f".export.tmp-{dead.stdout.strip()}-abc"
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_bytes(b"x" * 1000)
    legacy = tmp_path / ".export.tmp-k2j4h5"                # older name without the pid
    legacy.mkdir()
    live = tmp_path / f".export.tmp-{os.getppid()}-xyz"     # a running process's: left alone
    live.mkdir()
    with atomic_dir(final) as out:
        (out / "a").write_text("1")
    assert not stale_dir.exists() and not legacy.exists() and live.exists()
    assert (final / "a").read_text() == "1"


def test_outputs_honour_the_umask(tmp_path):
    before = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "folder") as out:
            (out / "f").write_text("x")
        with atomic_file(tmp_path / "file.json") as handle:
            handle.write("{}")
    finally:
        os.umask(before)
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "file.json").stat().st_mode & 0o777 == 0o640


def test_sigterm_during_a_write_leaves_no_temporary(tmp_path):
    script = ("import sys, time\n"
              "from pathlib import Path\n"
              "from pipeline.errors import exit_on_user_error\n"
              "from pipeline.io import atomic_dir\n"
              "@exit_on_user_error\n"
              "def main():\n"
              f"    with atomic_dir(Path({str(tmp_path / 'out')!r})) as tmp:\n"
              "        (tmp / 'big').write_bytes(b'x' * 1000)\n"
              "        print('writing', flush=True)\n"
              "        time.sleep(60)\n"
              "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
