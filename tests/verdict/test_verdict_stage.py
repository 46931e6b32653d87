import csv
import html
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import UserError
from prunexplain.pipeline import run_pipeline
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


def test_prunexplain_verdict_prints_the_answer_and_its_table(evaluated):
    """First: the tests below rewrite the run's scores, which puts its evaluate stage out of date."""
    settings, run = evaluated
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
    with open(run.explained_images) as handle:
        labels = np.array([int(r["label"]) for r in csv.DictReader(handle)])
    correct = lambda key: (np.load(run.predictions(key)) == labels).mean()  # noqa: E731
    accuracy = verdict.lines["local_magnitude_unstructured"]["top-1 accuracy"].comparisons
    key = ModelKey.pruned("local_magnitude_unstructured", 8.0)
    assert np.isclose(accuracy[1].difference, correct(key) - correct(ModelKey()))
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
    with pytest.raises(UserError, match="run `prunexplain evaluate` first"):
        verdict_stage(settings, Run(settings.run_dir))


def test_a_margin_for_a_metric_without_direction_is_refused(tmp_path, tiny_dataset):
    with pytest.raises(Exception, match="'gini' has no better direction"):
        tiny_settings(tmp_path, tiny_dataset, "verdict.margins.gini=0.1")


def test_a_rate_the_prune_table_rounds_is_still_found_below_the_floor(tmp_path):
    """The results table writes rates with six digits (1/0.9 as 1.11111); the model's folder keeps them all."""
    from prunexplain.runs import write_csv
    from prunexplain.verdict.stage import _below

    run = Run(tmp_path)
    rows = [{"sparsity": f"{rate:g}", "test_top1_accuracy": accuracy} for rate, accuracy in ((1, 0.9), (1 / 0.9, 0.1))]
    write_csv(run.prune_results("global_magnitude_unstructured"), rows)
    tested = run.test_accuracies()["global_magnitude_unstructured"]
    assert tested == [(1.0, 0.9), (1.11111, 0.1)]
    assert _below(tested, 1 / 0.9, 0.2) and not _below(tested, 1 / 0.9, 0.05) and not _below(tested, 1.25, 0.2)


def test_a_deleted_verdict_is_computed_again(tmp_path, tiny_dataset):
    """The run directory never claims a verdict it does not hold: its file is the stage's output."""
    from prunexplain.pipeline import run_stage

    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", "prune.rates=[2]", "evaluate.sanity=false",
                             'prune.methods=["local_magnitude_unstructured"]', "evaluate.meta_images=0",
                             "evaluate.resamples=200", "verdict.resamples=200")
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="verdict")
    assert run.verdict == run.root / "verdict.json" and run.verdict.is_file()
    run.verdict.unlink()
    assert "skipped" not in run_stage(settings, run, "verdict") and run.verdict.is_file()
