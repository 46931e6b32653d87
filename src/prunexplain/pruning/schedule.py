"""Iterative pruning with fine-tuning over a compression schedule, resumable rate by rate.

Step k takes the model of step k-1, prunes the layers in scope down to exactly 1/rates[k] of their
weights, fine-tunes it with masks held fixed (pruned weights are zeroed after every optimiser step,
so they are exactly zero in every forward pass and in the saved state), and saves a checkpoint
with its masks and its results row. A killed run starts again at the first rate without a
checkpoint made with the same settings; `results.csv` is rewritten from those checkpoints.

Each rate's checkpoint carries a fingerprint of what made it: the dense checkpoint, the settings of
data, model, training and pruning, the method and the schedule *up to that rate*. Extending a
schedule (adding 128 after 64) therefore keeps every finished rate; a rate that is recomputed makes
every later one recomputed too, as each starts from the one before. Checkpoints of rates or methods
no longer in the settings are moved under `retired/`, so they are never listed as the run's models.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunexplain.config import Settings, UserError, json_digest
from prunexplain.models import check_fits, file_digest, load_checkpoint, model_settings, save_checkpoint
from prunexplain.pruning.masks import apply_masks, channel_masks, count_nonzero
from prunexplain.pruning.methods import compute_masks, get_method, prunable_weights
from prunexplain.pruning.plot import plot_accuracy
from prunexplain.runs import ModelKey, Run, fault_point, write_csv
from prunexplain.train import device_for, evaluate, fit, recalibrate_batch_norm, run_loaders

log = logging.getLogger(__name__)

STUDY_COLUMNS = (
    "pruning_method", "sparsity", "modules_pruned_and_finetuned", "pruned_model_path", "batch_size",
    "max_epochs_finetuned", "early_stopping_epoch", "training_accuracy", "validation_accuracy", "time_elapsed",
    "test_top1_accuracy", "test_top5_accuracy",
)
MEASURED_COLUMNS = ("measured_rate_scope", "measured_rate_model", "nonzero_params", "accuracy_before_finetune",
                    "accuracy_after_recalibration")


@dataclass
class PruneResult:
    tables: dict[str, Path]
    rows: dict[str, list[dict[str, Any]]]
    plot: Path

    def summary(self) -> str:
        lines = []
        for method, rows in self.rows.items():
            accuracies = ", ".join(f"{r['sparsity']}x {float(r['test_top1_accuracy']):.3f}" for r in rows)
            lines.append(f"{method}: test top-1 {accuracies} ({self.tables[method]})")
        return "\n".join([*lines, f"plot: {self.plot}"])


def _elapsed(seconds: float) -> str:
    """The study's `24m 24s` format."""
    return f"{int(seconds // 60)}m {int(seconds % 60)}s"


def _step_seed(seed: int, step: int) -> int:
    """One seed per (seed, step): a resumed schedule draws what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _dense_row(method: str, meta: dict[str, Any]) -> dict[str, Any]:
    train = meta["train"]
    row = dict.fromkeys(STUDY_COLUMNS + MEASURED_COLUMNS, "-")
    row.update(
        pruning_method=method, sparsity=1, training_accuracy=train["train_accuracy"],
        validation_accuracy=train["valid_accuracy"], test_top1_accuracy=train["test_top1"],
        test_top5_accuracy=train["test_top5"], measured_rate_scope=1.0, measured_rate_model=1.0,
    )
    return row


def _finetune_settings(settings: Settings, step: int):
    prune = settings.prune
    return settings.train.model_copy(
        update={
            "seed": _step_seed(settings.train.seed, step),
            "epochs": max(prune.max_epochs, 1),
            "patience": prune.patience or settings.train.patience,
            "learning_rate": prune.learning_rate or settings.train.learning_rate,
        }
    )


def rate_fingerprint(base: str, name: str, rates: list[float]) -> str:
    """What makes a method's checkpoint at rates[-1]: `base` (dense checkpoint and settings), the
    method and the schedule up to that rate; later rates do not change it."""
    return json_digest([base, name, [f"{r:g}" for r in rates]])


def prune_method(
    name: str, settings: Settings, run: Run, loaders: dict, device: torch.device, dense: Path, base: str
) -> list[dict[str, Any]]:
    """The whole schedule of one method; returns the results rows (dense first).

    A saved rate is reused only if it carries the fingerprint of `base` and the schedule up to it,
    and no earlier rate was recomputed in this call.
    """
    method, prune = get_method(name), settings.prune
    model, checkpoint = load_checkpoint(dense, device)
    meta = checkpoint["meta"]
    weights = prunable_weights(model, prune.scope)
    masks = {k: torch.ones_like(w, dtype=torch.bool, device="cpu") for k, w in weights.items()}
    rows = [{**_dense_row(name, meta), "nonzero_params": count_nonzero(model, weights)["nonzero_params"]}]
    part = "features" if prune.scope == "conv" else "features+classifier"
    recomputed = False
    for step, rate in enumerate(prune.rates):
        key = ModelKey.pruned(name, rate)
        path, fingerprint = run.checkpoint(key), rate_fingerprint(base, name, prune.rates[: step + 1])
        finished = None if recomputed else _finished(path, fingerprint, device)
        if finished is not None:
            model, saved = finished
            weights, masks = prunable_weights(model, prune.scope), saved["masks"]
            rows.append(saved["meta"]["row"])
            log.info("%s %gx: done already", name, rate)
            continue
        recomputed, start = True, time.perf_counter()
        masks = compute_masks(method, weights, masks, rate, torch.Generator().manual_seed(_step_seed(prune.seed, step)))
        if method.unit == "filter":
            masks.update(channel_masks(model, masks))
        apply_masks(model, masks)
        amp = settings.runtime.amp
        before = evaluate(model, loaders["test"], settings.data, device, amp)
        recalibrated = "-"
        if recalibrate_batch_norm(model, loaders["train"], settings.data, device, prune.recalibrate_batches,
                                  _step_seed(settings.train.seed, step)):
            recalibrated = evaluate(model, loaders["test"], settings.data, device, amp)["top1"]
        fitted = None
        if prune.max_epochs > 0:
            fitted = fit(model, loaders["train"], loaders["valid"], _finetune_settings(settings, step), settings.data,
                         device, settings.runtime, after_step=lambda: apply_masks(model, masks),
                         description=f"{name} {rate:g}x")
        # fit restored the weights of the epoch train.restore names (the highest valid accuracy, or the
        # original's last improving epoch) and reports that epoch's valid accuracy: the restored weights'
        if fitted is not None:
            valid = fitted.valid_accuracy
        else:
            valid = evaluate(model, loaders["valid"], settings.data, device, amp)["top1"]
        test = evaluate(model, loaders["test"], settings.data, device, amp)
        row = {
            "pruning_method": name, "sparsity": f"{rate:g}", "modules_pruned_and_finetuned": part,
            "pruned_model_path": str(path), "batch_size": settings.train.batch_size,
            "max_epochs_finetuned": prune.max_epochs, "early_stopping_epoch": fitted.best_epoch if fitted else "-",
            "training_accuracy": fitted.train_accuracy if fitted else "-", "validation_accuracy": valid,
            "time_elapsed": _elapsed(time.perf_counter() - start), "test_top1_accuracy": test["top1"],
            "test_top5_accuracy": test["top5"], **count_nonzero(model, weights),
            "accuracy_before_finetune": before["top1"], "accuracy_after_recalibration": recalibrated,
        }
        save_checkpoint(path, model, model_settings(checkpoint), checkpoint["num_classes"], masks,
                        {**meta, "prune": {"method": name, "rate": rate, "step": step}, "row": row,
                         "fingerprint": fingerprint})
        rows.append(row)
        write_csv(run.prune_results(name), rows)
        log.info("%s %gx: test top-1 %.4f (before fine-tuning %.4f)", name, rate, test["top1"], before["top1"])
        fault_point(f"rate:{key}")
    write_csv(run.prune_results(name), rows)
    return rows


def _finished(path: Path, fingerprint: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]] | None:
    """(model, checkpoint) at `path` if an earlier run made it with the same settings."""
    if not path.exists():
        return None
    model, checkpoint = load_checkpoint(path, device)
    return (model, checkpoint) if checkpoint["meta"].get("fingerprint") == fingerprint else None


def retire_unscheduled(settings: Settings, run: Run) -> list[ModelKey]:
    """Move aside the outputs of pruned models that the settings no longer ask for."""
    wanted = {ModelKey.pruned(m, r) for m in settings.prune.methods for r in settings.prune.rates}
    stale = [key for key in run.models() if not key.dense and key not in wanted]
    for key in stale:
        moved = run.retire(key)
        log.warning("%s is no longer in prune.methods x prune.rates: its outputs moved to %s", key,
                    ", ".join(map(str, moved)))
    for method, table in run.prune_tables().items():
        if method not in settings.prune.methods:
            table.unlink()
    return stale


def prune_stage(settings: Settings, run: Run) -> PruneResult:
    """Every method of `settings.prune` over its schedule, starting from the run's trained model."""
    for name in settings.prune.methods:
        get_method(name)  # unknown names fail before any work
    dense = run.dense_checkpoint
    if not dense.exists():
        raise UserError(f"{dense}: no trained model; run `prunexplain train` (or `prunexplain run`) first")
    device = device_for(settings.runtime)
    splits, loaders = run_loaders(settings, run, device)
    check_fits(torch.load(dense, map_location="cpu", weights_only=True), dense, splits.train.classes,
               settings.data.image_size)
    retire_unscheduled(settings, run)
    prune = settings.prune.model_dump(mode="json", exclude={"methods", "rates"})
    base = settings.fingerprint("data", "model", "train") + json.dumps(prune, sort_keys=True) + file_digest(dense)
    rows = {name: prune_method(name, settings, run, loaders, device, dense, base) for name in settings.prune.methods}
    tables = {name: run.prune_results(name) for name in rows}
    return PruneResult(tables, rows, plot_accuracy(rows, run.accuracy_plot))
