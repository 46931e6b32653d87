import json
import os
import signal
import subprocess
import sys

import pytest

from prunexplain.errors import UserError
from prunexplain.runs import KILL_AFTER, ModelKey, Run, append_json_array, atomic_open, write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(path) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_appended_results_stay_one_valid_json_array(tmp_path):
    path = tmp_path / "results.json"
    append_json_array(path, {"run": "a"})
    append_json_array(path, {"run": "b"})
    assert json.loads(path.read_text()) == [{"run": "a"}, {"run": "b"}]


def test_done_marker_matches_only_its_fingerprint(tmp_path):
    run = Run(tmp_path)
    assert not run.is_done("train", "abc")
    run.mark_done("train", "abc")
    assert run.is_done("train", "abc") and not run.is_done("train", "abd")
    run.clear_done("train")
    assert not run.is_done("train", "abc")


def test_done_marker_holds_while_the_outputs_are_the_ones_recorded(tmp_path):
    run = Run(tmp_path)
    run.dense_checkpoint.parent.mkdir(parents=True)
    run.dense_checkpoint.write_bytes(b"weights")
    run.mark_done("train", "abc", {"train": {"epochs": 3}})
    assert run.is_done("train", "abc") and run.record("train")["settings"] == {"train": {"epochs": 3}}
    assert list(run.record("train")["outputs"]) == ["train/model.pt"]
    run.dense_checkpoint.write_bytes(b"other weights")  # replaced behind the run's back
    assert not run.is_done("train", "abc")


def test_model_keys_have_one_format_and_one_parser():
    for text in ("dense", "local_magnitude_unstructured/cr_2", "global_magnitude_unstructured/cr_1.5"):
        assert str(ModelKey.parse(text)) == text
    assert ModelKey.parse("m/cr_32") == ModelKey.pruned("m", 32) and ModelKey.parse("m/cr_32").rate == 32.0
    assert ModelKey.parse("dense").dense and ModelKey().parts == ("dense",)
    for bad in ("", "m", "m/32", "m/cr_1", "m/cr_0.5", "../cr_2", "m/cr_inf", "m/cr_nan", "a/b/cr_2", "m/cr_2/x"):
        with pytest.raises(UserError, match="is not a model of a run"):
            ModelKey.parse(bad)
    for rate in (1.0, float("inf"), float("nan")):
        with pytest.raises(UserError, match="finite number > 1"):
            ModelKey.pruned("m", rate)


def test_the_runs_models_are_listed_dense_first_then_by_method_and_rate(tmp_path):
    run = Run(tmp_path)
    keys = [ModelKey.pruned("b", 16), ModelKey.pruned("a", 2), ModelKey(), ModelKey.pruned("b", 2),
            ModelKey.pruned("b", 1.5)]
    for key in keys:
        run.checkpoint(key).parent.mkdir(parents=True, exist_ok=True)
        run.checkpoint(key).write_bytes(b"")
    (tmp_path / "prune" / "b" / "cr_x").mkdir()  # not a model folder
    assert [str(k) for k in run.models()] == ["dense", "a/cr_2", "b/cr_1.5", "b/cr_2", "b/cr_16"]
    run.explain_dir(ModelKey.pruned("b", 16)).mkdir(parents=True)
    moved = run.retire(ModelKey.pruned("b", 16), stamp="t")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in moved) == ["retired/t/explain/b/cr_16",
                                                                         "retired/t/prune/b/cr_16"]
    assert ModelKey.pruned("b", 16) not in run.models()


def test_a_fault_point_kills_the_process_only_where_it_is_named(tmp_path):
    code = ("from prunexplain.runs import fault_point\n"
            "fault_point('stage:a')\nprint('passed a')\nfault_point('stage:b')\n")
    done = subprocess.run([sys.executable, "-c", code + "print('passed b')"], capture_output=True, text=True,
                          env={**os.environ, KILL_AFTER: "stage:b"})
    assert done.returncode == -signal.SIGKILL and done.stdout == "passed a\n"


def test_a_rate_with_many_digits_reads_back_from_its_folder_as_itself():
    """A 10 % sparsity is the rate 1/0.9: its folder must not round it to another rate."""
    for rate in (2.0, 1.25, 1 / 0.9, 1 / 0.3):
        key = ModelKey.pruned("global_magnitude_unstructured", rate)
        assert ModelKey.parse(str(key)) == key
    assert ModelKey.pruned("m", 2.0).rate_folder == "cr_2" and ModelKey.pruned("m", 1.25).rate_folder == "cr_1.25"
