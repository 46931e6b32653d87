"""Bad inputs a new user meets: a full disk, a read-only run folder, an output path that is a file.

Each becomes one line naming the path (exit status 2 from the CLI), the previous file is kept and no
temp file is left behind. As root, chmod stops no write, so the storage errors are injected where
the atomic write meets the file system (tempfile.mkstemp, os.fsync, os.replace).
"""

import errno
import json
import os
import tempfile

import pytest
from typer.testing import CliRunner

from prunexplain import runs
from prunexplain.cli import app
from prunexplain.config import UserError
from prunexplain.explain.stage import explain_stage, explained_images
from prunexplain.models import build_model, save_checkpoint
from prunexplain.runs import Run, write_json, write_text
from tests.conftest import tiny_settings

runner = CliRunner()


def _fail_with(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_rename_keeps_the_previous_file_and_no_temp_file(tmp_path, monkeypatch, code):
    path = write_json(tmp_path / "result.json", {"accuracy": 0.9})
    monkeypatch.setattr(runs.os, "replace", _fail_with(code))
    with pytest.raises(UserError) as error:
        write_json(path, {"accuracy": 0.1})
    assert str(error.value) == f"{path}: cannot write ({os.strerror(code)}); the previous file is kept"
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert _leftovers(tmp_path) == []


def test_a_disk_that_fills_while_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_text(tmp_path / "table.csv", "a,b\n1,2\n")
    monkeypatch.setattr(runs.os, "fsync", _fail_with(errno.ENOSPC))
    expected = r"table.csv: cannot write \(No space left on device\); the previous file is kept"
    with pytest.raises(UserError, match=expected):
        write_text(path, "a,b\n3,4\n")
    assert path.read_text() == "a,b\n1,2\n" and _leftovers(tmp_path) == []


def test_a_read_only_folder_names_the_file_that_was_not_written(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "mkstemp", _fail_with(errno.EROFS))
    path = tmp_path / "train" / "result.json"
    with pytest.raises(UserError) as error:
        write_json(path, {})
    assert str(error.value) == f"{path}: cannot write (Read-only file system); nothing was written there"
    assert not path.exists() and _leftovers(path.parent) == []


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.os, "replace", _fail_with(errno.EIO))
    with pytest.raises(OSError):
        write_json(tmp_path / "x.json", {})
    assert _leftovers(tmp_path) == []


def _answers(tmp_path):
    result = runner.invoke(app, ["study", "simulate", "--images", "10", "--workers", "10", "--no-power",
                                 "--out", str(tmp_path / "sim")])
    assert result.exit_code == 0, result.output
    return tmp_path / "sim" / "exp1_results.csv"


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_analyze_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    answers = _answers(tmp_path)
    out = tmp_path / "analysis"
    monkeypatch.setattr(runs.os, "replace", _fail_with(errno.ENOSPC))
    line = _one_error_line(runner.invoke(app, ["analyze", "exp1", str(answers), "--out", str(out), "--no-plots",
                                               "--bootstrap", "0"]))
    assert str(out) in line and "No space left on device" in line
    assert _leftovers(out) == []


def test_analyze_into_a_file_is_one_line_before_any_work(tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text("not read: the output is refused first\n")
    out = tmp_path / "summary.txt"
    out.write_text("keep me")
    line = _one_error_line(runner.invoke(app, ["analyze", "exp1", str(answers), "--out", str(out)]))
    assert f"{out}: it is a file" in line
    nested = out / "inner"
    line = _one_error_line(runner.invoke(app, ["analyze", "exp2", str(answers), "--out", str(nested)]))
    assert f"{nested}: {out} is a file" in line
    assert out.read_text() == "keep me"


def test_a_checkpoint_made_for_other_classes_is_refused(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, "explain.images=2")
    run = Run(settings.run_dir)
    five = [f"{i}-class" for i in range(5)]
    save_checkpoint(run.dense_checkpoint, build_model(5, settings.model), settings.model, 5,
                    meta={"classes": five, "data": {"image_size": 32, "normalize": False}})
    with pytest.raises(UserError, match=r"model.pt: made for 5 classes .*the run's data has 10"):
        explain_stage(settings, run)
    assert not run.explained_images.exists()


def test_more_explained_images_than_the_test_split_holds_is_one_line(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, "explain.images=5000")
    with pytest.raises(UserError, match=r"explain.images=5000: the test split has only \d+ images"):
        explained_images(settings, Run(settings.run_dir))
