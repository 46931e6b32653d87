"""Pruning over a compression schedule with retraining after each step, resumable rate by rate.

Each family of models (`variants`: a criterion under a schedule and a retraining regime) goes through
the rates. Step k takes the model of step k-1 (iterative, gradual) or the dense model (one-shot),
prunes the layers in scope down to exactly 1/rates[k] of their weights (at once, or along the gradual
ramp while training: `gradual.py`), retrains it as its regime says (`retrain.py`) with masks held
fixed (pruned weights are zeroed after every optimiser step, so they are exactly zero in every forward
pass and in the saved state), and saves a checkpoint with its masks and its results row. A killed
run starts again at the first rate without a checkpoint made with the same settings; `results.csv` is
rewritten from those checkpoints.

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
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from prunexplain.config import PruneSettings, Settings, UserError, json_digest
from prunexplain.data.loaders import ImageSet, as_trained
from prunexplain.models import check_fits, file_digest, load_checkpoint, model_settings, save_checkpoint
from prunexplain.pruning.calibration import calibration_batch, calibration_gradients
from prunexplain.pruning.cost import model_cost
from prunexplain.pruning.gradual import prune_gradually, ramp_rates
from prunexplain.pruning.masks import apply_masks, count_nonzero
from prunexplain.pruning.methods import (
    BLOCK,
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
from prunexplain.pruning.retrain import check_retrain, load_rewind, retraining
from prunexplain.runs import ModelKey, Run, fault_point, write_csv, write_json
from prunexplain.train import device_for, evaluate, fit, recalibrate_batch_norm, run_loaders, train_steps

log = logging.getLogger(__name__)

STUDY_COLUMNS = (
    "pruning_method", "sparsity", "modules_pruned_and_finetuned", "pruned_model_path", "batch_size",
    "max_epochs_finetuned", "early_stopping_epoch", "training_accuracy", "validation_accuracy", "time_elapsed",
    "test_top1_accuracy", "test_top5_accuracy",
)
MEASURED_COLUMNS = ("measured_rate_scope", "measured_rate_model", "nonzero_params", "accuracy_before_finetune",
                    "accuracy_after_recalibration", "macs", "params", "latency_ms")
# Prune settings that decide only some families (`_family_inputs`) or none (save_removed, names, rates)
FAMILY_SETTINGS = {"methods", "rates", "save_removed", "schedule", "retrain", "calibration_images", "gradual_steps",
                   "gradual_frequency"}


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


def _step_seed(seed: int, *step: int) -> int:
    """One seed per (seed, step, ...): a resumed schedule draws what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, *step]).generate_state(1)[0])


def _dense_row(method: str, family: Family, meta: dict[str, Any]) -> dict[str, Any]:
    train = meta["train"]
    row = {**dict.fromkeys(STUDY_COLUMNS + MEASURED_COLUMNS, "-"), **family._asdict()}
    row.update(
        pruning_method=method, sparsity=1, training_accuracy=train["train_accuracy"],
        validation_accuracy=train["valid_accuracy"], test_top1_accuracy=train["test_top1"],
        test_top5_accuracy=train["test_top5"], measured_rate_scope=1.0, measured_rate_model=1.0,
    )
    return row


def _all_kept(weights: dict[str, torch.Tensor]) -> Masks:
    """Masks keeping every weight in scope: the dense model's, where each schedule starts."""
    return {k: torch.ones_like(w, dtype=torch.bool, device="cpu") for k, w in weights.items()}


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


def _calibrated(method: Method, model: nn.Module, settings: Settings, train: ImageSet, draw: tuple[int, ...],
                device: torch.device):
    """The calibration batch's gradients in `.grad` while a gradient-based method scores (drawn from
    `prune.seed` and the step's `draw`, apart from the random methods' draws); nothing otherwise."""
    if not method.gradients:
        return contextlib.nullcontext()
    generator = torch.Generator().manual_seed(_step_seed(settings.prune.seed, *draw) + 1)
    images, labels = calibration_batch(train, settings.data, settings.prune.calibration_images, generator, device)
    return calibration_gradients(model, images, labels)


def rate_fingerprint(base: str, name: str, rates: list[float]) -> str:
    """What makes a method's checkpoint at rates[-1]: `base` (dense checkpoint and settings), the
    method and the schedule up to that rate; later rates do not change it."""
    return json_digest([base, name, [f"{r:g}" for r in rates]])


class Family(NamedTuple):
    """A family of pruned models: one criterion under one schedule and one retraining regime."""

    criterion: str
    schedule: str
    retrain: str


def variants(prune: PruneSettings) -> dict[str, Family]:
    """The run's families of pruned models by the name their folders, tables and plots carry: each
    method under each schedule and regime, `<method>+<schedule>+<regime>`, leaving out the study's
    iterative schedule and fine-tuning (so the study's families keep the method's own name)."""
    families = {}
    for criterion in prune.methods:
        for schedule in prune.schedule:
            for regime in prune.retrain:
                parts = [part for part, study in ((schedule, "iterative"), (regime, "finetune")) if part != study]
                families["+".join([criterion, *parts])] = Family(criterion, schedule, regime)
    return families


def _family_inputs(family: Family, method: Method, prune: PruneSettings, run: Run) -> str:
    """What decides a family's models beyond the settings every family shares: the settings only its
    criterion, schedule or regime reads, and the dense epoch weight rewinding resets to."""
    inputs = {}
    if method.gradients:
        inputs["calibration_images"] = prune.calibration_images
    if family.schedule == "gradual":
        inputs.update(gradual_steps=prune.gradual_steps, gradual_frequency=prune.gradual_frequency)
    if family.retrain == "weight_rewind":
        inputs["rewind"] = file_digest(run.rewind_checkpoint)
    return json.dumps(inputs, sort_keys=True) if inputs else ""


@dataclass
class _Pruning:
    """What every step of one family works on: its model (moved from rate to rate), the weights and
    channel groups in scope, and the data and settings it prunes and retrains with."""

    name: str
    family: Family
    method: Method
    model: nn.Module
    weights: dict[str, torch.Tensor]
    groups: list | None
    settings: Settings
    loaders: dict
    train: ImageSet
    device: torch.device

    def prune_to(self, masks: Masks, rate: float, generator: torch.Generator, draw: tuple[int, ...]) -> Masks:
        """Masks at exactly `rate`, from the model's weights as they are now; applied to the model."""
        with _calibrated(self.method, self.model, self.settings, self.train, draw, self.device):
            masks = (compute_masks(self.method, self.weights, masks, rate, generator) if self.groups is None
                     else structured_masks(self.method, self.model, self.weights, masks, rate, generator, self.groups))
        apply_masks(self.model, masks)
        return masks

    def step(self, masks: Masks, before: float, rate: float, draws: int) -> Masks:
        """One step of the schedule, from masks at rate `before` to masks at `rate`: at once, or along the
        gradual ramp while training at the fine-tuning learning rate."""
        generator = torch.Generator().manual_seed(_step_seed(self.settings.prune.seed, draws))
        if self.family.schedule != "gradual":
            return self.prune_to(masks, rate, generator, (draws,))
        prune, train_seed = self.settings.prune, _step_seed(self.settings.train.seed, draws, 1)
        ramp = retraining("finetune", self.settings, train_seed, {}, None).settings

        def train(steps: int, after_step) -> None:
            train_steps(self.model, self.loaders["train"], ramp, self.settings.data, self.device, self.settings.runtime,
                        steps, after_step, f"{self.name} {rate:g}x ramp")

        rates = ramp_rates(before, rate, prune.gradual_steps)
        return prune_gradually(self.model, masks, rates, prune.gradual_frequency,
                               lambda current, target, j: self.prune_to(current, target, generator, (draws, j)), train)

    def retrain(self, masks: Masks, rate: float, draws: int, dense: dict[str, Any], rewind: dict | None):
        """The family's retraining regime with the masks held; None when prune.max_epochs is 0."""
        settings = self.settings
        if settings.prune.max_epochs == 0:
            return None
        plan = retraining(self.family.retrain, settings, _step_seed(settings.train.seed, draws), dense, rewind)
        if plan.start is not None:
            self.model.load_state_dict(plan.start)
            apply_masks(self.model, masks)
        return fit(self.model, self.loaders["train"], self.loaders["valid"], plan.settings, settings.data, self.device,
                   settings.runtime, after_step=lambda: apply_masks(self.model, masks),
                   description=f"{self.name} {rate:g}x", replay=plan.replay)


def prune_method(
    name: str, settings: Settings, run: Run, loaders: dict, train: ImageSet, device: torch.device, dense: Path,
    base: str, rewind: dict | None = None,
) -> list[dict[str, Any]]:
    """The whole schedule of one family of `variants`; returns the results rows (dense first). `train`
    is the training split, from which gradient-based criteria draw their calibration batch; `rewind`
    the checkpoint weight rewinding resets to.

    Iterative and gradual: each rate starts from the model of the rate before; a saved rate is reused
    only if it carries the fingerprint of `base` and the schedule up to it, and no earlier rate was
    recomputed in this call. One-shot: each rate starts from the dense model, and is reused on its own
    fingerprint.
    """
    family = variants(settings.prune)[name]
    method, prune, size = get_method(family.criterion), settings.prune, settings.data.image_size
    chained = family.schedule != "one_shot"
    base += _family_inputs(family, method, prune, run)
    model, checkpoint = load_checkpoint(dense, device)
    dense_state = None if chained else copy.deepcopy(model.state_dict())
    meta = checkpoint["meta"]
    weights = prunable_weights(model, prune.scope, prune.exclude)
    groups = prunable_groups(model, size, prune.scope, prune.exclude) if method.unit == "filter" else None
    pruning = _Pruning(name, family, method, model, weights, groups, settings, loaders, train, device)
    keep_removed = groups is not None and prune.save_removed
    masks = _all_kept(weights)
    rows = [{**_dense_row(name, family, meta), "nonzero_params": count_nonzero(model, weights)["nonzero_params"],
             **model_cost(model, size)}]
    part = _part(checkpoint["arch"], prune.scope)
    classes = meta.get("classes") or [str(i) for i in range(checkpoint["num_classes"])]  # an imported model's
    dense_test = ({"per_class": meta["per_class"], "correct": meta["test_correct"]}  # kept by training
                  if "per_class" in meta and "test_correct" in meta  # else an imported model, evaluated here
                  else evaluate(model, loaders["test"], settings.data, device, settings.runtime.amp))
    per_class, correct = {1.0: dense_test["per_class"]}, {1.0: dense_test["correct"]}
    recomputed = False
    for step, rate in enumerate(prune.rates):
        key = ModelKey.pruned(name, rate)
        path = run.checkpoint(key)
        fingerprint = rate_fingerprint(base, name, prune.rates[: step + 1] if chained else [rate])
        finished = None if recomputed and chained else _finished(path, fingerprint, device)
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
            if "test_correct" in saved["meta"]:  # absent from checkpoints written before the verdict
                correct[rate] = saved["meta"]["test_correct"]
            log.info("%s %gx: done already", name, rate)
            continue
        recomputed, start = True, time.perf_counter()
        draws, before_rate = step, (prune.rates[step - 1] if step else 1.0)
        if not chained:  # from the dense model, drawing as a schedule of this rate alone would
            model.load_state_dict(dense_state)
            masks = _all_kept(weights)
            draws, before_rate = 0, 1.0
        masks = pruning.step(masks, before_rate, rate, draws)
        amp = settings.runtime.amp
        before = evaluate(model, loaders["test"], settings.data, device, amp)
        recalibrated = "-"
        if recalibrate_batch_norm(model, loaders["train"], settings.data, device, prune.recalibrate_batches,
                                  _step_seed(settings.train.seed, draws)):
            recalibrated = evaluate(model, loaders["test"], settings.data, device, amp)["top1"]
        fitted = pruning.retrain(masks, rate, draws, meta, rewind)
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
            **family._asdict(),
        }
        removed = _removed(model, masks, size) if groups is not None else None
        row.update(model_cost(removed[0] if removed else model, size))
        per_class[rate], correct[rate] = test["per_class"], test["correct"]
        saved_meta = {**meta, "prune": {"method": name, "rate": rate, "step": step}, "row": row,
                      "per_class": test["per_class"], "test_correct": test["correct"], "fingerprint": fingerprint}
        # the smaller model first: a run killed between the two recomputes the rate and rewrites both
        _write_removed(run, key, removed if keep_removed else None, checkpoint, masks, size, saved_meta)
        save_checkpoint(path, model, model_settings(checkpoint), checkpoint["num_classes"], masks, saved_meta)
        rows.append(row)
        write_csv(run.prune_results(name), rows)
        write_csv(run.prune_per_class(name), per_class_rows(classes, per_class))
        log.info("%s %gx: test top-1 %.4f (before retraining %.4f)", name, rate, test["top1"], before["top1"])
        fault_point(f"rate:{key}")
    write_csv(run.prune_results(name), rows)
    write_json(run.prune_correct(name), {f"{rate:g}": answers for rate, answers in sorted(correct.items())})
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
            run.prune_correct(method).unlink(missing_ok=True)
    return stale


def check_schedules(settings: Settings) -> None:
    """Every family can run: known criteria at rates they can reach (the gradual ramp's too) and
    regimes that have what they need."""
    for family in variants(settings.prune).values():
        method = get_method(family.criterion, settings.prune.rates)
        if family.schedule == "gradual" and method.ranking == "blocks":
            raise UserError(f"prune.schedule: gradual passes through rates between those of prune.rates, which "
                            f"{family.criterion} cannot reach (it keeps a whole number of every {BLOCK} weights); "
                            "prune it iterative or one_shot")
    check_retrain(settings)


def prune_stage(settings: Settings, run: Run) -> PruneResult:
    """Every method of `settings.prune` over its schedule, starting from the run's trained model; the
    outputs of methods and rates no longer scheduled are retired first."""
    check_schedules(settings)  # unknown names, impossible rates and regimes fail before any work
    retire_unscheduled(settings, run)
    rows = prune_methods(settings, run, variants(settings.prune))
    tables = {name: run.prune_results(name) for name in rows}
    return PruneResult(tables, rows, plot_accuracy(rows, run.accuracy_plot))


def prune_methods(settings: Settings, run: Run, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The named methods (of `variants(settings.prune)`), each one pruning chain over its schedule: a job
    backend runs the chains side by side, and a later `prune_stage` finds their rates finished (each
    pruned checkpoint keeps the fingerprint of what made it)."""
    check_schedules(settings)
    dense = run.dense_checkpoint
    if not dense.exists():
        raise UserError(f"{dense}: no trained model; run `prunexplain train` (or `prunexplain run`) first")
    rewind = load_rewind(run, settings)
    device = device_for(settings.runtime)
    splits, loaders = run_loaders(settings, run, device)
    trained = torch.load(dense, map_location="cpu", weights_only=True)
    check_fits(trained, dense, splits.train.classes, settings.data.image_size)
    # save_removed only adds a file beside each checkpoint: finished rates stay valid when it changes
    # neither do the other families of models, nor the calibration batch of criteria that do not read it
    prune = settings.prune.model_dump(mode="json", exclude=FAMILY_SETTINGS)
    base = settings.fingerprint("data", "model", "train") + json.dumps(prune, sort_keys=True) + file_digest(dense)
    settings = settings.model_copy(update={"data": as_trained(settings.data, trained["meta"]["data"])})
    return {name: prune_method(name, settings, run, loaders, splits.train, device, dense, base, rewind)
            for name in names}
