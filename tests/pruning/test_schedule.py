import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from prunexplain.config import UserError
from prunexplain.data.loaders import load_splits
from prunexplain.models import load_checkpoint
from prunexplain.pruning.methods import METHODS, prunable_weights
from prunexplain.pruning.remove import load_removed
from prunexplain.pruning.schedule import MEASURED_COLUMNS, STUDY_COLUMNS, Family, prune_stage
from prunexplain.runs import KILL_AFTER, ModelKey, Run
from prunexplain.train import train_stage
from tests.conftest import tiny_settings
from tests.pruning.conftest import copy_run

PRUNE = ["prune.max_epochs=1", "prune.rates=[2, 8]"]


def test_schedule_writes_the_studys_table_with_measured_rates_and_costs(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    methods = 'prune.methods=["local_magnitude_unstructured", "local_l1_structured"]'
    settings = tiny_settings(tmp_path, tiny_dataset, *PRUNE, methods)
    result = prune_stage(settings, run)
    tables = {}
    for method in ("local_magnitude_unstructured", "local_l1_structured"):
        with open(run.root.joinpath("prune", method, "results.csv")) as handle:
            rows = tables[method] = list(csv.DictReader(handle))
        assert tuple(rows[0]) == STUDY_COLUMNS + MEASURED_COLUMNS + Family._fields
        assert [r["sparsity"] for r in rows] == ["1", "2", "8"]
        assert rows[0]["pruned_model_path"] == "-" and rows[1]["max_epochs_finetuned"] == "1"
        assert {r["modules_pruned_and_finetuned"] for r in rows[1:]} == {"features"}  # the study's VGG name
        assert all(float(r["latency_ms"]) > 0 for r in rows)
        for row in rows[1:]:
            assert 1 < float(row["measured_rate_model"]) < float(row["measured_rate_scope"])
            assert os.path.exists(row["pruned_model_path"])
    for method, tolerance in (("local_magnitude_unstructured", 0.002), ("local_l1_structured", 0.02)):
        for row in tables[method][1:]:  # structured: to one channel's weights, its readers' columns counted
            assert float(row["measured_rate_scope"]) == pytest.approx(float(row["sparsity"]), rel=tolerance)
    macs = {method: [int(r["macs"]) for r in rows] for method, rows in tables.items()}
    params = [int(r["params"]) for r in tables["local_l1_structured"]]
    assert macs["local_magnitude_unstructured"] == [macs["local_l1_structured"][0]] * 3  # zeros shrink nothing
    assert macs["local_l1_structured"][2] < macs["local_l1_structured"][1] < macs["local_l1_structured"][0] / 1.5
    assert params[2] < params[1] < params[0]
    assert "local_l1_structured" in result.summary()

    for rate in (2, 8):  # the smaller model beside each structured checkpoint computes what the masked one does
        masked, _ = load_checkpoint(run.checkpoint(ModelKey.pruned("local_l1_structured", rate)))
        small, _ = load_removed(run.removed_checkpoint(ModelKey.pruned("local_l1_structured", rate)))
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            assert (masked(x) - small(x)).abs().max() < 1e-4
        assert not run.removed_checkpoint(ModelKey.pruned("local_magnitude_unstructured", rate)).exists()
    removed = [run.removed_checkpoint(ModelKey.pruned("local_l1_structured", r)) for r in (2, 8)]
    stamps = [run.checkpoint(ModelKey.pruned("local_l1_structured", r)).stat().st_mtime_ns for r in (2, 8)]
    prune_stage(tiny_settings(tmp_path, tiny_dataset, *PRUNE, methods, "prune.save_removed=false"), run)
    assert not any(path.exists() for path in removed)
    prune_stage(settings, run)
    assert all(path.exists() for path in removed)  # written again from the reused rates, not pruned again
    assert [run.checkpoint(ModelKey.pruned("local_l1_structured", r)).stat().st_mtime_ns for r in (2, 8)] == stamps


def test_pruned_weights_stay_zero_through_finetuning_and_a_round_trip(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    settings = tiny_settings(tmp_path, tiny_dataset, "prune.max_epochs=2", "prune.rates=[4]",
                             'prune.methods=["local_random_unstructured"]')
    prune_stage(settings, run)
    model, checkpoint = load_checkpoint(run.root.joinpath("prune", "local_random_unstructured", "cr_4", "model.pt"))
    weights = prunable_weights(model, "conv")
    assert set(checkpoint["masks"]) == set(weights)
    for name, weight in weights.items():
        mask = checkpoint["masks"][name]
        assert (weight[~mask] == 0).all() and (weight[mask] != 0).all()
    dense, _ = load_checkpoint(run.root.joinpath("train", "model.pt"))
    assert not torch.equal(dense.classifier[6].weight, model.classifier[6].weight)  # it was fine-tuned


def test_bad_schedules_and_missing_models_fail_before_any_work(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset)
    with pytest.raises(UserError, match="no trained model; run `prunexplain train`"):
        prune_stage(settings, Run(settings.run_dir))
    with pytest.raises(UserError, match=r"prune.rates: rates must increase strictly, got 8 then 4"):
        tiny_settings(tmp_path, tiny_dataset, "prune.rates=[2, 8, 4]")
    with pytest.raises(UserError, match="prune.methods: unknown method 'l0'"):
        prune_stage(tiny_settings(tmp_path, tiny_dataset, 'prune.methods=["l0"]'), Run(tmp_path))
    assert not (tmp_path / "prune").exists()


@pytest.mark.parametrize("method, family, extra", [
    ("local_random_unstructured", "local_random_unstructured", []),
    ("local_taylor_structured", "local_taylor_structured", []),
    ("local_magnitude_unstructured", "local_magnitude_unstructured+one_shot", ['prune.schedule=["one_shot"]']),
    ("local_taylor_unstructured", "local_taylor_unstructured+gradual+lr_rewind",
     ['prune.schedule=["gradual"]', 'prune.retrain=["lr_rewind"]', "prune.gradual_steps=2",
      "prune.gradual_frequency=3"]),
])
def test_a_killed_prune_resumes_at_the_first_unfinished_rate(tmp_path, tiny_dataset, trained, method, family, extra):
    """SIGKILL right after the first rate; the rerun keeps it and ends where an uninterrupted run does
    (a random draw, a calibration batch's gradients scored on the reloaded weights, a one-shot rate
    from the dense model, and a gradual ramp retrained by learning-rate rewinding)."""
    options = ["--set", "prune.max_epochs=3", "--rate", "2", "--rate", "4", "--rate", "8", "--method", method,
               *(option for setting in extra for option in ("--set", setting))]

    def prune(run, kill_after=None):
        env = {**os.environ, KILL_AFTER: kill_after or ""}
        command = [sys.executable, "-m", "prunexplain", "prune", "--run", str(run.root), *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    killed, whole = copy_run(trained, tmp_path / "killed"), copy_run(trained, tmp_path / "whole")
    assert prune(killed, f"rate:{family}/cr_2").returncode == -signal.SIGKILL
    first = killed.checkpoint(ModelKey(family, 2.0))
    last = killed.checkpoint(ModelKey(family, 8.0))
    assert first.exists() and not last.exists() and not killed.record("prune")
    stamp = first.stat().st_mtime_ns
    for run in (killed, whole):
        done = prune(run)
        assert done.returncode == 0, done.stderr[-2000:]
    assert first.stat().st_mtime_ns == stamp
    resumed = torch.load(last, weights_only=True)
    straight = torch.load(whole.checkpoint(ModelKey(family, 8.0)), weights_only=True)
    assert all(torch.equal(resumed["state_dict"][k], straight["state_dict"][k]) for k in straight["state_dict"])
    assert all(torch.equal(resumed["masks"][k], straight["masks"][k]) for k in straight["masks"])
    with open(killed.prune_results(family)) as handle:
        assert [r["sparsity"] for r in csv.DictReader(handle)] == ["1", "2", "4", "8"]
    assert not list(killed.root.rglob("*.tmp"))


def test_extending_the_schedule_prunes_only_the_new_rate(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    method = 'prune.methods=["local_magnitude_unstructured"]'
    prune_stage(tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", method, "prune.rates=[2, 4]"), run)
    stamps = {key: path.stat().st_mtime_ns for key, path in run.models().items()}
    result = prune_stage(tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", method, "prune.rates=[2, 4, 8]"), run)
    assert {key: path.stat().st_mtime_ns for key, path in run.models().items() if key in stamps} == stamps
    assert [row["sparsity"] for row in result.rows["local_magnitude_unstructured"]] == [1, "2", "4", "8"]


def test_models_no_longer_scheduled_are_moved_aside(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    method = 'prune.methods=["local_magnitude_unstructured"]'
    prune_stage(tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", method, "prune.rates=[2, 4]"), run)
    two = run.checkpoint(ModelKey("local_magnitude_unstructured", 2.0)).stat().st_mtime_ns
    prune_stage(tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", method, "prune.rates=[2, 8]"), run)
    assert [str(key) for key in run.models()] == [
        "dense", "local_magnitude_unstructured/cr_2", "local_magnitude_unstructured/cr_8"]
    assert run.checkpoint(ModelKey("local_magnitude_unstructured", 2.0)).stat().st_mtime_ns == two
    assert len(list(run.retired.rglob("cr_4/model.pt"))) == 1  # kept aside, not deleted


def test_finished_rates_are_reused_only_for_the_same_dense_model(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    settings = tiny_settings(tmp_path, tiny_dataset, 'prune.methods=["local_magnitude_unstructured"]')
    prune_stage(settings, run)
    checkpoint = run.root.joinpath("prune", "local_magnitude_unstructured", "cr_8", "model.pt")
    stamp = checkpoint.stat().st_mtime_ns
    prune_stage(settings, run)
    assert checkpoint.stat().st_mtime_ns == stamp
    train_stage(tiny_settings(tmp_path, tiny_dataset, "train.seed=5"), run)  # another dense model
    prune_stage(settings, run)
    assert checkpoint.stat().st_mtime_ns != stamp


def test_without_finetuning_the_pruned_model_is_still_scored(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    settings = tiny_settings(tmp_path, tiny_dataset, "prune.max_epochs=0", "prune.rates=[2]",
                             'prune.methods=["local_magnitude_unstructured"]')
    [_, row] = prune_stage(settings, run).rows["local_magnitude_unstructured"]
    assert row["early_stopping_epoch"] == "-" and row["training_accuracy"] == "-"
    assert 0 <= row["validation_accuracy"] <= 1
    assert row["test_top1_accuracy"] == row["accuracy_before_finetune"]  # nothing changed after pruning


def test_finetuning_reports_the_original_restore_rule(tmp_path, tiny_dataset, trained, monkeypatch):
    """With train.restore='last_improvement' a pruned model's row holds the original's figures: the
    0-based last improving epoch (valid accuracy beat the reference by 1 %), its valid accuracy, the
    best train accuracy of all epochs; the saved weights are that epoch's."""
    import prunexplain.train as train_module

    valid, train = [0.50, 0.60, 0.605, 0.70, 0.705, 0.65, 0.50], [0.30, 0.40, 0.50, 0.60, 0.70, 0.90, 0.80]
    states = []

    def scripted_epoch(model, *args):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.01)  # each epoch leaves other weights; then the masks, as after a real step
        args[-2]()
        return train[len(states)], 1.0

    def scripted_evaluate(model, *args, **kwargs):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"top1": valid[len(states) - 1], "top5": 1.0, "loss": 1.0, "n": 10}

    monkeypatch.setattr(train_module, "_train_epoch", scripted_epoch)
    monkeypatch.setattr(train_module, "evaluate", scripted_evaluate)  # fit's; the schedule's own scores the test
    run = copy_run(trained, tmp_path)
    settings = tiny_settings(tmp_path, tiny_dataset, "train.restore='last_improvement'", "prune.max_epochs=10",
                             "prune.patience=3", "prune.rates=[2]", 'prune.methods=["local_magnitude_unstructured"]')
    [_, row] = prune_stage(settings, run).rows["local_magnitude_unstructured"]
    assert (row["early_stopping_epoch"], row["training_accuracy"], row["validation_accuracy"]) == (3, 0.90, 0.70)
    _, checkpoint = load_checkpoint(run.checkpoint(ModelKey.pruned("local_magnitude_unstructured", 2)))
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in states[3].items())


def test_batch_norm_recalibration_is_scored_between_pruning_and_finetuning(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    settings = tiny_settings(tmp_path, tiny_dataset, "prune.max_epochs=0", "prune.rates=[2]",
                             "prune.recalibrate_batches=2", 'prune.methods=["local_magnitude_unstructured"]')
    [dense, row] = prune_stage(settings, run).rows["local_magnitude_unstructured"]
    assert dense["accuracy_after_recalibration"] == "-"
    assert row["test_top1_accuracy"] == row["accuracy_after_recalibration"]  # no fine-tuning after it
    _, before = load_checkpoint(run.dense_checkpoint)
    _, after = load_checkpoint(run.checkpoint(ModelKey.pruned("local_magnitude_unstructured", 2)))
    stats = [k for k in before["state_dict"] if k.endswith("running_mean")]
    assert stats and all(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in stats)


def test_every_method_runs_through_the_schedule_and_lands_on_its_rates(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    methods = [name for name, method in METHODS.items() if method.ranking != "blocks"]  # N:M: 2 and 4 only
    settings = tiny_settings(tmp_path, tiny_dataset, f"prune.methods={methods}", "prune.rates=[2, 8]",
                             "prune.max_epochs=0", "prune.calibration_images=16")
    result = prune_stage(settings, run)
    for method, rows in result.rows.items():
        measured = [float(row["measured_rate_scope"]) for row in rows[1:]]
        assert measured == pytest.approx([2, 8], rel=0.02), method


def test_per_class_accuracy_names_the_classes_pruning_hurts_most(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    settings = tiny_settings(tmp_path, tiny_dataset, 'prune.methods=["local_random_unstructured"]',
                             "prune.rates=[2, 8]", "prune.max_epochs=0")
    result = prune_stage(settings, run)
    with open(run.prune_per_class("local_random_unstructured")) as handle:
        table = list(csv.DictReader(handle))
    _, dense = load_checkpoint(run.dense_checkpoint)
    assert list(table[0]) == ["class", "dense", "cr_2", "cr_8"]
    assert sorted(row["class"] for row in table) == sorted(dense["meta"]["classes"])
    drops = [float(row["cr_8"]) - float(row["dense"]) for row in table]
    assert drops == sorted(drops)  # the hardest-hit class first
    _, pruned = load_checkpoint(run.checkpoint(ModelKey.pruned("local_random_unstructured", 8)))
    by_class = dict(zip(dense["meta"]["classes"], pruned["meta"]["per_class"]))
    assert all(float(row["cr_8"]) == pytest.approx(by_class[row["class"]]) for row in table)
    splits = load_splits(tiny_dataset)
    counts = np.bincount(splits.test.labels, minlength=len(by_class))
    top1 = float(result.rows["local_random_unstructured"][2]["test_top1_accuracy"])
    assert np.dot(counts, pruned["meta"]["per_class"]) / counts.sum() == pytest.approx(top1)  # the classes add up


def test_semistructured_pruning_keeps_two_then_one_of_every_four_and_refuses_other_rates(tmp_path, tiny_dataset,
                                                                                         trained):
    run = copy_run(trained, tmp_path)
    method = 'prune.methods=["local_magnitude_nm_semistructured"]'
    with pytest.raises(UserError, match="its rates are 4/3, 2 .* or 4 .*, not 8"):
        prune_stage(tiny_settings(tmp_path, tiny_dataset, method, "prune.rates=[2, 8]"), run)
    result = prune_stage(tiny_settings(tmp_path, tiny_dataset, method, "prune.rates=[2, 4]", "prune.max_epochs=1"), run)
    for rate, row in zip((2, 4), result.rows["local_magnitude_nm_semistructured"][1:]):
        model, checkpoint = load_checkpoint(run.checkpoint(ModelKey.pruned("local_magnitude_nm_semistructured", rate)))
        for name, weight in prunable_weights(model, "conv").items():
            blocks = weight.detach().movedim(1, -1).reshape(-1, 4) if weight.shape[1] % 4 == 0 else None
            if blocks is None:  # the first conv's 3 input channels: no block of 4, kept whole
                assert weight.count_nonzero() == weight.numel()
            else:  # through fine-tuning too
                assert ((blocks != 0).sum(1) <= 4 // rate).all() and (checkpoint["masks"][name].sum() * rate
                                                                       == weight.numel())
        assert 0.97 * rate < float(row["measured_rate_scope"]) <= rate  # the whole first conv: a little under


def test_one_shot_prunes_each_rate_from_the_dense_model_beside_the_iterative_schedule(tmp_path, tiny_dataset,
                                                                                      trained):
    run = copy_run(trained, tmp_path)
    method = 'prune.methods=["local_magnitude_unstructured"]'
    schedules = 'prune.schedule=["iterative", "one_shot"]'
    both = tiny_settings(tmp_path, tiny_dataset, method, "prune.rates=[2, 8]", schedules)
    result = prune_stage(both, run)
    assert list(result.rows) == ["local_magnitude_unstructured", "local_magnitude_unstructured+one_shot"]
    for name, rows in result.rows.items():
        assert [float(r["measured_rate_scope"]) for r in rows[1:]] == pytest.approx([2, 8], rel=0.002)
        assert {r["pruning_method"] for r in rows} == {name}
    iterative = run.checkpoint(ModelKey.pruned("local_magnitude_unstructured", 8)).stat().st_mtime_ns

    # one-shot 8x is what an iterative schedule of 8x alone makes: the dense model, pruned once, fine-tuned once
    alone = copy_run(trained, tmp_path / "alone")
    prune_stage(tiny_settings(tmp_path / "alone", tiny_dataset, method, "prune.rates=[8]"), alone)
    one_shot = torch.load(run.checkpoint(ModelKey.pruned("local_magnitude_unstructured+one_shot", 8)),
                          weights_only=True)
    reference = torch.load(alone.checkpoint(ModelKey.pruned("local_magnitude_unstructured", 8)), weights_only=True)
    assert all(torch.equal(one_shot["state_dict"][k], v) for k, v in reference["state_dict"].items())
    iterative_masks = torch.load(run.checkpoint(ModelKey.pruned("local_magnitude_unstructured", 8)),
                                 weights_only=True)["masks"]
    assert any(not torch.equal(one_shot["masks"][k], iterative_masks[k]) for k in iterative_masks)

    # a one-shot rate does not depend on the others: changing the schedule keeps it; dropping one-shot retires it
    stamp = run.checkpoint(ModelKey.pruned("local_magnitude_unstructured+one_shot", 8)).stat().st_mtime_ns
    prune_stage(tiny_settings(tmp_path, tiny_dataset, method, "prune.rates=[4, 8]", schedules), run)
    assert run.checkpoint(ModelKey.pruned("local_magnitude_unstructured+one_shot", 8)).stat().st_mtime_ns == stamp
    assert run.checkpoint(ModelKey.pruned("local_magnitude_unstructured", 8)).stat().st_mtime_ns != iterative
    prune_stage(tiny_settings(tmp_path, tiny_dataset, method, "prune.rates=[4, 8]"), run)
    assert [str(key) for key in run.models()] == [
        "dense", "local_magnitude_unstructured/cr_4", "local_magnitude_unstructured/cr_8"]
    assert not run.prune_results("local_magnitude_unstructured+one_shot").exists()


def test_the_calibration_batch_is_the_same_images_whatever_the_augmentation(tmp_path, tiny_dataset, trained):
    """With augment_at = "full_size" the training dataset augments each image as it is read: the
    calibration batch must not, or a gradient-based criterion would choose differently on every run."""
    masks = []
    for copy in ("a", "b"):
        run = copy_run(trained, tmp_path / copy)
        prune_stage(tiny_settings(tmp_path / copy, tiny_dataset, 'prune.methods=["local_taylor_unstructured"]',
                                  "prune.rates=[4]", "prune.max_epochs=0", 'data.augment_at="full_size"'), run)
        masks.append(load_checkpoint(run.checkpoint(ModelKey.pruned("local_taylor_unstructured", 4)))[1]["masks"])
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
