"""Retraining regimes: what a pruned model goes through after each pruning step, before it is scored.

- `finetune` (the study): `prune.max_epochs` epochs at the constant `prune.learning_rate` (or
  `train.learning_rate`), from the pruned weights.
- `lr_rewind` (Renda, Frankle & Carbin 2020, "Comparing rewinding and fine-tuning in neural network
  pruning"): from the pruned weights, the dense run's learning-rate schedule over its last
  `prune.max_epochs` epochs, at `train.learning_rate`. With a constant dense schedule this is
  fine-tuning at `train.learning_rate`.
- `weight_rewind` (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis"):
  the surviving weights (and every other parameter and buffer) reset to their values after
  `train.rewind_epoch` epochs of dense training, then the dense schedule from that epoch on, for
  `prune.max_epochs` epochs. In an iterative schedule, each step still ranks the weights the step
  before trained (iterative magnitude pruning with rewinding).

Every regime keeps the study's early stopping (`prune.patience`) and restore rule, so that only the
named difference differs; set `prune.patience` to `prune.max_epochs` for Renda et al.'s fixed budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from prunexplain.config import Settings, TrainSettings, UserError
from prunexplain.runs import Run
from prunexplain.train import Replay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retraining:
    """How one step's model is retrained: the fit's settings, the part of the dense schedule it replays
    and the weights it starts from (None: the pruned ones)."""

    settings: TrainSettings
    replay: Replay | None = None
    start: dict[str, torch.Tensor] | None = None


def _finetune(settings: Settings, seed: int, dense: dict[str, Any], rewind: dict | None) -> Retraining:
    prune = settings.prune
    return Retraining(_fit_settings(settings, seed, prune.learning_rate or settings.train.learning_rate))


def _lr_rewind(settings: Settings, seed: int, dense: dict[str, Any], rewind: dict | None) -> Retraining:
    start = max(0, dense["train"]["epochs_trained"] - settings.prune.max_epochs)
    return Retraining(_fit_settings(settings, seed, settings.train.learning_rate),
                      Replay(settings.train.epochs, start))


def _weight_rewind(settings: Settings, seed: int, dense: dict[str, Any], rewind: dict | None) -> Retraining:
    assert rewind is not None  # load_rewind gave it
    return Retraining(_fit_settings(settings, seed, settings.train.learning_rate),
                      Replay(settings.train.epochs, rewind["meta"]["rewind_epoch"]), rewind["state_dict"])


REGIMES: dict[str, Callable[[Settings, int, dict[str, Any], dict | None], Retraining]] = {
    "finetune": _finetune,
    "lr_rewind": _lr_rewind,
    "weight_rewind": _weight_rewind,
}


def retraining(regime: str, settings: Settings, seed: int, dense: dict[str, Any], rewind: dict | None) -> Retraining:
    """The retraining of one step under `regime`; `dense` is the dense checkpoint's meta, `rewind` the
    checkpoint of `train.rewind_epoch` (weight rewinding only)."""
    return REGIMES[regime](settings, seed, dense, rewind)


def _fit_settings(settings: Settings, seed: int, learning_rate: float) -> TrainSettings:
    prune = settings.prune
    return settings.train.model_copy(update={
        "seed": seed, "epochs": max(prune.max_epochs, 1), "patience": prune.patience or settings.train.patience,
        "learning_rate": learning_rate,
    })


def check_retrain(settings: Settings) -> None:
    """Refuse regimes that cannot run, before the dense model is trained: rewinding needs epochs to
    retrain, and weight rewinding a kept epoch of dense training."""
    prune, train = settings.prune, settings.train
    rewinding = [regime for regime in prune.retrain if regime != "finetune"]
    if rewinding and prune.max_epochs == 0:
        raise UserError(f"prune.retrain: {', '.join(rewinding)} retrain for prune.max_epochs epochs; set it above 0")
    if "weight_rewind" in prune.retrain:
        if train.rewind_epoch is None:
            raise UserError("prune.retrain: weight_rewind resets weights to an epoch of dense training; set "
                            "train.rewind_epoch (e.g. 1; 0: the initial weights), which retrains the dense model once")
        if train.rewind_epoch >= train.epochs:
            raise UserError(f"train.rewind_epoch: {train.rewind_epoch} is not before the end of training "
                            f"(train.epochs = {train.epochs})")
    if "lr_rewind" in prune.retrain and "finetune" in prune.retrain and train.schedule == "constant" and (
            prune.learning_rate in (None, train.learning_rate)):
        log.warning("prune.retrain: with a constant train.schedule and prune.learning_rate = train.learning_rate, "
                    "lr_rewind retrains exactly as finetune does")


def load_rewind(run: Run, settings: Settings) -> dict | None:
    """The checkpoint weight rewinding resets to, when a regime asks for it."""
    if "weight_rewind" not in settings.prune.retrain:
        return None
    path, wanted = run.rewind_checkpoint, settings.train.rewind_epoch
    if not path.exists():
        raise UserError(f"{path}: no weights of epoch {wanted} of dense training (training stopped earlier, or "
                        "ran without train.rewind_epoch); retrain with `prunexplain train`")
    rewind = torch.load(path, map_location="cpu", weights_only=True)
    if rewind["meta"]["rewind_epoch"] != wanted:
        raise UserError(f"{path}: holds epoch {rewind['meta']['rewind_epoch']}, not train.rewind_epoch = {wanted}")
    return rewind
