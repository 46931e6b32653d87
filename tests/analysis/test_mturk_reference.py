"""The published MTurk results (../shared/reference/mturk) come out exactly; skipped where absent."""

import json

import pandas as pd
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


# --- the notebook's other numbers (experiments_results.ipynb), through `prunexplain analyze` ----------------------

CLASSES = ["0-fish", "1-dog", "2-cassetteplayer", "3-chainsaw", "4-church", "5-frenchhorn", "6-garbagetruck",
           "7-gaspump", "8-golfball", "9-parachute"]


def _by_class(*values):
    return dict(zip(CLASSES, values))


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run `prunexplain analyze <experiment> FILE --preprocessed <folder>/preprocessed.csv` once per
    file: (output, summary.json, folder)."""
    from typer.testing import CliRunner

    from prunexplain.cli import app

    done = {}

    def run(experiment, path):
        if (experiment, path) not in done:
            out = tmp_path_factory.mktemp(experiment)
            result = CliRunner().invoke(app, ["analyze", experiment, str(path), "-o", str(out / "analysis"),
                                              "--bootstrap", "0", "--no-plots", "--preprocessed",
                                              str(out / "preprocessed.csv")])
            assert result.exit_code == 0, result.output
            done[(experiment, path)] = (result.output, json.loads((out / "analysis" / "summary.json").read_text()), out)
        return done[(experiment, path)]

    return run


def _classes(summary, a, b):
    return {r["class"]: r for r in summary["classes"] if (r["a"], r["b"]) == (a, b)}


def _check_pair(summary, a, b, a_shares, b_shares, none_shares, a_minus_b):
    rows = _classes(summary, a, b)
    assert {c: r["n"] for c, r in rows.items()} == _by_class(*[250] * 10)  # the notebook's "/ 250"
    for key, expected in (("a_share_of_all", a_shares), ("b_share_of_all", b_shares), ("none_share", none_shares)):
        assert {c: r[key] for c, r in rows.items()} == pytest.approx(_by_class(*expected), abs=1e-12), key
    assert {c: r["a_minus_b"] for c, r in rows.items()} == _by_class(*a_minus_b)


def test_experiment2_pooled_per_class_accuracy_confusion_and_the_three_model_chisquare(cli):
    output, summary, _ = cli("exp2", EXP2)
    pooled = {r["class"]: r for r in summary["classes_pooled"]}
    assert {c: r["n"] for c, r in pooled.items()} == _by_class(*[750] * 10)  # cell 89
    assert {c: r["accuracy"] for c, r in pooled.items()} == pytest.approx(_by_class(  # cell 94: correct / 750
        0.866667, 0.937333, 0.798667, 0.614667, 0.886667, 0.941333, 0.861333, 0.792000, 0.936000, 0.817333), abs=1e-6)
    confusion = summary["confusion"]
    assert confusion["columns"] == [*CLASSES, "none"] and [sum(row) for row in confusion["pooled"]] == [750] * 10
    assert [confusion["pooled"][i][i] for i in range(10)] == [pooled[c]["correct"] for c in CLASSES]
    assert sum(row[-1] for row in confusion["pooled"]) == 824  # cell 90: 'none' 824 times
    assert confusion["pooled"] == [[sum(m) for m in zip(*rows)] for rows in zip(*confusion["models"].values())]
    every = summary["tests"]["study_chisquare_all"]  # cell 119: chisquare([2160, 2033, 2146], [2146] * 3)
    assert every["models"] == ["nonpruned", "2pruned", "32pruned"] and every["expected"] == [2146] * 3
    assert every["defined"] is False and every["legacy_chi2"] == pytest.approx(6.041472506989748)
    assert every["legacy_p"] == pytest.approx(0.04876530151801324)
    assert "| 5-frenchhorn | 94.0% | 94.0% | 94.4% | 94.1% (706/750) |" in output
    assert "| 3-chainsaw | 66.0% | 66.0% | 52.4% | 61.5% (461/750) |" in output
    assert "| 3-chainsaw | 6 | 1 | 6 | 461 | 5 | 8 | 21 | 37 | 0 | 5 | 200 |" in output  # the pooled confusion
    assert ("(nonpruned 2146, 2pruned 2160, 32pruned 2033) against nonpruned's count is not defined" in output
            and "Computed without that check, as the study's older scipy did: chi2 = 6.0415, p = 0.04877." in output)


def test_experiment1_occlusion_per_class_shares_of_250_differences_and_the_design_check(cli):
    output, summary, _ = cli("exp1", OCCLUSION)
    # cells 20, 19, 15, 21 (printed as 2pruned - nonpruned, so negated here)
    _check_pair(summary, "nonpruned", "2pruned",
                (0.128, 0.156, 0.188, 0.228, 0.300, 0.220, 0.240, 0.204, 0.144, 0.276),
                (0.184, 0.408, 0.300, 0.208, 0.388, 0.156, 0.276, 0.236, 0.156, 0.232),
                (0.688, 0.436, 0.512, 0.564, 0.312, 0.624, 0.484, 0.560, 0.700, 0.492),
                (-14, -63, -28, 5, -22, 16, -9, -8, -3, 11))
    # cells 31, 32, 27, 33 (nonpruned - 32pruned)
    _check_pair(summary, "nonpruned", "32pruned",
                (0.636, 0.304, 0.404, 0.400, 0.392, 0.264, 0.464, 0.340, 0.448, 0.336),
                (0.136, 0.532, 0.348, 0.364, 0.432, 0.216, 0.304, 0.344, 0.200, 0.496),
                (0.228, 0.164, 0.248, 0.236, 0.176, 0.520, 0.232, 0.316, 0.352, 0.168),
                (125, -57, 14, 9, -10, 12, 40, -1, 62, -40))
    # cells 43, 44, 39, 45 (2pruned - 32pruned)
    _check_pair(summary, "2pruned", "32pruned",
                (0.544, 0.424, 0.516, 0.400, 0.424, 0.308, 0.492, 0.404, 0.484, 0.332),
                (0.248, 0.388, 0.336, 0.412, 0.380, 0.296, 0.312, 0.376, 0.248, 0.508),
                (0.208, 0.188, 0.148, 0.188, 0.196, 0.396, 0.196, 0.220, 0.268, 0.160),
                (74, 9, 45, -3, 11, 3, 45, 7, 59, -44))
    rows = _classes(summary, "nonpruned", "32pruned")  # cell 28: P(class | equally) within the pair
    assert {c: r["share_of_none"] for c, r in rows.items()} == pytest.approx(_by_class(
        0.086364, 0.062121, 0.093939, 0.089394, 0.066667, 0.196970, 0.087879, 0.119697, 0.133333, 0.063636), abs=1e-6)
    assert summary["class_of_none"] == pytest.approx(_by_class(  # cell 10: over all pairs
        0.110413, 0.077407, 0.089194, 0.097053, 0.067191, 0.151277, 0.089587, 0.107662, 0.129666, 0.080550), abs=1e-6)
    shown = summary["appearance"]  # cell 8: alg1 share + alg2 share, 2/3 each
    assert {m: v["share"] for m, v in shown.items()} == pytest.approx(dict.fromkeys(shown, 2 / 3))
    assert {m: v["expected"] for m, v in shown.items()} == pytest.approx(dict.fromkeys(shown, 2 / 3))
    assert sum(v["left"] for v in shown.values()) == sum(v["right"] for v in shown.values()) == 7500
    assert "| 4-church | 22.8% | 6.7% | 30.0 / 31.2 / 38.8% | -22 |" in output
    assert "nonpruned vs 2pruned: a / equally / b of 250" in output
    assert "| nonpruned | 2405 (0.321) | 2595 (0.346) | 0.667 | 0.667 |" in output


def test_experiment1_heatmaps_per_class_shares_from_the_raw_batch_file(cli):
    output, summary, _ = cli("exp1_heatmap", HEATMAPS_RAW)
    # cells 62, 63, 59, 64 (2pruned - nonpruned, negated)
    _check_pair(summary, "nonpruned", "2pruned",
                (0.276, 0.276, 0.308, 0.312, 0.408, 0.232, 0.260, 0.316, 0.200, 0.272),
                (0.224, 0.408, 0.376, 0.348, 0.396, 0.264, 0.332, 0.288, 0.304, 0.332),
                (0.500, 0.316, 0.316, 0.340, 0.196, 0.504, 0.408, 0.396, 0.496, 0.396),
                (13, -33, -17, -9, 3, -8, -18, 7, -26, -15))
    # cells 75, 76, 71, 77 (nonpruned - 32pruned)
    _check_pair(summary, "nonpruned", "32pruned",
                (0.460, 0.496, 0.432, 0.424, 0.496, 0.452, 0.452, 0.448, 0.508, 0.424),
                (0.412, 0.384, 0.464, 0.484, 0.392, 0.296, 0.388, 0.440, 0.360, 0.472),
                (0.128, 0.120, 0.104, 0.092, 0.112, 0.252, 0.160, 0.112, 0.132, 0.104),
                (12, 28, -8, -15, 26, 39, 16, 2, 37, -12))
    assert summary["class_of_none"] == pytest.approx(_by_class(  # cell 54
        0.121142, 0.084105, 0.081019, 0.083333, 0.059414, 0.145833, 0.109568, 0.097994, 0.121142, 0.096451), abs=1e-6)
    shown = summary["appearance"]  # two pairs, both with nonpruned: it is in every stimulus
    assert {m: (v["share"], v["expected"]) for m, v in shown.items()} == {
        "nonpruned": (1.0, 1.0), "2pruned": (0.5, 0.5), "32pruned": (0.5, 0.5)}
    assert "| 0-fish | 31.4% | 12.1% | 27.6 / 50.0 / 22.4% | +13 |" in output


def test_the_preprocessed_table_written_from_the_raw_batch_file_is_the_published_one(cli):
    output, _, out = cli("exp1_heatmap", HEATMAPS_RAW)
    written = out / "preprocessed.csv"
    published = pd.read_csv(HEATMAPS)
    ours = pd.read_csv(written)
    assert list(ours.columns) == list(published.columns)  # every column shared, in the same order
    pd.testing.assert_frame_equal(ours, published)
    assert written.read_text() == HEATMAPS.read_text()  # and the same CSV text: True/False, 1.0/0.0
    assert str(written) in output and (out / "analysis" / "items.csv").is_file()
    items = pd.read_csv(out / "analysis" / "items.csv")
    assert len(items) == 1000 and items["answers"].sum() == 5000
    assert (items[["alg1", "alg2", "none"]].sum(axis=1) == items["answers"]).all()
