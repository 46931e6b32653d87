"""The statistics against values from other implementations (statsmodels, textbook) and edge cases."""

import math

import numpy as np
import pandas as pd
import pytest

from prunexplain.analysis import stats
from prunexplain.experiments import NONE

# 40 images x 3 models, majority-correct flags; statsmodels' cochrans_q gives Q = 7.823529411764706,
# p = 0.02000516665815987 on this table (checked once outside the project, statsmodels 0.14).
COCHRAN = [[0, 1, 1], [1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1], [1, 0, 1], [0, 1, 0],
           [0, 0, 1], [0, 1, 1], [0, 1, 1], [1, 0, 0], [1, 1, 1], [0, 1, 1], [0, 1, 1], [1, 0, 1], [1, 0, 1],
           [1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 0, 0], [1, 0, 1], [1, 0, 0], [0, 1, 1],
           [1, 1, 1], [1, 0, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1], [0, 1, 0],
           [1, 0, 1], [1, 0, 1], [0, 1, 0], [1, 0, 1]]


def test_wilson_matches_statsmodels_and_handles_no_trials():
    assert stats.wilson(7, 20) == pytest.approx([0.18119182410108203, 0.5671457233147638])  # proportion_confint
    assert all(math.isnan(v) for v in stats.wilson(0, 0))


def test_holm_matches_statsmodels():
    assert stats.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])  # multipletests holm
    adjusted = stats.holm([0.01, float("nan"), 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


def test_cochran_q_matches_statsmodels():
    result = stats.cochran_q(pd.DataFrame(np.array(COCHRAN, dtype=bool), columns=["a", "b", "c"]))
    assert result == {"q": pytest.approx(7.823529411764706), "df": 2, "p": pytest.approx(0.02000516665815987),
                      "images": 40}
    same = pd.DataFrame({"a": [True, False], "b": [True, False]})
    assert stats.cochran_q(same) == {"q": 0.0, "df": 1, "p": 1.0, "images": 2}


def test_exact_mcnemar_is_the_binomial_test_on_discordant_images():
    table = pd.DataFrame({"a": [True] * 12 + [False] * 5 + [True] * 30, "b": [False] * 12 + [True] * 5 + [True] * 30})
    [row] = stats.mcnemar_pairs(table)
    assert (row["only_a"], row["only_b"]) == (12, 5)
    assert row["p"] == pytest.approx(0.143463134765625)  # statsmodels mcnemar(exact=True)


def test_the_studys_chisquare_and_why_it_can_be_undefined():
    ok = stats.study_chisquare([636, 521])
    assert ok["defined"] and ok["chi2"] == pytest.approx(11.430423509075194)
    bad = stats.study_chisquare([2160, 2033], [2146, 2146])
    assert not bad["defined"] and bad["p"] is None and "observed sum 4193 != expected sum 4292" in bad["note"]
    assert bad["legacy_chi2"] == pytest.approx(6.041472506989748)


def test_alpha_counts_one_answer_per_worker_and_item():
    frame = pd.DataFrame({
        "worker": ["w1", "w2", "w1", "w2", "w1", "w3"],
        "item": ["i1", "i1", "i2", "i2", "i1", "i2"],
        "answer": ["a", "a", "b", "a", "b", "b"],
    })
    counts = stats.value_counts(frame, "answer", ["a", "b", "c"])
    assert counts.tolist() == [[2, 0, 0], [1, 2, 0]]  # w1's second answer on i1 is not a fourth coder
    # coincidences aa 2, ab 1, ba 1, bb 1 (n = 5): D_o = 2/5, D_e = 2*3*2/(5*4) = 3/5, alpha = 1 - 2/3
    assert stats.alpha(counts) == pytest.approx(1 / 3)
    assert math.isnan(stats.alpha(np.array([[2, 0], [3, 0]])))  # one value only: no disagreement to expect
    value, interval = stats.alpha_with_ci(counts, 50, 0.95, np.random.default_rng(0))
    assert value == pytest.approx(1 / 3) and len(interval) == 2


def test_bootstrap_share_over_items_is_reproducible_and_contains_the_estimate():
    hits, totals = np.array([3, 1, 4, 0, 2]), np.array([4, 3, 5, 2, 4])
    one = stats.bootstrap_share(hits, totals, 500, 0.95, np.random.default_rng(1))
    assert one == stats.bootstrap_share(hits, totals, 500, 0.95, np.random.default_rng(1))
    assert one[0] < hits.sum() / totals.sum() < one[1]
    assert all(math.isnan(v) for v in stats.bootstrap_share(hits, totals, 0, 0.95, np.random.default_rng(1)))


def test_majority_needs_more_than_half_and_every_model():
    frame = pd.DataFrame({
        "image": ["1"] * 4 + ["2"] * 2, "label": ["x"] * 6, "model": ["m", "m", "n", "n", "m", "m"],
        "correct": [True, False, True, True, True, True],
    })
    table = stats.majority_correct(frame, ["m", "n"])
    assert table.to_dict("list") == {"m": [False], "n": [True]}  # 1 of 2 is no majority; image 2 lacks n


def _compare_frame():
    """Two pairs; class x: nonpruned vs 2pruned a, a, b, none; class y: nonpruned vs 2pruned none,
    nonpruned vs 32pruned b, b."""
    rows = [("x", "nonpruned", "2pruned", "a"), ("x", "nonpruned", "2pruned", "a"), ("x", "nonpruned", "2pruned", "b"),
            ("x", "nonpruned", "2pruned", NONE), ("y", "nonpruned", "2pruned", NONE),
            ("y", "nonpruned", "32pruned", "b"), ("y", "nonpruned", "32pruned", "b")]
    frame = pd.DataFrame(rows, columns=["label", "a", "b", "choice"])
    frame["answer"] = frame["choice"].map({"a": "alg1", "b": "alg2", NONE: NONE})
    frame["left"], frame["right"] = frame["a"], frame["b"]  # a always shown left
    return frame


def test_per_class_shares_of_all_answers_the_count_difference_and_the_class_given_equally():
    frame = _compare_frame()
    rows = {(r["class"], r["b"]): r for r in stats.class_stats(frame, ["nonpruned", "2pruned", "32pruned"], ["x", "y"])}
    x = rows[("x", "2pruned")]
    assert (x["a_share_of_all"], x["none_share"], x["b_share_of_all"], x["a_minus_b"]) == (0.5, 0.25, 0.25, 1)
    assert x["a_share"] == pytest.approx(2 / 3) and x["share_of_none"] == 0.5  # 1 of the pair's 2 'equally'
    y = rows[("y", "32pruned")]
    assert (y["b_share_of_all"], y["a_minus_b"]) == (1.0, -2) and math.isnan(y["share_of_none"])  # no 'equally'
    assert stats.class_of_none(frame, ["x", "y", "z"]) == {"x": 0.5, "y": 0.5, "z": 0.0}


def test_appearance_sums_the_sides_and_expects_the_share_of_pairs_with_the_model():
    shown = stats.appearance(_compare_frame(), ["nonpruned", "2pruned", "32pruned"], ("left", "right"))
    assert shown["nonpruned"] == {"left": 7, "left_share": 1.0, "right": 0, "right_share": 0.0, "share": 1.0,
                                  "expected": 1.0}
    assert shown["2pruned"]["share"] == pytest.approx(5 / 7) and shown["2pruned"]["expected"] == 0.5
    assert shown["32pruned"]["right"] == 2 and shown["32pruned"]["expected"] == 0.5


def test_pooled_class_accuracy_and_confusion_count_every_model():
    frame = pd.DataFrame({"label": ["x", "x", "x", "y"], "model": ["m", "n", "n", "m"],
                          "answer": ["x", "y", NONE, "y"]})
    frame["correct"] = frame["answer"] == frame["label"]
    pooled = stats.class_pooled_stats(frame, ["x", "y"])
    assert pooled[0] == {"class": "x", "n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3), "none": 1,
                         "none_share": pytest.approx(1 / 3)}
    assert stats.confusion(frame, None, ["x", "y"]).tolist() == [[1, 1, 1], [0, 1, 0]]
    assert stats.confusion(frame, "n", ["x", "y"]).tolist() == [[0, 1, 1], [0, 0, 0]]


def test_the_studys_chisquare_of_all_models_against_the_baseline():
    models = {"nonpruned": {"correct": 10}, "2pruned": {"correct": 12}, "32pruned": {"correct": 8}}
    pair = stats.study_correct_chisquare(models, "nonpruned")
    every = stats.study_correct_chisquare(models, "nonpruned", with_baseline=True)
    assert pair["models"] == ["2pruned", "32pruned"] and every["models"] == ["nonpruned", "2pruned", "32pruned"]
    assert every["defined"] and every["chi2"] == pytest.approx(0.8) and every["p"] == pytest.approx(math.exp(-0.4))
    # the same statistic, one degree of freedom less
    assert pair["defined"] and pair["chi2"] == pytest.approx(0.8) and pair["p"] == pytest.approx(0.37109336952269756)
