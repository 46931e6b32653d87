"""The people's side of the verdict, on constructed answers: recognition and preference lines, agreement."""

import numpy as np

from prunexplain.config import VerdictSettings
from prunexplain.runs import AnalysisFolder, Run, write_csv, write_json
from prunexplain.verdict.human import agreement, human_lines
from prunexplain.verdict.stats import compare

METHOD = "local_magnitude_unstructured"
MODELS = {"nonpruned": "dense", "2pruned": f"{METHOD}/cr_2", "8pruned": f"{METHOD}/cr_8"}
IMAGES = 80


def _study(run: Run, source: str = "simulated") -> None:
    """A manifest naming the study's models and the analysed answers of both experiments: at 2x people
    recognise as many images on average (one more on every fourth image, one fewer on another) and prefer
    neither map; at 8x they recognise 40 points fewer and prefer the dense model's map in 3 of 5 answers."""
    write_json(run.study.manifest, {"models": {name: {"key": key} for name, key in MODELS.items()}, "settings": {}})
    write_json(run.analysis_source, {"exp1": {"kind": "exp1", "source": source, "files": []},
                                     "exp2": {"kind": "exp2", "source": source, "files": []}})
    recognised = {"nonpruned": 4, "2pruned": 4, "8pruned": 2}  # of 5 answers
    wobble = {0: 1, 2: -1}  # 2x: one more on images 0, 4, 8, ..., one fewer on 2, 6, 10, ...
    exp2 = [{"item": f"{i}_{name}", "image": i, "label": "a", "model": name, "answers": 5,
             "correct": right + wobble.get(i % 4, 0) * (name == "2pruned")}
            for i in range(IMAGES) for name, right in recognised.items()]
    write_csv(AnalysisFolder(run.analysis("exp2")).items, exp2)
    exp1 = []
    for i in range(IMAGES):
        for pruned, (for_pruned, for_dense) in (("2pruned", (2, 2)), ("8pruned", (0, 3))):
            left, right = (pruned, "nonpruned") if i % 2 else ("nonpruned", pruned)  # sides alternate
            alg1, alg2 = (for_pruned, for_dense) if left == pruned else (for_dense, for_pruned)
            exp1.append({"item": f"{i}_{left}_{right}", "image": i, "label": "a", "left": left, "right": right,
                         "answers": 5, "alg1": alg1, "alg2": alg2, "none": 5 - alg1 - alg2})
    write_csv(AnalysisFolder(run.analysis("exp1")).items, exp1)


def test_people_who_recognise_less_or_prefer_the_dense_map_break_the_line_there(tmp_path):
    run = Run(tmp_path)
    _study(run)
    lines = {person.experiment: person for person in human_lines(run, VerdictSettings(resamples=500), {})}
    recognition, preference = lines["exp2"].line, lines["exp1"].line
    assert lines["exp2"].source == "simulated" and lines["exp2"].method == METHOD
    assert recognition.measure == "people exp2 recognition" and recognition.margin == 0.05
    assert [c.rate for c in recognition.comparisons] == [2.0, 8.0]
    assert recognition.holds_to == 2.0 and recognition.breaks_at.rate == 8.0
    assert [round(c.difference, 6) for c in recognition.comparisons] == [0, -0.4]
    assert recognition.comparisons[0].ci_low < -0.02  # the wobble is uncertainty, not a difference
    assert preference.holds_to == 2.0 and preference.breaks_at.rate == 8.0
    assert [round(c.difference, 6) for c in preference.comparisons] == [0, -0.6]


def test_a_collapsed_model_never_holds_for_people_either(tmp_path):
    run = Run(tmp_path)
    _study(run)
    lines = human_lines(run, VerdictSettings(resamples=500), {METHOD: [2.0, 8.0]})
    assert all(person.line.holds_to is None for person in lines)


def test_a_measure_without_margin_is_not_judged_and_no_study_gives_no_lines(tmp_path):
    run = Run(tmp_path)
    assert human_lines(run, VerdictSettings(), {}) == []
    _study(run)
    only = human_lines(run, VerdictSettings(resamples=500, human_margins={"preference": 0.1}), {})
    assert [person.experiment for person in only] == ["exp1"]


def test_agreement_counts_the_rates_on_which_a_measure_decides_as_the_people(tmp_path):
    run = Run(tmp_path)
    _study(run)
    person = next(p for p in human_lines(run, VerdictSettings(resamples=500), {}) if p.experiment == "exp1")
    flat = [np.full(30, 0.0)]
    falls = [np.full(30, -0.5)]
    automatic = {METHOD: {
        "alike": compare("alike", {2.0: flat, 4.0: flat, 8.0: falls}, 0.05, set(), resamples=200),
        "never breaks": compare("never breaks", {2.0: flat, 8.0: flat}, 0.05, set(), resamples=200),
        "other rates": compare("other rates", {4.0: flat}, 0.05, set(), resamples=200),
    }}
    rows = {row["measure"]: row for row in agreement([person], automatic)}
    assert set(rows) == {"alike", "never breaks"}  # a line without the study's rates is not compared
    assert rows["alike"]["agree"] == 2 and rows["alike"]["of"] == 2 and rows["alike"]["same_breaking_point"]
    assert rows["never breaks"]["agree"] == 1 and not rows["never breaks"]["same_breaking_point"]
