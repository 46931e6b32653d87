import html
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import UserError
from prunexplain.pipeline import STAGES, fingerprints, run_pipeline
from prunexplain.report import write_report
from prunexplain.runs import ModelKey, Run, scores_key, write_with
from prunexplain.verdict.stage import verdict_stage
from tests.conftest import tiny_settings


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_dataset):
    """A tiny run through evaluate: one method at 2x and 8x, Grad-CAM, no sanity check or noise test."""
    tmp_path = tmp_path_factory.mktemp("verdict")
    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", "prune.rates=[2, 8]",
                             'prune.methods=["local_magnitude_unstructured"]', "evaluate.sanity=false",
                             "evaluate.meta_images=0", "evaluate.resamples=200", "verdict.resamples=500")
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="evaluate")
    return settings, run


def _without_study(settings, run: Run) -> None:
    """Mark the stages between evaluate and the verdict done: the tiny models classify too few images for
    a study (the study's side of the verdict has tests of its own)."""
    for stage, fingerprint in zip(STAGES, fingerprints(settings, run)):
        if stage.name in ("study", "crowd", "analysis", "seeds"):
            run.mark_done(stage.name, fingerprint)


def test_prunexplain_verdict_prints_the_answer_and_its_table(evaluated):
    """First: the tests below rewrite the run's scores, which puts its evaluate stage out of date."""
    settings, run = evaluated
    _without_study(settings, run)
    result = CliRunner().invoke(app, ["verdict", "--run", str(run.root)])
    assert result.exit_code == 0, result.output
    assert result.output.count("With local_magnitude_unstructured") == 1
    assert "method                        measure" in result.output and "margin" in result.output
    assert "local_magnitude_unstructured  top-1 accuracy" in result.output
    page = write_report(run).path.read_text()
    sections = page.split("<section>")[1:]
    assert "1. Answer: how far can the model be pruned?" in sections[0] and "2. Settings" in sections[1]
    sentence = json.loads(run.verdict.read_text())["sentences"][0]
    assert html.escape(sentence).replace("&#x27;", "&#39;") in sections[0]  # Jinja's escape of "'"


def test_the_verdict_pairs_each_rate_with_the_dense_model_image_by_image(evaluated):
    settings, run = evaluated
    scores = dict(np.load(run.scores))
    energy = scores_key("gradcam", ModelKey(), "energy_pointing_game")
    constructed = {**scores, scores_key("gradcam", ModelKey.pruned("local_magnitude_unstructured", 2.0),
                                        "energy_pointing_game"): scores[energy] - 0.01,
                   scores_key("gradcam", ModelKey.pruned("local_magnitude_unstructured", 8.0),
                              "energy_pointing_game"): scores[energy] - 0.3}
    write_with(run.scores, lambda handle: np.savez(handle, **constructed))
    floor = settings.model_copy(update={"verdict": settings.verdict.model_copy(update={"accuracy_floor": 0.0})})
    verdict = verdict_stage(floor, run)
    line = verdict.lines["local_magnitude_unstructured"]["gradcam energy_pointing_game"]
    assert line.holds_to == 2.0 and line.breaks_at.rate == 8.0
    assert np.isclose(line.comparisons[1].difference, -0.3) and np.isclose(line.comparisons[0].difference, -0.01)
    # accuracy pairs every test image: the prune stage's per-image answers, whose means are its table's
    answers = run.test_correct("local_magnitude_unstructured")
    tested = dict(run.test_accuracies()["local_magnitude_unstructured"])
    assert len(answers[8.0]) > len(scores[energy]) and np.isclose(np.mean(answers[8.0]), tested[8.0])
    accuracy = verdict.lines["local_magnitude_unstructured"]["top-1 accuracy"].comparisons
    assert np.isclose(accuracy[1].difference, tested[8.0] - tested[1.0])
    saved = json.loads(run.verdict.read_text())
    assert saved["sentences"] == verdict.sentences
    assert saved["lines"]["local_magnitude_unstructured"]["gradcam energy_pointing_game"]["breaks_at"] == 8.0


def test_models_below_the_floor_are_collapsed_and_never_hold(evaluated):
    settings, run = evaluated
    everything = settings.model_copy(update={"verdict": settings.verdict.model_copy(update={"accuracy_floor": 1.0})})
    verdict = verdict_stage(everything, run)
    assert verdict.collapsed == {"local_magnitude_unstructured": [2.0, 8.0]}
    assert all(line.holds_to is None and line.breaks_at.collapsed
               for line in verdict.lines["local_magnitude_unstructured"].values())
    assert "the models have collapsed (test top-1 below 100%)" in verdict.sentences[0]


def test_a_verdict_before_evaluate_says_what_to_run(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset)
    with pytest.raises(UserError, match="no per-image scores of seed 0; run `prunexplain run` first"):
        verdict_stage(settings, Run(settings.run_dir))


def test_a_margin_for_a_metric_without_direction_is_refused(tmp_path, tiny_dataset):
    with pytest.raises(Exception, match="'gini' has no better direction"):
        tiny_settings(tmp_path, tiny_dataset, "verdict.margins.gini=0.1")


def test_a_rate_the_prune_table_rounds_is_still_found_below_the_floor(tmp_path):
    """The results table writes rates with six digits (1/0.9 as 1.11111); the model's folder keeps them all."""
    from prunexplain.runs import write_csv
    from prunexplain.verdict.replicates import Replicate, collapsed_rates, is_collapsed

    run = Run(tmp_path)
    rows = [{"sparsity": f"{rate:g}", "test_top1_accuracy": accuracy} for rate, accuracy in ((1, 0.9), (1 / 0.9, 0.1))]
    write_csv(run.prune_results("global_magnitude_unstructured"), rows)
    tested = run.test_accuracies()
    assert tested["global_magnitude_unstructured"] == [(1.0, 0.9), (1.11111, 0.1)]
    one = [Replicate(0, run, {}, {}, tested)]
    assert is_collapsed(collapsed_rates(one, 0.2), "global_magnitude_unstructured", 1 / 0.9)
    assert collapsed_rates(one, 0.05) == {"global_magnitude_unstructured": []}
    # with seeds, the accuracy averaged over them decides
    other = {"global_magnitude_unstructured": [(1.0, 0.9), (1.11111, 0.5)]}
    assert collapsed_rates([*one, Replicate(1, run, {}, {}, other)], 0.2) == {"global_magnitude_unstructured": []}


def test_a_deleted_verdict_is_computed_again(tmp_path, tiny_dataset):
    """The run directory never claims a verdict it does not hold: its file is the stage's output."""
    from prunexplain.pipeline import run_stage

    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", "prune.rates=[2]", "evaluate.sanity=false",
                             'prune.methods=["local_magnitude_unstructured"]', "evaluate.meta_images=0",
                             "evaluate.resamples=200", "verdict.resamples=200")
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="evaluate")
    _without_study(settings, run)
    run_stage(settings, run, "verdict")
    assert run.verdict == run.root / "verdict.json" and run.verdict.is_file()
    # finished, it stays finished: its done-marker, in verdict/ beside its figures, is not one of its outputs
    assert "skipped" in run_stage(settings, run, "verdict") and "skipped" in run_stage(settings, run, "verdict")
    run.verdict.unlink()
    assert "skipped" not in run_stage(settings, run, "verdict") and run.verdict.is_file()


def test_a_metric_mostly_noise_is_judged_but_left_out_of_the_sentence(evaluated):
    settings, run = evaluated
    from prunexplain.runs import write_csv

    scores = dict(np.load(run.scores))
    energy = scores_key("gradcam", ModelKey(), "energy_pointing_game")
    for rate in (2.0, 8.0):  # energy falls far at both rates: it alone would break the explanations at 2x
        scores[scores_key("gradcam", ModelKey.pruned("local_magnitude_unstructured", rate),
                          "energy_pointing_game")] = scores[energy] - 0.5
    write_with(run.scores, lambda handle: np.savez(handle, **scores))
    meta = [{"explainer": "gradcam", "metric": metric, "noise_resilience": value}
            for metric, value in (("energy_pointing_game", 0.1), ("pointing_game_hit", ""), ("deletion_auc", 0.9))]
    write_csv(run.meta_evaluation, meta)
    try:
        verdict = verdict_stage(settings, run)
    finally:
        run.meta_evaluation.unlink()
    line = verdict.lines["local_magnitude_unstructured"]["gradcam energy_pointing_game"]
    assert line.breaks_at.rate == 2.0  # still judged, and in the table
    assert verdict.unreliable == {"gradcam energy_pointing_game": 0.1}
    assert "energy_pointing_game" not in verdict.sentences[0]
    assert "Left out of these sentences (noise resilience below 0.5): gradcam energy_pointing_game (0.10)." \
        in verdict.sentences
    kept = verdict_stage(settings.model_copy(update={"verdict": settings.verdict.model_copy(
        update={"min_resilience": -1.0})}), run)
    assert kept.unreliable == {}


def test_tests_other_than_those_the_study_froze_are_named(evaluated):
    settings, run = evaluated
    from prunexplain.runs import write_json

    frozen = settings.verdict.model_copy(update={"accuracy_margin": 0.02}).model_dump(mode="json")
    write_json(run.study.manifest, {"settings": {"verdict": frozen}, "models": {}})
    try:
        verdict = verdict_stage(settings, run)
        same = verdict_stage(settings.model_copy(update={"verdict": settings.verdict.model_copy(
            update={"accuracy_margin": 0.02})}), run)
    finally:
        run.study.manifest.unlink()
    assert verdict.departures == ["verdict.accuracy_margin: 0.02 frozen, 0.01 now"]
    assert verdict.sentences[-1] == ("These tests depart from those the study froze: "
                                     "verdict.accuracy_margin: 0.02 frozen, 0.01 now.")
    assert same.departures == [] and json.loads(run.verdict.read_text())["departures"] == []
