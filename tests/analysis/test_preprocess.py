"""The study's preprocessed table and the per-item table, written from answers this test builds."""

import csv

import pandas as pd
import pytest

from prunexplain.analysis import stats
from prunexplain.analysis.load import read_answers
from prunexplain.analysis.preprocess import preprocessed_table, write_preprocessed
from prunexplain.analysis.stage import analyze
from prunexplain.config import AnalysisSettings, UserError
from prunexplain.runs import AnalysisFolder

RAW1 = ["HITId", "AssignmentId", "WorkerId", "AssignmentStatus", "Input.image_url", "Answer.algorithms.alg1",
        "Answer.algorithms.alg2", "Answer.algorithms.none"]
ROWS1 = [
    ["H1", "A1", "W1", "Submitted", "https://b.example/x/0_2pruned_0-fish_nonpruned.png", "true", "false", "false"],
    ["H1", "A2", "W2", "Submitted", "https://b.example/x/0_2pruned_0-fish_nonpruned.png", "false", "true", "false"],
    ["H1", "A3", "W3", "Rejected", "https://b.example/x/0_2pruned_0-fish_nonpruned.png", "false", "true", "false"],
    ["H2", "A4", "W1", "Submitted", "https://b.example/x/7_nonpruned_1-dog_32pruned.png", "false", "false", "true"],
]
RAW2 = ["HITId", "WorkerId", "Input.image_url", "Answer.classes.0-fish", "Answer.classes.1-dog", "Answer.classes.none"]
ROWS2 = [["H1", "W1", "3_0-fish_nonpruned.png", "true", "false", "false"],
         ["H1", "W2", "3_0-fish_nonpruned.png", "false", "true", "false"],
         ["H2", "W1", "4_1-dog_2pruned.png", "false", "false", "true"]]


def write(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_experiment1_table_has_the_notebooks_columns_and_values_of_the_kept_answers(tmp_path):
    answers = read_answers("exp1", [write(tmp_path / "raw.csv", RAW1, ROWS1)])
    out = write_preprocessed(answers, tmp_path / "pre.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == ("HITId,WorkerId,Input.image_url,Answer.algorithms.alg1,Answer.algorithms.alg2,"
                        "Answer.algorithms.none,img_id,img_class,alg1,alg2,nonpruned,2pruned,32pruned,annotation_result")
    assert lines[1:] == [  # the rejected assignment is left out; the URL is kept as the file has it
        "H1,W1,https://b.example/x/0_2pruned_0-fish_nonpruned.png,True,False,False,0,0-fish,2pruned,nonpruned,"
        "0.0,1.0,0.0,alg1",
        "H1,W2,https://b.example/x/0_2pruned_0-fish_nonpruned.png,False,True,False,0,0-fish,2pruned,nonpruned,"
        "1.0,0.0,0.0,alg2",
        "H2,W1,https://b.example/x/7_nonpruned_1-dog_32pruned.png,False,False,True,7,1-dog,nonpruned,32pruned,"
        "0.0,0.0,0.0,none",
    ]
    again = read_answers("exp1", [out])  # and reads back as a preprocessed file whose derived columns agree
    assert again.files[0].format == "preprocessed" and again.problems == []
    assert again.frame[["item", "answer", "preferred"]].equals(answers.frame[["item", "answer", "preferred"]])


def test_experiment2_table_adds_correct_and_the_answer_last(tmp_path):
    answers = read_answers("exp2", [write(tmp_path / "raw.csv", RAW2, ROWS2)])
    table = preprocessed_table(answers)
    assert list(table.columns) == [*RAW2, "img_id", "img_class", "algorithm", "correct", "img_answer"]
    assert table["correct"].tolist() == [1.0, 0.0, 0.0] and table["img_answer"].tolist() == ["0-fish", "1-dog", "none"]
    assert table["Answer.classes.none"].tolist() == [False, False, True]
    written = pd.read_csv(write_preprocessed(answers, tmp_path / "pre.csv"))
    assert written["algorithm"].tolist() == ["nonpruned", "nonpruned", "2pruned"] and written["img_id"].dtype == int
    assert read_answers("exp2", [tmp_path / "pre.csv"]).problems == []


def test_a_folder_is_no_preprocessed_file(tmp_path):
    answers = read_answers("exp2", [write(tmp_path / "raw.csv", RAW2, ROWS2)])
    with pytest.raises(UserError, match="is a folder; --preprocessed takes a CSV file name"):
        write_preprocessed(answers, tmp_path)
    with pytest.raises(UserError, match="is a folder"):  # refused before any work is done
        analyze("exp2", [tmp_path / "raw.csv"], AnalysisSettings(plots=False), tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_item_table_counts_each_option_per_stimulus_in_class_and_image_order(tmp_path):
    answers = read_answers("exp2", [write(tmp_path / "raw.csv", RAW2, ROWS2)])
    result = analyze("exp2", [tmp_path / "raw.csv"], AnalysisSettings(plots=False, bootstrap=0), tmp_path / "a")
    assert AnalysisFolder(tmp_path / "a").items in result.written
    items = pd.read_csv(AnalysisFolder(tmp_path / "a").items)
    assert items.to_dict("records") == [
        {"item": "3_0-fish_nonpruned.png", "image": 3, "label": "0-fish", "model": "nonpruned", "answers": 2,
         "0-fish": 1, "1-dog": 1, "none": 0, "correct": 1},
        {"item": "4_1-dog_2pruned.png", "image": 4, "label": "1-dog", "model": "2pruned", "answers": 1,
         "0-fish": 0, "1-dog": 0, "none": 1, "correct": 0},
    ]
    compare = read_answers("exp1", [write(tmp_path / "raw1.csv", RAW1, ROWS1)])
    table = stats.item_table(compare.frame, ("left", "right"), ["alg1", "alg2", "none"], compare.labels)
    assert table[["left", "right", "answers", "alg1", "alg2", "none"]].values.tolist() == [
        ["2pruned", "nonpruned", 2, 1, 1, 0], ["nonpruned", "32pruned", 1, 0, 0, 1]]
    assert len(answers.frame) == 3
