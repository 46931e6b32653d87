"""Simulated crowds: MTurk-format answers with a known truth; the analysis recovers it; power analysis."""

import json

import numpy as np
import pytest

from prunexplain.analysis import stats
from prunexplain.analysis.load import parse_tables
from prunexplain.config import AnalysisSettings, ModelTruth, PairTruth, SimulateSettings, UserError
from prunexplain.study.simulate import (
    exp1_probabilities,
    expected_truth,
    load_simulate_settings,
    power_analysis,
    simulate,
    simulate_answers,
)

PAIR = PairTruth(a="nonpruned", b="32pruned", preference=0.6, none_share=0.3)


def analysed(settings, rng, analysis=None):
    answers = parse_tables(settings.experiment, [("sim", simulate_answers(settings, rng))], analysis)
    assert answers.problems == []
    return answers


def test_the_same_seed_writes_the_same_files(tmp_path):
    settings = SimulateSettings(images=40, seed=7)
    first = simulate(settings, tmp_path / "a", power=False)
    second = simulate(settings, tmp_path / "b", power=False)
    assert first.results.read_bytes() == second.results.read_bytes()
    third = simulate(settings.model_copy(update={"seed": 8}), tmp_path / "c", power=False)
    assert third.results.read_bytes() != first.results.read_bytes()
    truth = json.loads((tmp_path / "a" / "truth.json").read_text())
    assert truth["answers"] == 3 * 40 * 5 and truth["pairs"][0]["a"] == "nonpruned"


def test_answers_are_valid_mturk_rows_with_different_workers_per_hit():
    settings = SimulateSettings(images=30, workers=20)
    answers = analysed(settings, np.random.default_rng(0))
    frame = answers.frame
    assert len(frame) == 3 * 30 * 5 and answers.models == ["nonpruned", "2pruned", "32pruned"]
    per_hit = frame.groupby("hit")["worker"].agg(["size", "nunique"])
    assert (per_hit["size"] == 5).all() and (per_hit["nunique"] == 5).all()
    assert frame["work_time"].min() >= 1 and set(frame["label"]) == set(settings.classes)


def test_large_crowds_report_the_expected_truth():
    settings = SimulateSettings(pairs=[PAIR], images=4000, spammer_share=0.2, side_bias=0.2, item_correlation=0.2)
    [pair] = stats.pair_stats(analysed(settings, np.random.default_rng(1)).frame, ["nonpruned", "32pruned"], 0.95, 0,
                              np.random.default_rng(0))
    [truth] = expected_truth(settings)["pairs"]
    assert pair["a_share"] == pytest.approx(truth["expected_a_share"], abs=0.015)
    assert pair["none_share"] == pytest.approx(truth["expected_none_share"], abs=0.015)
    models = [ModelTruth(name="nonpruned", correct=0.9, none_share=0.05), ModelTruth(name="2pruned", correct=0.7)]
    settings = SimulateSettings(experiment="exp2", models=models, images=3000, item_correlation=0.3)
    frame = analysed(settings, np.random.default_rng(2)).frame
    for model in expected_truth(settings)["models"]:
        answers = frame[frame["model"] == model["name"]]
        assert answers["correct"].mean() == pytest.approx(model["expected_accuracy"], abs=0.015)
        assert (answers["answer"] == "none").mean() == pytest.approx(model["expected_none_share"], abs=0.015)


def test_the_preference_share_lies_in_its_95_percent_interval_in_about_95_percent_of_200_studies():
    settings = SimulateSettings(pairs=[PAIR], images=300)
    truth = expected_truth(settings)["pairs"][0]["expected_a_share"]
    rng = np.random.default_rng(2024)
    covered = []
    for _ in range(200):
        [pair] = stats.pair_stats(analysed(settings, rng).frame, ["nonpruned", "32pruned"], 0.95, 0, rng)
        covered.append(pair["a_share_ci"][0] <= truth <= pair["a_share_ci"][1])
    assert 0.92 <= np.mean(covered) <= 0.98  # 200 studies: 0.95 +- 2 standard errors (0.015)


def test_when_items_differ_the_bootstrap_over_items_keeps_its_coverage_and_wilson_does_not():
    settings = SimulateSettings(pairs=[PAIR], images=200, item_correlation=0.4)
    truth = expected_truth(settings)["pairs"][0]["expected_a_share"]
    rng = np.random.default_rng(5)
    wilson, items = [], []
    for _ in range(100):
        [pair] = stats.pair_stats(analysed(settings, rng).frame, ["nonpruned", "32pruned"], 0.95, 300, rng)
        wilson.append(pair["a_share_ci"][0] <= truth <= pair["a_share_ci"][1])
        items.append(pair["a_share_ci_items"][0] <= truth <= pair["a_share_ci_items"][1])
    assert np.mean(wilson) < 0.9 <= np.mean(items)


def test_leaving_out_fast_workers_recovers_the_attentive_truth():
    settings = SimulateSettings(pairs=[PAIR], images=1500, spammer_share=0.4, side_bias=0.0)
    answers = analysed(settings, np.random.default_rng(3))
    attentive = exp1_probabilities(PAIR, 0.0, 0.0)
    workers = stats.worker_stats(answers.frame)
    fast = stats.low_effort_workers(workers, 6.0)
    assert len(fast) == pytest.approx(0.4 * settings.workers, abs=4)
    kept = answers.frame[~answers.frame["worker"].isin(fast)]
    [before] = stats.pair_stats(answers.frame, answers.models, 0.95, 0, np.random.default_rng(0))
    [after] = stats.pair_stats(kept, answers.models, 0.95, 0, np.random.default_rng(0))
    assert abs(before["a_share"] - 0.6) > 0.04 and after["a_share"] == pytest.approx(0.6, abs=0.02)
    assert after["none_share"] == pytest.approx(attentive[2], abs=0.02)


def test_power_analysis_sizes_each_pair():
    pairs = [PairTruth(a="nonpruned", b="2pruned", preference=0.6, none_share=0.2),
             PairTruth(a="nonpruned", b="32pruned", preference=0.55, none_share=0.2),
             PairTruth(a="2pruned", b="32pruned", preference=0.5)]
    rows = power_analysis(SimulateSettings(pairs=pairs, power_sims=300, spammer_share=0.0, side_bias=0.0))
    big, small, none = rows
    assert big["items"] < small["items"] and none["items"] is None
    assert big["power"] >= 0.8 and small["power"] >= 0.8
    # normal approximation: 0.6 vs 0.5 needs ((1.96*0.5 + 0.8416*0.4899)/0.1)^2 = 193.5 decided answers
    assert big["items_normal"] == 49  # 194 decided / 0.8 decided share / 5 answers per item
    powers = [c["power"] for c in big["curve"]]
    assert powers == sorted(powers) or max(np.diff(powers)) < 0.05


def test_settings_from_toml_with_errors_naming_file_and_key(tmp_path):
    config = tmp_path / "crowd.toml"
    config.write_text('[simulate]\nimages = 12\n[[simulate.pairs]]\na = "nonpruned"\nb = "4pruned"\npreference = 0.7\n')
    settings = load_simulate_settings(config, seed=3)
    assert settings.images == 12 and settings.seed == 3 and settings.pairs[0].b == "4pruned"
    config.write_text("[simulate]\nimagez = 12\n")
    with pytest.raises(UserError, match=f"^{config}: simulate.imagez: unknown key"):
        load_simulate_settings(config)
    with pytest.raises(UserError, match="simulate.answers_per_item: needs at least 5 workers"):
        load_simulate_settings(None, workers=3)
    with pytest.raises(UserError, match="no '_'"):
        simulate(SimulateSettings(pairs=[PairTruth(a="non_pruned", b="2pruned")]), tmp_path, power=False)
    with pytest.raises(UserError, match=r"simulate.experiment: unknown experiment kind 'exp1_heatmap' "
                                         r"\(known: exp1, exp2\)"):
        load_simulate_settings(None, experiment="exp1_heatmap")


def test_the_analysis_reads_what_the_simulation_writes(tmp_path):
    from prunexplain.analysis.stage import analyze

    result = simulate(SimulateSettings(experiment="exp2", images=60), tmp_path / "sim", power=False)
    summary = analyze("exp2", [result.results], AnalysisSettings(bootstrap=0, plots=False, min_median_work_time=6),
                      tmp_path / "out").summary
    assert summary["answers"] == 900 and summary["validation"]["files"][0]["format"] == "raw"
    assert summary["filter"]["applied"] and summary["filter"]["after"]["answers"] < 900
