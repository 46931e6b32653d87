"""The statistics against values from other implementations (statsmodels, textbook) and edge cases."""

import math

import numpy as np
import pandas as pd
import pytest

from prunexplain.analysis import stats

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
