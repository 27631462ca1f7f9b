"""Bad params, a parity gate tightened past what any export meets, a full or read-only disk and a
broken image read in a DataLoader worker: each ends with one line naming the file, the field and the
fix, exit status 2, and no half-written output."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from pipeline.config import ParityParams, parse_params
from pipeline.deploy.parity import ParityError, check_parity, parity_report, previous_export_note
from pipeline.errors import UserError, exit_on_user_error
from pipeline.io import atomic_dir, working_dir
from pipeline.structures import Detections
from stages import export as export_stage
from stages import qat as qat_stage

from conftest import REPO


def base_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def refusal(edit) -> str:
    """The one-line message of parse_params on the repository's params.yaml after ``edit``."""
    data = base_params()
    edit(data)
    with pytest.raises(UserError) as info:
        parse_params(data)
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def stderr_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


# ------------------------------------------------------------------------------------- params
def test_unknown_qat_method_names_qat_methods_and_every_allowed_value(tmp_path, capsys):
    data = base_params()
    data["qat"]["methods"] = ["gkd_bmfi", "foo"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as info:
        qat_stage.main(["synthetic", "gfl", "gkd_bmfi-resnet18", "foo", "--params", str(path)])
    assert info.value.code == 2
    line = stderr_line(capsys)
    assert line.startswith(f"error: {path}: qat.methods names 'foo', which is no method; use none (plain QAT) "
                           "or a KD method: ")
    assert "gkd_bmfi" in line and "inherit_only" in line and "distill.methods" not in line


def test_qat_model_that_is_never_trained_is_refused_at_load():
    line = refusal(lambda d: d["qat"].update(models=["gkd_bmfi-resnet18", "fgd-resnet18"]))
    assert line == ("params.yaml: qat.models names 'fgd-resnet18', which no stage trains; use a model of "
                    "deploy.models ['gkd_bmfi-resnet18', 'inherit_only-resnet18', 'baseline-resnet18'] (QAT starts from a "
                    "deployed model)")


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["deploy"]["tensorrt"].update(opt_batch=16),
     "params.yaml: deploy.tensorrt.opt_batch = 16 is larger than max_batch = 8 (the largest batch the engines "
     "accept); set opt_batch to at most 8 or raise max_batch"),
    (lambda d: d["deploy"]["tensorrt"].update(nms_max_boxes=6000),
     "params.yaml: deploy.tensorrt.nms_max_boxes = 6000 is more than TensorRT's NMS layer takes on any GPU; set "
     "5000, or 2000 for SM 5.3/6.2 (Jetson Nano/TX1/TX2)"),
    (lambda d: d["qat"].update(methods=["gkd_bmfi", "none", "gkd_bmfi"]),
     "params.yaml: qat.methods has duplicates ('gkd_bmfi'); list each once"),
    (lambda d: d["input"].update(mean=[1, 2]),
     "params.yaml: input.mean needs 3 values (one per RGB channel), got 2: [1, 2]; write R, G, B as in the "
     "default [123.675, 116.28, 103.53]"),
    (lambda d: d["distill"]["gkd"].update(signed=False, sign="descent"),
     "params.yaml: distill.gkd.sign = descent negates the channel weights of signed maps, but signed is false "
     "(maps from |grad| have no sign); set signed: true or sign: ascent"),
], ids=["opt_batch_over_max_batch", "nms_max_boxes_over_tensorrts", "duplicate_qat_methods", "two_value_mean",
        "descent_sign_of_unsigned_maps"])
def test_record_level_refusal_is_file_field_reason_fix_without_the_section(edit, expected):
    line = refusal(edit)
    assert line == expected
    assert "{" not in line                              # no section dumped before the reason


# ------------------------------------------------------------------------------------- parity gate
COCO = {"categories": [{"id": 1, "name": "car"}],
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "1.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                         "iscrowd": 0}]}


def _dets(boxes: list[list[float]], scores: list[float]) -> Detections:
    return Detections(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores),
                      torch.zeros(len(scores), dtype=torch.long))


def test_tightened_parity_counts_at_most_every_detection_and_says_how_to_get_the_old_export_back():
    tol = ParityParams(score_tol=0.0, box_iou=1.0)
    ref = {1: _dets([[0, 0, 10, 10], [50, 50, 70, 70], [20, 20, 40, 30]], [0.9, 0.6, 0.4])}
    got = {1: _dets([[0, 0, 10, 10.01], [50, 50, 70, 70.01], [20, 20, 40, 30.01]], [0.9001, 0.6001, 0.4001])}
    report = parity_report(COCO, ref, got, tol, score_thr=0.05, max_det=100)
    assert report["unexplained_unmatched"] == 6                       # nothing matches: each side's 3
    assert report["detections"] == 6 and report["unexplained_unmatched"] <= report["detections"]
    folder = Path("exports/synthetic/gfl/gkd_bmfi-resnet18")
    with pytest.raises(ParityError) as info, previous_export_note(folder):
        check_parity(report, tol, "synthetic/gfl/gkd_bmfi-resnet18")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("synthetic/gfl/gkd_bmfi-resnet18: parity gate failed: 6 of 6 detections differ "
                           "(PyTorch's and ONNX Runtime's together: ")
    assert ("`dvc repro` deleted it before the stage ran: `dvc checkout exports/synthetic/gfl/gkd_bmfi-resnet18` "
            "brings back") in text
    assert "a direct run leaves the previous exports/synthetic/gfl/gkd_bmfi-resnet18 as it was" in text


# ------------------------------------------------------------------------------------- disk errors
@pytest.mark.parametrize("code, fix", [
    (errno.EROFS, "read-only"), (errno.ENOSPC, "free space"), (errno.EDQUOT, "quota"),
    (errno.EACCES, "writable"), (errno.EPERM, "writable")])
def test_os_refusal_to_write_is_one_line_and_leaves_no_temporary(tmp_path, capsys, code, fix):
    final = tmp_path / "exports" / "m"
    final.mkdir(parents=True)
    (final / "model.onnx").write_text("previous")

    @exit_on_user_error
    def write() -> None:
        with atomic_dir(final) as folder:
            raise OSError(code, os.strerror(code), str(folder / "model.onnx"))

    with pytest.raises(SystemExit) as info:
        write()
    assert info.value.code == 2
    line = stderr_line(capsys)
    assert line.startswith(f"error: {final.parent}/.m.tmp-") and f"/model.onnx: {os.strerror(code)}; " in line
    assert fix in line
    assert sorted(p.name for p in final.parent.iterdir()) == ["m"]          # no temporary left
    assert (final / "model.onnx").read_text() == "previous"


def test_full_disk_met_by_a_write_that_names_no_file_is_one_line(capsys):
    @exit_on_user_error
    def write() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")     # what file.write raises, e.g. in torch.onnx

    with pytest.raises(SystemExit) as info:
        write()
    assert info.value.code == 2
    assert stderr_line(capsys) == ("error: No space left on device while writing; free space on the disk being "
                                   "written (df -h shows what is left) and run again")


def test_other_os_errors_still_raise():
    @exit_on_user_error
    def read() -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")

    with pytest.raises(FileNotFoundError):
        read()


@pytest.fixture
def export_world(tmp_path, monkeypatch):
    """The export stage with the data and model loading stubbed out, in an empty folder that holds
    a previous export of synthetic/gfl/gkd_bmfi-resnet18."""
    monkeypatch.setattr(export_stage, "load_curated", lambda *a, **k: None)
    monkeypatch.setattr(export_stage, "CuratedDataset", lambda *a, **k: SimpleNamespace(class_names=("car",)))
    monkeypatch.setattr(export_stage, "load_trained", lambda *a, **k: (None, {}))
    previous = tmp_path / "exports" / "synthetic" / "gfl" / "gkd_bmfi-resnet18"
    previous.mkdir(parents=True)
    (previous / "model.onnx").write_text("previous")
    with working_dir(tmp_path):
        yield previous


ARGS = ["synthetic", "gfl", "gkd_bmfi-resnet18", "--params", str(REPO / "params.yaml")]


def test_export_stage_on_a_full_disk_is_one_line_and_keeps_the_old_export(export_world, capsys, monkeypatch):
    def full_disk(model, folder, *args):
        (folder / "model.onnx").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.onnx"))

    monkeypatch.setattr(export_stage, "export_bundle", full_disk)
    with pytest.raises(SystemExit) as info:
        export_stage.main(ARGS)
    assert info.value.code == 2
    line = stderr_line(capsys)
    assert line.startswith("error: exports/synthetic/gfl/.gkd_bmfi-resnet18.tmp-")
    assert line.endswith("/model.onnx: No space left on device; free space on the disk being written (df -h shows "
                         "what is left) and run again")
    assert [p.name for p in export_world.parent.iterdir()] == ["gkd_bmfi-resnet18"]   # the temporary is gone
    assert (export_world / "model.onnx").read_text() == "previous"


def test_export_stage_into_a_read_only_folder_is_one_line(export_world, capsys, monkeypatch):
    def read_only(prefix, dir):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / f"{prefix}x"))

    monkeypatch.setattr("pipeline.io.tempfile.mkdtemp", lambda prefix, dir: read_only(prefix, dir))
    monkeypatch.setattr(export_stage, "export_bundle", lambda *a: pytest.fail("no folder to export into"))
    with pytest.raises(SystemExit) as info:
        export_stage.main(ARGS)
    assert info.value.code == 2
    line = stderr_line(capsys)
    assert line.startswith("error: exports/synthetic/gfl/.gkd_bmfi-resnet18.tmp-")
    assert "x: Read-only file system; the file system is mounted read-only: run in a writable copy" in line
    assert (export_world / "model.onnx").read_text() == "previous"


# ------------------------------------------------------------------------------------- DataLoader workers
class Unreadable(Dataset):
    """Every item is a PNG truncated after its header."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise UserError("x.png: cannot read the image (truncated after its header); replace it")


def test_user_error_in_a_dataloader_worker_is_its_own_one_line(capsys):
    @exit_on_user_error
    def read_all() -> None:
        for _ in DataLoader(Unreadable(), batch_size=1, num_workers=2):
            pass

    with pytest.raises(SystemExit) as info:
        read_all()
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: x.png: cannot read the image (truncated after its header); replace it\n"
