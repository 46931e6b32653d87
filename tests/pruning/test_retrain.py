import json

import pytest
import torch

from prunexplain.config import UserError
from prunexplain.models import build_model, load_checkpoint
from prunexplain.pipeline import run_pipeline
from prunexplain.pruning import schedule
from prunexplain.pruning.schedule import prune_stage, variants
from prunexplain.runs import ModelKey, Run
from prunexplain.train import Replay
from tests.conftest import tiny_settings

METHOD = 'prune.methods=["local_magnitude_unstructured"]'
REGIMES = 'prune.retrain=["finetune", "lr_rewind", "weight_rewind"]'


@pytest.fixture(scope="module")
def rewound(tmp_path_factory, tiny_dataset):
    """A run trained for 3 epochs under the one-cycle schedule, keeping the weights after epoch 1."""
    root = tmp_path_factory.mktemp("rewound")
    settings = tiny_settings(root, tiny_dataset, "train.epochs=3", "train.patience=3", 'train.schedule="onecycle"',
                             "train.rewind_epoch=1", METHOD, REGIMES, "prune.rates=[2, 4]", "prune.max_epochs=1",
                             "prune.learning_rate=0.0003")
    return settings, Run(settings.run_dir)


def test_families_are_named_by_the_axes_that_leave_the_study(tiny_dataset, tmp_path):
    settings = tiny_settings(tmp_path, tiny_dataset, METHOD, 'prune.schedule=["iterative", "gradual"]',
                             'prune.retrain=["finetune", "lr_rewind"]', "train.rewind_epoch=1")
    assert list(variants(settings.prune)) == [
        "local_magnitude_unstructured", "local_magnitude_unstructured+lr_rewind",
        "local_magnitude_unstructured+gradual", "local_magnitude_unstructured+gradual+lr_rewind"]


def test_dense_training_keeps_the_weights_of_the_rewind_epoch(tiny_dataset, tmp_path):
    def trained(name, *overrides):
        settings = tiny_settings(tmp_path / name, tiny_dataset, *overrides)
        run_pipeline(settings, Run(settings.run_dir), until="train")
        return settings, Run(settings.run_dir)

    def state(path):
        return load_checkpoint(path)[0].state_dict()

    _, run = trained("kept", "train.epochs=2", "train.rewind_epoch=1")
    _, one = trained("one", "train.epochs=1")  # the same seed, stopped after one epoch: the same weights
    assert load_checkpoint(run.rewind_checkpoint)[1]["meta"]["rewind_epoch"] == 1
    kept, first = state(run.rewind_checkpoint), state(one.dense_checkpoint)
    assert all(torch.equal(kept[k], first[k]) for k in first)

    settings, start = trained("start", "train.epochs=1", "train.rewind_epoch=0")
    torch.manual_seed(settings.train.seed)
    initial = build_model(load_checkpoint(start.dense_checkpoint)[1]["num_classes"], settings.model).state_dict()
    assert all(torch.equal(v, initial[k]) for k, v in state(start.rewind_checkpoint).items())
    assert any(not torch.equal(v, kept[k]) for k, v in initial.items())
    settings = tiny_settings(tmp_path / "start", tiny_dataset, "train.epochs=1")  # retrained without: none kept
    run_pipeline(settings, start, until="train")
    assert not start.rewind_checkpoint.exists()


def test_each_regime_retrains_from_its_weights_with_its_part_of_the_schedule(rewound, monkeypatch):
    settings, run = rewound
    run_pipeline(settings, run, until="train")
    seen, real_fit = {}, schedule.fit

    def recording_fit(model, *args, description, replay, **kwargs):
        seen[description] = (replay, args[2].learning_rate, {k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(model, *args, description=description, replay=replay, **kwargs)

    monkeypatch.setattr(schedule, "fit", recording_fit)
    result = prune_stage(settings, run)
    assert list(result.rows) == ["local_magnitude_unstructured", "local_magnitude_unstructured+lr_rewind",
                                 "local_magnitude_unstructured+weight_rewind"]
    epochs_trained = json.loads(run.train_result.read_text())["epochs_trained"]
    rewind, _ = load_checkpoint(run.rewind_checkpoint)
    for rate in (2, 4):
        replay, rate_lr, _ = seen[f"local_magnitude_unstructured {rate}x"]
        assert replay is None and rate_lr == 0.0003  # fine-tuning: constant, at prune.learning_rate
        replay, rate_lr, start = seen[f"local_magnitude_unstructured+lr_rewind {rate}x"]
        assert replay == Replay(3, epochs_trained - 1) and rate_lr == settings.train.learning_rate
        replay, rate_lr, start = seen[f"local_magnitude_unstructured+weight_rewind {rate}x"]
        assert replay == Replay(3, 1) and rate_lr == settings.train.learning_rate
        masks = load_checkpoint(run.checkpoint(ModelKey.pruned("local_magnitude_unstructured+weight_rewind", rate)))[1]
        for name, value in rewind.state_dict().items():  # the kept epoch's weights, under this rate's masks
            expected = value * masks["masks"][name] if name in masks["masks"] else value
            assert torch.equal(start[name], expected), name
    rows = {name: rows[1:] for name, rows in result.rows.items()}
    for name, family_rows in rows.items():
        assert [float(r["measured_rate_scope"]) for r in family_rows] == pytest.approx([2, 4], rel=2e-3)
        assert {r["retrain"] for r in family_rows} == {variants(settings.prune)[name].retrain}


def test_lr_rewinding_under_a_constant_schedule_is_finetuning_at_the_training_rate(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", METHOD, "prune.rates=[2]", "prune.max_epochs=1",
                             'prune.retrain=["finetune", "lr_rewind"]')
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="prune")
    finetuned, _ = load_checkpoint(run.checkpoint(ModelKey.pruned("local_magnitude_unstructured", 2)))
    rewound, _ = load_checkpoint(run.checkpoint(ModelKey.pruned("local_magnitude_unstructured+lr_rewind", 2)))
    assert all(torch.equal(a, b) for a, b in zip(finetuned.state_dict().values(), rewound.state_dict().values()))


@pytest.mark.parametrize("overrides, message", [
    (['prune.retrain=["weight_rewind"]'], "prune.retrain: weight_rewind resets weights to an epoch of dense training"),
    (['prune.retrain=["weight_rewind"]', "train.rewind_epoch=2", "train.epochs=2"],
     "train.rewind_epoch: 2 is not before the end of training"),
    (['prune.retrain=["lr_rewind"]', "prune.max_epochs=0"], "lr_rewind retrain for prune.max_epochs epochs"),
])
def test_regimes_that_cannot_run_stop_before_training(tmp_path, tiny_dataset, overrides, message):
    settings = tiny_settings(tmp_path, tiny_dataset, *overrides)
    with pytest.raises(UserError, match=message):
        run_pipeline(settings, Run(settings.run_dir))
    assert not Run(settings.run_dir).dense_checkpoint.exists()


def test_weight_rewinding_without_the_kept_epoch_names_the_file(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", METHOD, "prune.rates=[2]")
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="train")
    rewinding = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", METHOD, "prune.rates=[2]",
                              'prune.retrain=["weight_rewind"]', "train.rewind_epoch=0")
    with pytest.raises(UserError, match=r"rewind.pt: no weights of epoch 0 of dense training"):
        prune_stage(rewinding, run)
