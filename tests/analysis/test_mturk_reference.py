"""The published MTurk results (../shared/reference/mturk) come out exactly; skipped where absent."""

import json

import pytest

from prunexplain.analysis.load import read_answers
from prunexplain.analysis.stage import analyze, summarise
from prunexplain.config import AnalysisSettings

MTURK = __import__("pathlib").Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "mturk"
pytestmark = pytest.mark.skipif(not MTURK.is_dir(), reason="../shared/reference/mturk is absent")

OCCLUSION = MTURK / "experiment1-explanationmaps-preprocessed.csv"
HEATMAPS_RAW = MTURK / "experiment1-heatmaps-raw-batch-results.csv"
HEATMAPS = MTURK / "experiment1-heatmaps-preprocessed.csv"
EXP2 = MTURK / "experiment2-whatsontheimage-preprocessed.csv"
QUICK = AnalysisSettings(bootstrap=0, plots=False)


def _pairs(summary):
    return {(p["a"], p["b"]): p for p in summary["pairs"]}


def test_experiment2_correct_answers_per_model_and_none():
    summary = summarise(read_answers("exp2", [EXP2]), QUICK)
    models = summary["models"]
    assert {m: (v["n"], v["correct"]) for m, v in models.items()} == {
        "nonpruned": (2500, 2146), "2pruned": (2500, 2160), "32pruned": (2500, 2033)
    }
    assert summary["none"] == 824 and summary["answers"] == 7500 and summary["validation"]["left_out"] == 0
    assert summary["krippendorff_alpha"] == pytest.approx(0.7782570935, abs=1e-9)
    study = summary["tests"]["study_chisquare"]  # current scipy refuses it; the study's value is kept
    assert study["defined"] is False and study["chi2"] is None and "4193 != expected sum 4292" in study["note"]
    assert study["legacy_chi2"] == pytest.approx(6.041472506989748) and study["legacy_p"] == pytest.approx(0.013973624)
    assert summary["tests"]["cochran_q"]["images"] == 500


def test_experiment1_occlusion_maps_2500_tasks_per_pair_and_the_studys_tests():
    summary = summarise(read_answers("exp1", [OCCLUSION]), QUICK)
    pairs = _pairs(summary)
    assert [p["n"] for p in pairs.values()] == [2500, 2500, 2500]
    # the study's notebook: chisquare([636, 521]) = 11.43, ([997, 843]) = 12.89, ([1082, 876]) = 21.67
    expected = {("nonpruned", "2pruned"): (521, 636, 1343, 11.430423509075194, 0.0007225121524713656),
                ("nonpruned", "32pruned"): (997, 843, 660, 12.889130434782608, 0.00033049594935793524),
                ("2pruned", "32pruned"): (1082, 876, 542, 21.673135852911134, 3.232871431540655e-06)}
    for key, (a, b, none, chi2, p) in expected.items():
        row = pairs[key]
        assert (row["a_preferred"], row["b_preferred"], row["none"]) == (a, b, none)
        assert row["chi2"] == pytest.approx(chi2) and row["p"] == pytest.approx(p)
    assert summary["none"] == 2545 and summary["none_share"] == pytest.approx(0.339333, abs=1e-6)
    assert summary["krippendorff_alpha"] == pytest.approx(0.23585289563692424, abs=1e-12)  # the study's simpledorff
    assert summary["validation"]["repeated_items"] == 6


def test_experiment1_heatmaps_from_the_raw_batch_file():
    answers = read_answers("exp1", [HEATMAPS_RAW])
    assert answers.files[0].format == "raw" and not answers.problems
    summary = summarise(answers, QUICK)
    assert summary["answers"] == 5000 and summary["none"] == 1296 and summary["hits"] == 2000
    assert summary["items"] == 1000 and summary["workers"] == 217
    two = _pairs(summary)[("nonpruned", "2pruned")]
    assert (two["a_preferred"], two["b_preferred"], two["none"]) == (715, 818, 967)
    assert two["chi2"] == pytest.approx(6.920417482061318)
    pairs = _pairs(summary)
    assert pairs[("nonpruned", "32pruned")]["chi2"] == pytest.approx(7.197144173192077)
    assert summary["krippendorff_alpha"] == pytest.approx(0.12591366696173134, abs=1e-12)
    assert summary["per_worker"]["median_work_time"] == 15.0


def test_raw_and_preprocessed_heatmap_files_give_the_same_answers():
    raw, pre = read_answers("exp1", [HEATMAPS_RAW]), read_answers("exp1", [HEATMAPS])
    columns = ["hit", "worker", "item", "answer", "preferred"]
    assert pre.files[0].format == "preprocessed" and not pre.problems
    assert raw.frame[columns].equals(pre.frame[columns])


def test_repeated_items_policy_changes_the_count_and_says_so():
    answers = read_answers("exp1", [HEATMAPS_RAW], AnalysisSettings(repeated_items="first"))
    assert len(answers.frame) == 4970 and answers.left_out == 30
    assert all("another HIT" in p.message and p.column == "WorkerId" for p in answers.problems)


def test_analyze_writes_the_summary_schema(tmp_path):
    result = analyze("exp2", [EXP2], AnalysisSettings(bootstrap=20, plots=False), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["models"]["2pruned"]["correct"] == 2160 and summary["krippendorff_alpha_ci"][0] < 0.778
    assert "| 32pruned | 2500 | 2033 |" in result.markdown and "not defined" in result.markdown
