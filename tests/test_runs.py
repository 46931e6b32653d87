import json

import pytest

from prunexplain.runs import Run, append_json_array, atomic_open, write_json


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
