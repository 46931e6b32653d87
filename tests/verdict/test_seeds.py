"""`run.seeds`: per seed a replicate of the models, resumable on its own, and a verdict over all of them."""

import csv
import json

import numpy as np
import pytest
import torch

from prunexplain.config import Settings
from prunexplain.pipeline import STAGES, fingerprints, run_pipeline, run_stage
from prunexplain.runs import ModelKey, Run
from prunexplain.verdict.stage import verdict_stage
from tests.conftest import tiny_settings

METHOD = "local_random_unstructured"


def test_the_study_shows_one_replicate_and_the_others_take_their_own_seeds():
    settings = Settings.model_validate({"run": {"seeds": [4, 7]}, "study": {"seed_model": 7}})
    assert (settings.train.seed, settings.prune.seed) == (7, 7)  # the run's own models: the study's seed
    other = settings.replicate(4)
    assert (other.train.seed, other.prune.seed, other.run.seeds) == (4, 4, [])
    assert other.run_dir == Run(settings.run_dir).replicate(4) == settings.run_dir / "seeds" / "4"
    assert Settings.model_validate({"run": {"seeds": [4, 7]}}).train.seed == 4  # default: the first


@pytest.mark.parametrize("values, message", [
    ({"run": {"seeds": [1, 1]}}, "repeats a seed"),
    ({"run": {"seeds": [0, 1]}, "study": {"seed_model": 2}}, "study.seed_model = 2 is not one of run.seeds"),
    ({"study": {"seed_model": 1}}, "set run.seeds"),
    ({"run": {"seeds": [0, 1]}, "train": {"seed": 5}}, "drop train.seed"),
])
def test_inconsistent_seeds_are_refused_with_one_line(values, message):
    with pytest.raises(ValueError, match=message):
        Settings.model_validate(values)


def test_seeds_replicate_training_and_the_verdict_resamples_them(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, "run.seeds=[0, 1]", "train.epochs=1", "prune.rates=[2]",
                             f'prune.methods=["{METHOD}"]', "evaluate.sanity=false", "evaluate.meta_images=0",
                             "evaluate.resamples=200", "verdict.resamples=300")
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="evaluate")
    for stage, fingerprint in zip(STAGES, fingerprints(settings, run)):
        if stage.name in ("study", "crowd", "analysis"):  # the tiny models classify too few images for a study
            run.mark_done(stage.name, fingerprint)
    assert "replicates of seeds 1" in run_stage(settings, run, "seeds")
    replicate = Run(run.replicate(1))
    weights = [torch.load(r.dense_checkpoint, weights_only=True)["state_dict"] for r in (run, replicate)]
    assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])  # trained apart
    assert 'seed = 1' in replicate.config.read_text() and replicate.is_done("evaluate", fingerprints(
        settings.replicate(1), replicate)[STAGES.index(next(s for s in STAGES if s.name == "evaluate"))])
    # a rerun finds the replicate finished and recomputes nothing
    stamp = replicate.checkpoint(ModelKey.pruned(METHOD, 2.0)).stat().st_mtime_ns
    assert "done already" in run_stage(settings, run, "seeds")
    run_pipeline(settings.replicate(1), replicate, until="evaluate")
    assert replicate.checkpoint(ModelKey.pruned(METHOD, 2.0)).stat().st_mtime_ns == stamp

    verdict = verdict_stage(settings, run)
    saved = json.loads(run.verdict.read_text())
    assert verdict.seeds == [0, 1] and saved["intervals"] == "over seeds and images"
    with open(run.verdict_metrics, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["seeds"] == "2" for row in rows)
    accuracy = next(r for r in rows if r["metric"] == "top-1 accuracy" and r["method"] == METHOD)
    both = [dict(r.test_accuracies()[METHOD])[2.0] for r in (run, replicate)]
    assert np.isclose(float(accuracy["mean"]), np.mean(both), atol=1e-6)  # same test split: the seeds' mean
    line = verdict.lines[METHOD]["top-1 accuracy"].comparisons[0]
    dense = [dict(r.test_accuracies()[METHOD])[1.0] for r in (run, replicate)]
    assert np.isclose(line.difference, np.mean(both) - np.mean(dense), atol=1e-6)
    assert run.verdict_plot("gradcam").is_file()
