import json

import numpy as np
import pytest
import torch

from prunexplain.config import DataSettings, RuntimeSettings, TrainSettings, UserError
from prunexplain.data.loaders import as_trained, image_dataset, load_splits, with_dataset_statistics
from prunexplain.models import build_model, load_checkpoint
from prunexplain.pruning.schedule import prune_stage
from prunexplain.runs import ModelKey, Run
from prunexplain.train import (
    Replay,
    _scheduler,
    advance,
    evaluate,
    fit,
    make_loader,
    recalibrate_batch_norm,
    train_stage,
)
from tests.conftest import tiny_settings

CPU = torch.device("cpu")


def _loaders(settings, dataset):
    splits = load_splits(dataset)
    make = lambda name, seed=None: make_loader(  # noqa: E731
        image_dataset(getattr(splits, name), settings.data, Run(settings.run_dir).cache_dir, name, settings.runtime),
        16, CPU, seed,
    )
    return make("train", 0), make("valid"), make("test")


def test_train_stage_writes_checkpoint_history_and_results(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, "runtime.results_path=" + json.dumps(str(tmp_path / "out.json")))
    run = Run(settings.run_dir)
    result = train_stage(settings, run)
    model, checkpoint = load_checkpoint(run.root.joinpath("train", "model.pt"))
    assert checkpoint["meta"]["classes"][0] == "0-disk" and checkpoint["meta"]["data"]["image_size"] == 32
    history = run.root.joinpath("train", "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,train_accuracy") and len(history) == 3
    stored = json.loads(run.root.joinpath("train", "result.json").read_text())
    assert stored["test_top1"] == result.test_top1 and stored["epochs_trained"] == 2
    assert 0 <= result.test_top1 <= result.test_top5 <= 1
    train_stage(settings, run)
    assert [r["run"] for r in json.loads((tmp_path / "out.json").read_text())] == ["demo", "demo"]
    # the checkpoint's test accuracy is the model's: evaluating it again gives the same figure
    _, _, test = _loaders(settings, tiny_dataset)
    assert evaluate(model, test, settings.data, CPU)["top1"] == pytest.approx(result.test_top1)


def test_seeded_runs_are_identical_on_the_cpu(tmp_path, tiny_dataset):
    states = []
    for name in ("a", "b"):
        settings = tiny_settings(tmp_path, tiny_dataset, f"run.name={name}")
        train_stage(settings, Run(settings.run_dir))
        states.append(torch.load(settings.run_dir / "train" / "model.pt", weights_only=True)["state_dict"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_fit_learns_and_restores_the_best_weights(tmp_path, tiny_dataset):
    settings = tiny_settings(  # no augmentation, no dropout: 80 images are memorised fast
        tmp_path, tiny_dataset, "train.epochs=12", "train.patience=12", "train.learning_rate=0.003",
        "data.hflip=false", "data.vflip=false", "data.rotation=0", "model.dropout=0",
    )
    train, valid, _ = _loaders(settings, tiny_dataset)
    torch.manual_seed(0)
    model = build_model(10, settings.model)
    before = evaluate(model, train, settings.data, CPU)["loss"]
    result = fit(model, train, valid, settings.train, settings.data, CPU)
    assert min(h["train_loss"] for h in result.history) < before * 0.8
    best = max(h["valid_accuracy"] for h in result.history)
    assert result.valid_accuracy == best == result.history[result.best_epoch]["valid_accuracy"]
    assert evaluate(model, valid, settings.data, CPU)["top1"] == pytest.approx(best)


def test_early_stopping_after_patience_epochs_without_a_one_percent_gain(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=20", "train.patience=3", "train.learning_rate=1e-12",
                             "model.batch_norm=false")  # no running statistics: valid accuracy stays put
    train, valid, _ = _loaders(settings, tiny_dataset)
    torch.manual_seed(0)
    result = fit(build_model(10, settings.model), train, valid, settings.train, settings.data, CPU)
    assert result.epochs_trained == 4 and result.stopped_epoch == 3 and result.best_epoch == 0


def test_frozen_parts_do_not_change_and_unknown_parts_are_named(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, "train.frozen_parts=['features']", "train.epochs=1")
    train, valid, _ = _loaders(settings, tiny_dataset)
    model = build_model(10, settings.model)
    before = {k: v.clone() for k, v in model.features.state_dict().items() if "running" not in k and "tracked" not in k}
    head = model.classifier[6].weight.clone()
    fit(model, train, valid, settings.train, settings.data, CPU)
    assert all(torch.equal(model.features.state_dict()[k], v) for k, v in before.items())
    assert not torch.equal(model.classifier[6].weight, head)
    bad = TrainSettings(frozen_parts=["backbone"], epochs=1)
    message = r"train.frozen_parts: the model has no part 'backbone' \(parts: features, avgpool, classifier\)"
    with pytest.raises(UserError, match=message):
        fit(model, train, valid, bad, DataSettings(), CPU)


# Scripted epochs: the last improving epoch (3), the highest valid accuracy (4) and the highest train
# accuracy (5) are three different epochs; patience 3 stops after epoch 6.
VALID = [0.50, 0.60, 0.605, 0.70, 0.705, 0.65, 0.50]
TRAIN = [0.30, 0.40, 0.50, 0.60, 0.70, 0.90, 0.80]


def _scripted_fit(monkeypatch, restore: str, valid: list[float] = VALID):
    """fit() of a one-layer model whose epochs only move its weights and report the scripted
    accuracies; returns the result, the model, its weights before the fit and after each epoch."""
    import prunexplain.train as train_module

    states, epoch = [], iter(range(len(valid)))

    def train_epoch(model, *args):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(1.0)  # every epoch leaves different weights behind
        return TRAIN[len(states)], 1.0

    def scripted_evaluate(model, *args, **kwargs):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"top1": valid[next(epoch)], "top5": 1.0, "loss": 1.0, "n": 10}

    monkeypatch.setattr(train_module, "_train_epoch", train_epoch)
    monkeypatch.setattr(train_module, "evaluate", scripted_evaluate)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(epochs=20, patience=3, min_improvement=0.01, restore=restore)
    result = fit(model, [], [], settings, DataSettings(), CPU, RuntimeSettings(progress=False))
    return result, model, [start, *states]


def test_last_improvement_restores_and_reports_as_the_original(monkeypatch):
    """The original's rule (helpers.train_model): the reference starts at 0; an epoch improves when its
    valid accuracy beats reference * 1.01, and then becomes the reference; 3 epochs without one stop.
    Kept: the weights of the last improving epoch (3, valid 0.70; epoch 4's 0.705 is higher but no
    1 % gain), its 0-based epoch and valid accuracy, and the best train accuracy of all epochs (0.90)."""
    result, model, states = _scripted_fit(monkeypatch, "last_improvement")
    assert (result.best_epoch, result.stopped_epoch, result.epochs_trained) == (3, 6, 7)
    assert (result.valid_accuracy, result.train_accuracy) == (0.70, 0.90)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in states[1 + 3].items())


def test_best_restores_the_highest_valid_accuracy_with_its_own_figures(monkeypatch):
    """restore='best': the epoch of the highest valid accuracy (4), its train and valid accuracy; the
    same early stopping."""
    result, model, states = _scripted_fit(monkeypatch, "best")
    assert (result.best_epoch, result.stopped_epoch) == (4, 6)
    assert (result.valid_accuracy, result.train_accuracy) == (0.705, 0.70)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in states[1 + 4].items())


def test_last_improvement_keeps_the_start_weights_when_no_epoch_beats_zero(monkeypatch):
    """As the original, which starts from best_val_acc = 0: no epoch above 0 valid accuracy, no
    improvement; the weights the fit started with are kept, reported as epoch -1."""
    result, model, states = _scripted_fit(monkeypatch, "last_improvement", [0.0] * 7)
    assert (result.best_epoch, result.stopped_epoch, result.valid_accuracy) == (-1, 2, 0.0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in states[0].items())


def test_onecycle_warms_up_to_the_learning_rate_and_anneals_over_all_epochs(tmp_path, tiny_dataset, monkeypatch):
    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=3", "train.patience=3", "train.schedule=onecycle",
                             "train.learning_rate=0.002")
    train, valid, _ = _loaders(settings, tiny_dataset)
    made = []
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **k: made.append(adam(*a, **k)) or made[-1])
    rates: list[float] = []  # after each step: the rate the next step uses
    fit(build_model(10, settings.model), train, valid, settings.train, settings.data, CPU,
        after_step=lambda: rates.append(made[0].param_groups[0]["lr"]))
    steps = 3 * len(train)
    assert len(rates) == steps
    peak = int(np.argmax(rates))
    assert max(rates) == pytest.approx(0.002, rel=0.05) and 0.2 * steps <= peak <= 0.4 * steps
    assert rates[0] < 0.002 / 3 and rates[-1] < 0.002 / 20
    assert TrainSettings().schedule == "constant"


def test_batch_norm_recalibration_averages_the_statistics_of_its_batches(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset)
    train, _, _ = _loaders(settings, tiny_dataset)
    model = build_model(10, settings.model)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    handle = first.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    try:
        layers = recalibrate_batch_norm(model, train, settings.data, CPU, batches=2, seed=3)
    finally:
        handle.remove()
    assert layers == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) and len(seen) == 2
    means = torch.stack([x.mean((0, 2, 3)) for x in seen])
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(1, unbiased=True) for x in seen])
    assert torch.allclose(first.running_mean, means.mean(0), atol=1e-5)  # an equal-weight average of the batches
    assert torch.allclose(first.running_var, variances.mean(0), rtol=1e-4, atol=1e-6)
    assert first.momentum == 0.1 and not model.training  # the layers' momentum and eval mode restored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # no weight changed
    again = build_model(10, settings.model)
    again.load_state_dict(model.state_dict())
    recalibrate_batch_norm(again, train, settings.data, CPU, batches=2, seed=3)
    assert torch.equal(next(m for m in again.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean,
                       first.running_mean)  # the seed decides the batches


def test_dataset_statistics_are_computed_once_kept_in_the_checkpoint_and_used_after(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, 'data.normalize="dataset"',
                             "prune.methods=['local_l1_structured']", "prune.rates=[2]")
    run = Run(settings.run_dir)
    result = train_stage(settings, run)
    model, checkpoint = load_checkpoint(run.dense_checkpoint)
    train, _, test = _loaders(settings, tiny_dataset)
    expected = with_dataset_statistics(settings.data, train.dataset)
    stored = checkpoint["meta"]["data"]
    assert stored["normalize"] == "dataset" and stored["mean"] == expected.mean and stored["std"] == expected.std
    assert 0.05 < min(stored["std"]) and len(set(stored["mean"])) == 3  # the images' own, not ImageNet's
    trained = as_trained(settings.data, stored)
    assert evaluate(model, test, trained, CPU)["top1"] == pytest.approx(result.test_top1)
    # later stages read the statistics from the checkpoint: pruning fine-tunes and evaluates with them
    prune_stage(settings, run)
    _, pruned = load_checkpoint(run.checkpoint(ModelKey.pruned("local_l1_structured", 2)))
    assert pruned["meta"]["data"] == stored


def test_a_replayed_schedule_is_the_tail_of_the_dense_one_and_holds_its_last_rate():
    """Rewinding replays the dense fit's one-cycle schedule from an epoch on: the learning rates (and
    Adam's beta1, which the cycle moves too) are torch's own over the whole schedule, from that epoch."""
    settings = TrainSettings(epochs=5, schedule="onecycle", learning_rate=0.01)

    def rates(replay, steps):
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=settings.learning_rate)
        scheduler = _scheduler(optimizer, settings, 4, replay)
        seen = []
        for _ in range(steps):
            seen.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"][0]))
            optimizer.step()
            advance(scheduler)
        return seen

    whole = rates(None, 20)
    assert rates(Replay(5, 3), 8) == whole[12:]
    tail = rates(Replay(5, 3), 12)  # two epochs past the dense schedule's end: its last rate held
    assert tail[8:] == [whole[19]] * 4
    assert _scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
                      TrainSettings(schedule="constant"), 4, Replay(5, 3)) is None
