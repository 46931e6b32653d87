from prunexplain.config import ReportSettings
from prunexplain.experiments import COMPARE, EXPERIMENTS, RECOGNISE
from prunexplain.report.page import render_section
from prunexplain.report.study import analysis_section, stimuli_section
from prunexplain.runs import Run, write_json


def test_stimuli_are_described_by_the_experiment_spec_and_gone_files_are_named(tmp_path):
    run = Run(tmp_path)
    key = next(k for k, e in EXPERIMENTS.items() if not e.kind.compares)
    file = f"{key}/{RECOGNISE.stimulus_name(0, '0-fish', ('nonpruned',))}"
    write_json(run.study.manifest, {"classes": ["0-fish"], "models": {"nonpruned": {"key": "dense"}},
                                    "experiments": {key: {"kind": RECOGNISE.name}},
                                    "stimuli": [{"experiment": key, "file": file, "image": 0, "label": "0-fish",
                                                 "model": "nonpruned"}]})
    html = render_section(stimuli_section(run, ReportSettings()))
    assert f"<h3>{key}: {RECOGNISE.question}</h3>" in html and "1 stimuli in study/" in html
    assert f'<p class="missing">{file}: file missing</p>' in html


def test_each_kind_of_experiment_gets_its_own_table_and_a_dash_where_values_are_missing(tmp_path):
    run = Run(tmp_path)
    compare = next(k for k, e in EXPERIMENTS.items() if e.kind.compares)
    recognise = next(k for k, e in EXPERIMENTS.items() if not e.kind.compares)
    write_json(run.analysis(compare) / "summary.json",
               {"experiment": COMPARE.name, "pairs": [{"a": "nonpruned", "b": "<b>2pruned</b>", "n": 10}]})
    write_json(run.analysis(recognise) / "summary.json",
               {"experiment": RECOGNISE.name, "models": {"nonpruned": {"n": 5, "accuracy": 0.8}}})
    write_json(run.analysis_source, {recognise: {"source": "real", "files": ["a.csv"]}})
    html = render_section(analysis_section(run, ReportSettings()))
    assert html.index(f"<h3>{compare}:") < html.index(f"<h3>{recognise}:")  # the spec's order
    assert "<td>nonpruned vs &lt;b&gt;2pruned&lt;/b&gt;</td><td>10</td><td>-</td>" in html and "p (Holm)" in html
    assert "<td>nonpruned</td><td>5</td><td>80.0 % (-)</td><td>-</td>" in html
    assert "Source of these answers unknown" in html and "Real participants" in html and "Files: a.csv." in html


def test_the_analysis_shows_the_studys_per_class_views_the_design_check_and_its_chisquares(tmp_path):
    run = Run(tmp_path)
    compare = next(k for k, e in EXPERIMENTS.items() if e.kind.compares)
    recognise = next(k for k, e in EXPERIMENTS.items() if not e.kind.compares)
    pair = {"a": "nonpruned", "b": "2pruned", "n": 250}
    write_json(run.analysis(compare) / "summary.json", {
        "experiment": COMPARE.name, "pairs": [pair],
        "classes": [pair | {"class": "4-church", "a_share_of_all": 0.3, "none_share": 0.312, "b_share_of_all": 0.388,
                            "a_minus_b": -22}],
        "class_of_none": {"4-church": 0.067191},
        "appearance": {"nonpruned": {"left_share": 0.3207, "right_share": 0.346, "share": 2 / 3, "expected": 2 / 3}},
    })
    write_json(run.analysis(recognise) / "summary.json", {
        "experiment": RECOGNISE.name, "models": {"nonpruned": {"n": 250}},
        "classes": [{"class": "3-chainsaw", "model": "nonpruned", "accuracy": 0.66}],
        "classes_pooled": [{"class": "3-chainsaw", "n": 750, "correct": 461, "accuracy": 0.614667}],
        "tests": {"study_chisquare_all": {"models": ["nonpruned", "2pruned"], "observed": [2146, 2160],
                                          "expected": [2146, 2146], "baseline": "nonpruned", "defined": False,
                                          "note": "refused", "legacy_chi2": 6.0415, "legacy_p": 0.04877}},
    })
    html = render_section(analysis_section(run, ReportSettings()))
    assert "<th>nonpruned vs 2pruned</th>" in html
    assert "<td>4-church</td><td>6.7 %</td><td>30.0 / 31.2 / 38.8 % (-22)</td>" in html
    assert "<td>nonpruned</td><td>0.321</td><td>0.346</td><td>0.667</td><td>0.667</td>" in html
    assert "<td>3-chainsaw</td><td>66.0 %</td><td>61.5 % (461/750)</td>" in html
    assert ("<td>nonpruned 2146, 2pruned 2160</td><td>nonpruned 2146</td><td>6.042</td><td>0.0488</td>"
            '<td title="refused">no</td>') in html
