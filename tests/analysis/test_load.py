"""Reading answer files: formats, names from file names, and every kind of bad row reported and left out."""

import csv

import pandas as pd
import pytest

from prunexplain.analysis.load import parse_tables, read_answers, sort_models
from prunexplain.config import AnalysisSettings, UserError
from prunexplain.experiments import KINDS, NONE

EXP1_HEADER = ["HITId", "AssignmentId", "WorkerId", "AssignmentStatus", "WorkTimeInSeconds", "Input.image_url",
               "Answer.algorithms.alg1", "Answer.algorithms.alg2", "Answer.algorithms.none"]
GOOD = [
    ["H1", "A1", "W1", "Submitted", "10", "0_nonpruned_0-fish_2pruned.png", "true", "false", "false"],
    ["H1", "A2", "W2", "Submitted", "12", "0_nonpruned_0-fish_2pruned.png", "false", "true", "false"],
    ["H2", "A3", "W1", "Approved", "8", "https://b.s3.amazonaws.com/x/1_2pruned_1-dog_nonpruned.png", "false", "false",
     "true"],
]


def write(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def exp1(tmp_path, *rows, name="batch.csv", settings=None):
    return read_answers("exp1", [write(tmp_path / name, EXP1_HEADER, [*GOOD, *rows])], settings)


def test_names_from_file_names_and_the_pair_in_model_order(tmp_path):
    answers = exp1(tmp_path)
    frame = answers.frame
    assert answers.files[0].format == "raw" and answers.problems == [] and answers.models == ["nonpruned", "2pruned"]
    assert list(frame["row"]) == [2, 3, 4]  # spreadsheet rows: the header is row 1
    assert list(frame["item"])[2] == "1_2pruned_1-dog_nonpruned.png"  # URL and query stripped to the file name
    assert list(zip(frame["a"], frame["b"])) == [("nonpruned", "2pruned")] * 3
    assert list(frame["preferred"]) == ["nonpruned", "2pruned", "none"]
    assert list(frame["choice"]) == ["a", "b", "none"]
    assert list(frame["work_time"]) == [10, 12, 8]


def test_model_order_puts_the_dense_model_first_then_rates():
    assert sort_models(["32pruned", "x", "2pruned", "nonpruned", "4.5pruned"]) == [
        "nonpruned", "2pruned", "4.5pruned", "32pruned", "x"]


@pytest.mark.parametrize(
    "row, column, message",
    [
        (["H3", "A9", "W3", "Submitted", "5", "2_nonpruned_0-fish_2pruned.png", "false", "false", "false"],
         "Answer.algorithms.*", "no answer"),
        (["H3", "A9", "W3", "Submitted", "5", "2_nonpruned_0-fish_2pruned.png", "true", "false", "true"],
         "Answer.algorithms.*", "several answers: alg1, none"),
        (["H3", "A9", "W3", "Submitted", "5", "2_nonpruned_0-fish_2pruned.png", "maybe", "false", "false"],
         "Answer.algorithms.alg1", "expected true or false, got 'maybe'"),
        (["H3", "A9", "W3", "Submitted", "5", "2_nonpruned_0-fish_4pruned_x.png", "true", "false", "false"],
         "Input.image_url", "'2_nonpruned_0-fish_4pruned_x.png' does not follow {i}_{left}_{classlabel}_{right}.png"),
        (["H3", "A9", "W3", "Submitted", "5", "2_nonpruned_0-fish_dense.png", "true", "false", "false"],
         "Input.image_url", "unknown model 'dense' (known: 'nonpruned' or '<rate>pruned', e.g. 2pruned)"),
        (["H3", "A9", "W3", "Submitted", "5", "2_2pruned_0-fish_2pruned.png", "true", "false", "false"],
         "Input.image_url", "the same model '2pruned' on both sides"),
        (["H3", "A9", "W3", "Rejected", "5", "2_nonpruned_0-fish_2pruned.png", "true", "false", "false"],
         "AssignmentStatus", "rejected assignment"),
        (["H3", "A9", "", "Submitted", "5", "2_nonpruned_0-fish_2pruned.png", "true", "false", "false"],
         "WorkerId", "empty"),
        (["H3", "A1", "W3", "Submitted", "5", "2_nonpruned_0-fish_2pruned.png", "true", "false", "false"],
         "AssignmentId", "duplicated assignment (same AssignmentId as batch.csv row 2)"),
        (["H1", "A9", "W2", "Submitted", "5", "0_nonpruned_0-fish_2pruned.png", "true", "false", "false"],
         "WorkerId", "duplicated assignment (same worker in the same HIT as batch.csv row 3)"),
    ],
)
def test_a_bad_row_is_reported_with_file_row_column_and_left_out(tmp_path, row, column, message):
    message = message.replace("batch.csv", str(tmp_path / "batch.csv"))
    answers = exp1(tmp_path, row)
    assert len(answers.frame) == 3 and answers.left_out == 1
    [problem] = answers.problems
    assert (problem.row, problem.column, problem.message) == (5, column, message)
    assert str(problem) == f"{tmp_path / 'batch.csv'}, row 5, column {column}: {message}"


def test_known_models_can_be_given(tmp_path):
    row = ["H3", "A9", "W3", "Submitted", "5", "2_nonpruned_0-fish_dense.png", "true", "false", "false"]
    answers = exp1(tmp_path, row, settings=AnalysisSettings(models=["nonpruned", "2pruned", "dense"]))
    assert answers.problems == [] and answers.models == ["nonpruned", "2pruned", "dense"]
    with pytest.raises(UserError, match=r"no valid answers left \(3 problems; first: .*row 2, column Input.image_url: "
                                         r"unknown model '2pruned' \(known: nonpruned\)"):
        exp1(tmp_path, settings=AnalysisSettings(models=["nonpruned"]))


def test_repeated_items_in_other_hits(tmp_path):
    again = ["H9", "A9", "W1", "Submitted", "5", "0_nonpruned_0-fish_2pruned.png", "false", "false", "true"]
    kept = exp1(tmp_path, again)
    assert len(kept.frame) == 4 and kept.repeated == 1 and kept.problems == []
    first = exp1(tmp_path, again, settings=AnalysisSettings(repeated_items="first"))
    assert len(first.frame) == 3 and [p.row for p in first.problems] == [5]
    dropped = exp1(tmp_path, again, settings=AnalysisSettings(repeated_items="drop"))
    assert len(dropped.frame) == 2 and sorted(p.row for p in dropped.problems) == [2, 5]


def test_two_files_are_joined_and_the_same_batch_twice_is_counted_once(tmp_path):
    one = write(tmp_path / "a.csv", EXP1_HEADER, GOOD)
    two = write(tmp_path / "b.csv", EXP1_HEADER, GOOD[:1])
    answers = read_answers("exp1", [one, two])
    assert len(answers.frame) == 3 and [(s.rows, s.kept) for s in answers.files] == [(3, 3), (1, 0)]
    assert str(answers.problems[0]) == (
        f"{two}, row 2, column AssignmentId: duplicated assignment (same AssignmentId as {one} row 2)")


def test_preprocessed_columns_must_agree_with_the_answers(tmp_path):
    header = ["HITId", "WorkerId", "Input.image_url", "Answer.algorithms.alg1", "Answer.algorithms.alg2",
              "Answer.algorithms.none", "img_id", "img_class", "alg1", "alg2", "nonpruned", "2pruned",
              "annotation_result"]
    rows = [["H1", "W1", "0_nonpruned_0-fish_2pruned.png", "True", "False", "False", "0", "0-fish", "nonpruned",
             "2pruned", "1.0", "0.0", "alg1"],
            ["H1", "W2", "0_nonpruned_0-fish_2pruned.png", "False", "True", "False", "0", "0-fish", "nonpruned",
             "2pruned", "1.0", "0.0", "alg1"]]
    answers = read_answers("exp1", [write(tmp_path / "p.csv", header, rows)])
    assert answers.files[0].format == "preprocessed" and len(answers.frame) == 1
    assert [(p.row, p.column) for p in answers.problems] == [(3, "annotation_result"), (3, "nonpruned"), (3, "2pruned")]
    assert answers.problems[0].message == "says 'alg1', the answer/file name say 'alg2'"


def test_experiment2_rows(tmp_path):
    header = ["HITId", "WorkerId", "Input.image_url", "Answer.classes.0-fish", "Answer.classes.1-dog",
              "Answer.classes.none"]
    rows = [["H1", "W1", "3_0-fish_nonpruned.png", "true", "false", "false"],
            ["H1", "W2", "3_0-fish_nonpruned.png", "false", "false", "true"],
            ["H2", "W1", "4_2-cat_32pruned.png", "true", "false", "false"]]
    answers = read_answers("exp2", [write(tmp_path / "e2.csv", header, rows)])
    assert answers.files[0].format == "export" and answers.labels == ["0-fish", "1-dog"]
    assert list(answers.frame["correct"]) == [True, False] and list(answers.frame["answer"]) == ["0-fish", "none"]
    assert str(answers.problems[0]).endswith(
        "row 4, column Input.image_url: class '2-cat' has no Answer.classes.2-cat column")


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (["HITId", "WorkerId", "Input.image_url", "Answer.algorithms.alg1"], [],
         "missing column(s) Answer.algorithms.alg2, Answer.algorithms.none (is this an MTurk batch-results file?)"),
        (["HITId", "WorkerId", "Input.image_url", "Answer.classes.0-fish", "Answer.classes.none"], [],
         "has Answer.classes.* columns: these are exp2 results, use `prunexplain analyze exp2`"),
        (EXP1_HEADER, [["H1", "A1", "W1", "Submitted", "1", "0_0-fish_nonpruned.png", "true", "false", "false"]],
         "column Input.image_url: file names follow {i}_{classlabel}_{model}.png (exp2), not "
         "{i}_{left}_{classlabel}_{right}.png; use `prunexplain analyze exp2`"),
        (EXP1_HEADER, [["H1", "A1", "W1", "Submitted", "1", "0_nonpruned_0-fish_2pruned.png", "", "", ""]],
         "no valid answers left (1 problems; first: "),
    ],
)
def test_unusable_files_are_one_line_user_errors(tmp_path, header, rows, message):
    path = write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(UserError) as error:
        read_answers("exp1", [path])
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_answers("exp1", [tmp_path / "nope.csv"])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="empty file"):
        read_answers("exp1", [tmp_path / "empty.csv"])
    with pytest.raises(UserError, match="unknown experiment 'exp3'"):
        parse_tables("exp3", [])


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
@pytest.mark.parametrize("layout", ["true/false columns", "classifier label column"])
def test_every_kind_of_the_spec_reads_the_names_and_columns_the_spec_writes(kind, layout):
    """A kind in the spec is analysed through it: stimulus names made by its scheme, answers in its
    columns (or one crowd-classifier `Answer.<group>.label` column) come back as models, labels, answers."""
    classes = ["0-fish", "1-dog"]
    models = [("nonpruned", "2pruned"), ("32pruned", "nonpruned")] if kind.compares else [("nonpruned",), ("4pruned",)]
    rows = [{"HITId": f"H{i}", "WorkerId": f"W{worker}", "label": classes[i], "shown": shown, "answer": answer,
             "Input.image_url": "https://b.example/x/" + kind.stimulus_name(i, classes[i], shown)}
            for i, shown in enumerate(models) for worker, answer in enumerate(kind.options(classes))]
    table = pd.DataFrame(rows)
    if layout == "classifier label column":
        table[kind.prefix + "label"] = table["answer"]
    else:
        for option, column in zip(kind.options(classes), kind.columns(classes)):
            table[column] = (table["answer"] == option).map({True: "true", False: "false"})
    answers = parse_tables(kind.name, [("spec.csv", table.drop(columns=["label", "shown", "answer"]))])
    frame = answers.frame
    assert answers.problems == [] and answers.kind is kind and len(frame) == len(rows)
    assert list(frame["answer"]) == [r["answer"] for r in rows] and list(frame["label"]) == [r["label"] for r in rows]
    for position, column in enumerate(kind.shows):
        assert list(frame[column]) == [r["shown"][position] for r in rows]
    assert sorted(answers.models) == sorted({model for shown in models for model in shown})
    if kind.compares:  # an option that picks a side prefers the model shown there
        for option in kind.fixed_options:
            chosen = frame[frame["answer"] == option.value]
            assert len(chosen) == 2 and (chosen["preferred"] == (chosen[option.picks] if option.picks else NONE)).all()
    else:
        assert answers.labels == classes and list(frame["correct"]) == [r["answer"] == r["label"] for r in rows]
