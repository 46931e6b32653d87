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

Each row also says what the model costs as it would run: MACs and parameters (Torch-Pruning's counter)
and CPU latency at batch 1. A structured method's model runs without its removed channels (saved
beside the masked checkpoint as `model_removed.pt` with `prune.save_removed`); an unstructured one runs
as the dense architecture, since its zeros shrink no tensor.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunexplain.config import PruneSettings, Settings, UserError, json_digest
from prunexplain.data.loaders import ImageSet, as_trained
from prunexplain.models import check_fits, file_digest, load_checkpoint, model_settings, save_checkpoint
from prunexplain.pruning.calibration import calibration_batch, calibration_gradients
from prunexplain.pruning.cost import model_cost
from prunexplain.pruning.masks import apply_masks, count_nonzero
from prunexplain.pruning.methods import (
    Masks,
    Method,
    compute_masks,
    get_method,
    prunable_groups,
    prunable_weights,
    structured_masks,
)
from prunexplain.pruning.plot import plot_accuracy
from prunexplain.pruning.remove import remove_pruned, save_removed
from prunexplain.runs import ModelKey, Run, fault_point, write_csv
from prunexplain.train import device_for, evaluate, fit, recalibrate_batch_norm, run_loaders

log = logging.getLogger(__name__)

STUDY_COLUMNS = (
    "pruning_method", "sparsity", "modules_pruned_and_finetuned", "pruned_model_path", "batch_size",
    "max_epochs_finetuned", "early_stopping_epoch", "training_accuracy", "validation_accuracy", "time_elapsed",
    "test_top1_accuracy", "test_top5_accuracy",
)
MEASURED_COLUMNS = ("measured_rate_scope", "measured_rate_model", "nonzero_params", "accuracy_before_finetune",
                    "accuracy_after_recalibration", "macs", "params", "latency_ms")


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


def _part(arch: str, scope: str) -> str:
    """The table's `modules_pruned_and_finetuned`: the study's VGG-16 names, else the kinds of layers."""
    if arch == "vgg16":
        return "features" if scope == "conv" else "features+classifier"
    return "conv" if scope == "conv" else "conv+linear"


def _removed(model: nn.Module, masks: Masks, image_size: int) -> tuple[nn.Module, float]:
    """The physically smaller model (on the CPU) and the largest difference between its outputs and the
    masked model's on two random images: float rounding, unless a coupling escaped the masks."""
    masked = copy.deepcopy(model).cpu().eval()
    removed = remove_pruned(masked, masks, image_size)
    x = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = masked(x)
        difference = (removed(x) - expected).abs().max().item()
    if difference > 1e-4 * max(1.0, expected.abs().max().item()):
        log.warning("the physically pruned model's outputs differ from the masked model's by %.3g", difference)
    return removed, difference


def _write_removed(
    run: Run, key: ModelKey, removed: tuple[nn.Module, float] | None, checkpoint: dict[str, Any], masks: Masks,
    image_size: int, meta: dict[str, Any],
) -> None:
    """Save the smaller model beside the rate's checkpoint, or delete one left by other settings."""
    path = run.removed_checkpoint(key)
    if removed is None:
        path.unlink(missing_ok=True)
        return
    model, difference = removed
    save_removed(path, model, model_settings(checkpoint), checkpoint["num_classes"], masks, image_size,
                 {**meta, "removed": {"max_abs_difference": difference}})


def _calibrated(method: Method, model: nn.Module, settings: Settings, train: ImageSet, step: int,
                device: torch.device):
    """The calibration batch's gradients in `.grad` while a gradient-based method scores (drawn from
    `prune.seed` and the step, apart from the random methods' draws); nothing otherwise."""
    if not method.gradients:
        return contextlib.nullcontext()
    draw = torch.Generator().manual_seed(_step_seed(settings.prune.seed, step) + 1)
    images, labels = calibration_batch(train, settings.data, settings.prune.calibration_images, draw, device)
    return calibration_gradients(model, images, labels)


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


def variants(prune: PruneSettings) -> dict[str, tuple[str, str]]:
    """The run's families of pruned models by the name their folders, tables and plots carry: each
    method under each schedule, `<method>+<schedule>`, the iterative one under the method's own name
    (the study's)."""
    return {(method if schedule == "iterative" else f"{method}+{schedule}"): (method, schedule)
            for method in prune.methods for schedule in prune.schedule}


def prune_method(
    name: str, settings: Settings, run: Run, loaders: dict, train: ImageSet, device: torch.device, dense: Path,
    base: str,
) -> list[dict[str, Any]]:
    """The whole schedule of one family of `variants`; returns the results rows (dense first). `train`
    is the training split, from which gradient-based criteria draw their calibration batch.

    Iterative: each rate starts from the model of the rate before; a saved rate is reused only if it
    carries the fingerprint of `base` and the schedule up to it, and no earlier rate was recomputed in
    this call. One-shot: each rate starts from the dense model, and is reused on its own fingerprint.
    """
    criterion, schedule = variants(settings.prune)[name]
    method, prune, size = get_method(criterion), settings.prune, settings.data.image_size
    one_shot = schedule == "one_shot"
    if method.gradients:  # the calibration batch changes only what gradient-based criteria choose
        base += f"calibration_images={prune.calibration_images}"
    model, checkpoint = load_checkpoint(dense, device)
    dense_state = copy.deepcopy(model.state_dict()) if one_shot else None
    meta = checkpoint["meta"]
    weights = prunable_weights(model, prune.scope, prune.exclude)
    groups = prunable_groups(model, size, prune.scope, prune.exclude) if method.unit == "filter" else None
    keep_removed = groups is not None and prune.save_removed
    masks = {k: torch.ones_like(w, dtype=torch.bool, device="cpu") for k, w in weights.items()}
    rows = [{**_dense_row(name, meta), "nonzero_params": count_nonzero(model, weights)["nonzero_params"],
             **model_cost(model, size)}]
    part = _part(checkpoint["arch"], prune.scope)
    classes = meta.get("classes") or [str(i) for i in range(checkpoint["num_classes"])]  # an imported model's
    per_class = {1.0: meta.get("per_class")  # kept by training; an imported model is evaluated here
                 or evaluate(model, loaders["test"], settings.data, device, settings.runtime.amp)["per_class"]}
    recomputed = False
    for step, rate in enumerate(prune.rates):
        key = ModelKey.pruned(name, rate)
        path = run.checkpoint(key)
        fingerprint = rate_fingerprint(base, name, [rate] if one_shot else prune.rates[: step + 1])
        finished = None if recomputed and not one_shot else _finished(path, fingerprint, device)
        if finished is not None:
            loaded, saved = finished  # into the same model: the channel groups hold its layers
            model.load_state_dict(loaded.state_dict())
            masks = saved["masks"]
            if keep_removed != run.removed_checkpoint(key).exists():  # prune.save_removed changed since
                _write_removed(run, key, _removed(model, masks, size) if keep_removed else None, checkpoint,
                               masks, size, saved["meta"])
            rows.append(saved["meta"]["row"])
            if "per_class" in saved["meta"]:  # absent from checkpoints written before the table
                per_class[rate] = saved["meta"]["per_class"]
            log.info("%s %gx: done already", name, rate)
            continue
        recomputed, start = True, time.perf_counter()
        draws = step
        if one_shot:  # from the dense model, drawing as a schedule of this rate alone would
            model.load_state_dict(dense_state)
            masks = {k: torch.ones_like(w, dtype=torch.bool, device="cpu") for k, w in weights.items()}
            draws = 0
        generator = torch.Generator().manual_seed(_step_seed(prune.seed, draws))
        with _calibrated(method, model, settings, train, draws, device):
            masks = (compute_masks(method, weights, masks, rate, generator) if groups is None
                     else structured_masks(method, model, weights, masks, rate, generator, groups))
        apply_masks(model, masks)
        amp = settings.runtime.amp
        before = evaluate(model, loaders["test"], settings.data, device, amp)
        recalibrated = "-"
        if recalibrate_batch_norm(model, loaders["train"], settings.data, device, prune.recalibrate_batches,
                                  _step_seed(settings.train.seed, draws)):
            recalibrated = evaluate(model, loaders["test"], settings.data, device, amp)["top1"]
        fitted = None
        if prune.max_epochs > 0:
            fitted = fit(model, loaders["train"], loaders["valid"], _finetune_settings(settings, draws), settings.data,
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
        removed = _removed(model, masks, size) if groups is not None else None
        row.update(model_cost(removed[0] if removed else model, size))
        per_class[rate] = test["per_class"]
        saved_meta = {**meta, "prune": {"method": name, "rate": rate, "step": step}, "row": row,
                      "per_class": test["per_class"], "fingerprint": fingerprint}
        # the smaller model first: a run killed between the two recomputes the rate and rewrites both
        _write_removed(run, key, removed if keep_removed else None, checkpoint, masks, size, saved_meta)
        save_checkpoint(path, model, model_settings(checkpoint), checkpoint["num_classes"], masks, saved_meta)
        rows.append(row)
        write_csv(run.prune_results(name), rows)
        write_csv(run.prune_per_class(name), per_class_rows(classes, per_class))
        log.info("%s %gx: test top-1 %.4f (before fine-tuning %.4f)", name, rate, test["top1"], before["top1"])
        fault_point(f"rate:{key}")
    write_csv(run.prune_results(name), rows)
    table = per_class_rows(classes, per_class)
    write_csv(run.prune_per_class(name), table)
    if len(per_class) > 1:
        log.info("%s: the classes pruning hurts most at %gx: %s", name, max(per_class),
                 ", ".join(f"{row['class']} ({row['dense']:.2f} -> {row[_rate_column(max(per_class))]:.2f})"
                           for row in table[:3]))
    return rows


def _rate_column(rate: float) -> str:
    return f"cr_{rate:g}"


def per_class_rows(classes: list[str], per_class: dict[float, list[float]]) -> list[dict[str, Any]]:
    """One row per class: its test top-1 accuracy dense and at each rate, the classes that lost the most
    at the highest rate first (pruning can cost a few classes far more than the mean shows: Hooker et
    al. 2019, "What do compressed deep neural networks forget?")."""
    rates = sorted(per_class)
    rows = [{"class": name, "dense": per_class[1.0][i], **{_rate_column(r): per_class[r][i] for r in rates[1:]}}
            for i, name in enumerate(classes)]
    last = _rate_column(rates[-1]) if len(rates) > 1 else "dense"

    def change(row: dict[str, Any]) -> float:
        difference = row[last] - row["dense"]
        return math.inf if math.isnan(difference) else difference  # a class without test images: last

    return sorted(rows, key=change)


def _finished(path: Path, fingerprint: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]] | None:
    """(model, checkpoint) at `path` if an earlier run made it with the same settings."""
    if not path.exists():
        return None
    model, checkpoint = load_checkpoint(path, device)
    return (model, checkpoint) if checkpoint["meta"].get("fingerprint") == fingerprint else None


def retire_unscheduled(settings: Settings, run: Run) -> list[ModelKey]:
    """Move aside the outputs of pruned models that the settings no longer ask for."""
    names = variants(settings.prune)
    wanted = {ModelKey.pruned(m, r) for m in names for r in settings.prune.rates}
    stale = [key for key in run.models() if not key.dense and key not in wanted]
    for key in stale:
        moved = run.retire(key)
        log.warning("%s is no longer in prune.methods x schedule x rates: its outputs moved to %s", key,
                    ", ".join(map(str, moved)))
    for method, table in run.prune_tables().items():
        if method not in names:
            table.unlink()
            run.prune_per_class(method).unlink(missing_ok=True)
    return stale


def prune_stage(settings: Settings, run: Run) -> PruneResult:
    """Every method of `settings.prune` over its schedule, starting from the run's trained model."""
    for name in settings.prune.methods:
        get_method(name, settings.prune.rates)  # unknown names and impossible rates fail before any work
    dense = run.dense_checkpoint
    if not dense.exists():
        raise UserError(f"{dense}: no trained model; run `prunexplain train` (or `prunexplain run`) first")
    device = device_for(settings.runtime)
    splits, loaders = run_loaders(settings, run, device)
    trained = torch.load(dense, map_location="cpu", weights_only=True)
    check_fits(trained, dense, splits.train.classes, settings.data.image_size)
    retire_unscheduled(settings, run)
    # save_removed only adds a file beside each checkpoint: finished rates stay valid when it changes
    # neither do the other families of models, nor the calibration batch of criteria that do not read it
    prune = settings.prune.model_dump(mode="json",
                                      exclude={"methods", "rates", "save_removed", "schedule", "calibration_images"})
    base = settings.fingerprint("data", "model", "train") + json.dumps(prune, sort_keys=True) + file_digest(dense)
    settings = settings.model_copy(update={"data": as_trained(settings.data, trained["meta"]["data"])})
    rows = {name: prune_method(name, settings, run, loaders, splits.train, device, dense, base)
            for name in variants(settings.prune)}
    tables = {name: run.prune_results(name) for name in rows}
    return PruneResult(tables, rows, plot_accuracy(rows, run.accuracy_plot))
