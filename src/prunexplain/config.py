"""Typed settings of every stage, read from TOML files and the reference's named-run JSON.

The defaults describe the demo (compact VGG-16 on the embedded synthetic dataset), so a run with no
configuration works on a CPU. `examples/study.toml` holds the reproduced study's settings. Every
error a user can cause here becomes one `UserError` line that names the file, the key and the value.

Settings are strict about types: a string is not a number and a boolean is not an integer (an int
still fills a float field), and no float may be `nan` or `inf` (TOML spells both). `--set KEY=none`
(the bare word) unsets an optional setting, the one spelling for None since TOML has no null; a field
that cannot be None keeps the text 'none', and `KEY='"none"'` is always the text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tomllib
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prunexplain.errors import UserError
from prunexplain.experiments import EXPERIMENTS, KINDS, first_of_each_kind
from prunexplain.runs import safe_run_name

log = logging.getLogger(__name__)


class _Section(BaseModel):
    """Strict, so `"2"` and `true` are refused where a number is meant instead of quietly converted;
    finite, so a typo'd `nan` or `inf` rate or rotation is refused before any work."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


# A path from TOML is a string: path fields alone take strings (strict mode wants Path objects).
PathSetting = Annotated[Path, Field(strict=False)]


SectionT = TypeVar("SectionT", bound=BaseModel)


class SyntheticSettings(_Section):
    """The embedded default dataset: generated from a seed, never downloaded."""

    seed: int = 0
    train_per_class: int = Field(360, ge=1)
    val_per_class: int = Field(120, ge=1)
    distractors: int = Field(2, ge=0, le=30, description="clutter items (lines, arcs, zigzags, dots) per image")
    object_size: list[float] = Field(
        default_factory=lambda: [0.16, 0.26], description="[min, max] radius of the class object, share of the side"
    )

    @field_validator("object_size")
    @classmethod
    def _radius_range(cls, size: list[float]) -> list[float]:
        if len(size) != 2 or not 0.05 <= size[0] <= size[1] <= 0.4:
            raise ValueError("give [min, max] with 0.05 <= min <= max <= 0.4")
        return size


class DataSettings(_Section):
    dataset: Literal["synthetic", "imagenette", "imagefolder"] = Field(
        "synthetic", description="synthetic (embedded), imagenette, or imagefolder: any folder of class folders"
    )
    root: PathSetting | None = Field(None, description="dataset folder; None: <run>/data/synthetic")
    image_size: int = Field(64, ge=32, le=512, description="square side the model sees, pixels")
    split_seed: int = Field(69, description="seed of the val/ -> test/valid split (the study's 69)")
    split: list[float] = Field(
        default_factory=lambda: [0.7, 0.1, 0.2],
        description="train, valid, test shares of an imagefolder root without train/ and val/ (per class)",
    )
    hflip: bool = True
    vflip: bool = True
    rotation: float = Field(10.0, ge=0, le=180, description="max random rotation, degrees")
    normalize: bool | Literal["imagenet", "dataset"] = Field(
        False,
        description="mean/std normalisation: false (none, the study's), true or 'imagenet' (ImageNet's, for "
        "ImageNet weights), or 'dataset' (the training split's, computed once when training; kept in the checkpoint)",
    )
    mean: list[float] | None = Field(
        None, description="per-channel mean of normalize='dataset' (None: computed from the training split)"
    )
    std: list[float] | None = Field(
        None, description="per-channel std of normalize='dataset' (None: computed from the training split)"
    )
    augment_at: Literal["image_size", "full_size"] = Field(
        "image_size",
        description="image_size: flips and rotation (bilinear) on the resized images, batched on the device; "
        "full_size: per image before resizing, rotation nearest with black fill (the original's)",
    )
    synthetic: SyntheticSettings = SyntheticSettings()

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, value: list[float] | None, info) -> list[float] | None:
        if value is not None and (len(value) != 3 or (info.field_name == "std" and min(value) <= 0)):
            raise ValueError(f"give three values (red, green, blue){', all positive' * (info.field_name == 'std')}, "
                             f"not {value}")
        return value

    @model_validator(mode="after")
    def _statistics_of_the_dataset(self) -> DataSettings:
        if (self.mean is None) != (self.std is None):
            raise ValueError("data.mean and data.std: give both or neither")
        if self.mean is not None and self.normalize != "dataset":
            raise ValueError(f"data.mean and data.std are the statistics of normalize='dataset', not of "
                             f"normalize={self.normalize!r}")
        return self

    @field_validator("split")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if len(value) != 3 or min(value) <= 0 or abs(sum(value) - 1) > 1e-6:
            raise ValueError(f"give three positive shares (train, valid, test) that sum to 1, not {value}")
        return value


class ModelSettings(_Section):
    """`width`, `pool_size` and `batch_norm` shape prunexplain's `vgg16` only; other architectures are
    torchvision's or timm's as published, with the head replaced for the dataset's classes."""

    arch: str = Field(
        "vgg16", description="vgg16 (prunexplain's, shaped by width/pool_size/batch_norm), any torchvision "
        "classification model (resnet18, mobilenet_v3_small, ...), or timm/<name> with the timm extra",
    )
    width: float = Field(0.125, gt=0, le=1, description="channel width multiplier (1 = torchvision)")
    pool_size: int = Field(
        1, ge=1, le=7,
        description="side of the pooled map fed to the classifier (7: torchvision's VGG-16; 1: global average "
        "pooling, whose translation-invariant head makes the compact model's Grad-CAM maps find the object)",
    )
    batch_norm: bool = Field(
        True, description="BN after each conv: the narrow model does not train from scratch without it"
    )
    dropout: float = Field(0.5, ge=0, lt=1)
    weights: str | None = Field(
        None, description="'imagenet', a local state-dict file, or None: from scratch (--set model.weights=none)"
    )


class TrainSettings(_Section):
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(45, ge=1)
    optimizer: Literal["SGD", "Adam"] = "Adam"
    learning_rate: float = Field(0.001, gt=0)
    schedule: Literal["constant", "onecycle"] = Field(
        "constant",
        description="learning rate over a fit: constant (the study), or onecycle (warm up to learning_rate over "
        "the first 30 % of the epochs' steps, then anneal to near zero: fewer epochs reach the same accuracy)",
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(10, ge=1, description="epochs without improvement before stopping")
    min_improvement: float = Field(0.01, ge=0, description="relative gain of valid accuracy that counts")
    frozen_parts: list[str] = Field(default_factory=list, description="e.g. ['features'] (study: vgg_no_train_parts)")
    restore: Literal["best", "last_improvement"] = Field(
        "best",
        description="weights kept after a fit: best (highest valid accuracy), or last_improvement (the last "
        "epoch that beat the reference by min_improvement, the original's; training_accuracy is then the best "
        "over all epochs)",
    )
    rewind_epoch: int | None = Field(
        None, ge=0, description="also keep the weights after this many epochs (0: the initial weights) for "
        "prune.retrain = weight_rewind, in train/rewind.pt; None: keep none",
    )
    seed: int = 0


class RuntimeSettings(_Section):
    """How work runs, never what it computes: left out of every fingerprint, so changing one of these
    on a finished run reruns nothing."""

    device: str = Field("auto", description="auto (cuda, then cpu), cpu, cuda, cuda:1 ...")
    amp: bool = Field(True, description="mixed precision on cuda")
    channels_last: bool = Field(True, description="channels_last memory format on cuda")
    progress: bool = Field(True, description="progress bars")
    num_workers: int = Field(0, ge=0, description="data loader worker processes")
    threads: int | None = Field(None, ge=1, description="CPU threads of torch; None: torch's default (a job "
                                "backend: the cores divided among its workers)")
    deterministic: bool = Field(False, description="torch's deterministic algorithms: equal results in every "
                                "backend and process, at some speed")
    cache: bool = Field(True, description="decode images once into a memory-mapped uint8 array")
    cache_dir: PathSetting | None = Field(None, description="None: <run>/cache")
    model_path: PathSetting | None = Field(
        None, description="also save the trained checkpoint here (study: model_path)"
    )
    results_path: PathSetting | None = Field(
        None, description="append training results to this JSON array (study: results_path)"
    )


class ClusterSettings(_Section):
    """`prunexplain run --backend slurm`: what each Slurm job asks for (how work runs: in no fingerprint)."""

    executor: Literal["slurm", "local"] = Field("slurm", description="local: submitit's local processes (tests)")
    partition: str | None = Field(None, description="Slurm partition; None: the cluster's default")
    time_minutes: int = Field(240, ge=1, description="each job's time limit; a preempted job is requeued")
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_job: int = Field(4, ge=1)


# Runtime keys that older settings files set in their stage sections: read there with one warning.
_MOVED_TO_RUNTIME = {
    "train": ("device", "amp", "channels_last", "progress", "model_path", "results_path"),
    "data": ("cache", "cache_dir", "num_workers"),
}


def _each_once(names: list[str], what: str) -> list[str]:
    """A list setting of names: at least one, none twice (a family would be computed twice)."""
    if not names or len(set(names)) < len(names):
        raise ValueError(f"give each {what} once, and at least one: {names}")
    return names


class PruneSettings(_Section):
    """Pruning to each rate: after step k the layers in scope keep 1/rates[k] of their weights."""

    methods: list[str] = Field(
        default_factory=lambda: ["local_magnitude_unstructured", "local_random_unstructured"],
        description="names in prunexplain.pruning.methods.METHODS (README, Pruning)",
    )
    schedule: list[Literal["iterative", "one_shot", "gradual"]] = Field(
        default_factory=lambda: ["iterative"],
        description="iterative: each rate pruned from the one before, retrained after each step (the study); "
        "one_shot: each rate pruned from the dense model in one step, retrained once; gradual: from the rate "
        "before to each rate along Zhu & Gupta's cubic ramp while training (gradual_steps pruning steps, "
        "gradual_frequency optimiser steps apart), then retrained. A schedule other than iterative names its "
        "models '<method>+<schedule>'",
    )
    retrain: list[Literal["finetune", "lr_rewind", "weight_rewind"]] = Field(
        default_factory=lambda: ["finetune"],
        description="after each step: finetune (max_epochs at prune.learning_rate, the study); lr_rewind (the "
        "dense run's learning-rate schedule over its last max_epochs epochs, Renda et al. 2020); weight_rewind "
        "(surviving weights reset to train.rewind_epoch's, then that schedule from there). A regime other than "
        "finetune adds '+<regime>' to its models' name",
    )
    gradual_steps: int = Field(10, ge=1, description="gradual schedule: pruning steps from one rate to the next")
    gradual_frequency: int = Field(10, ge=1, description="gradual schedule: optimiser steps between pruning steps")
    rates: list[float] = Field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    scope: Literal["conv", "conv_linear"] = Field("conv", description="Conv2d layers (the study), or Linear too")
    exclude: list[str] = Field(
        default_factory=list, description="module name patterns (fnmatch) never pruned, e.g. ['conv1', 'fc']"
    )
    max_epochs: int = Field(50, ge=0, description="retraining epochs after each step, at most (every regime)")
    patience: int | None = Field(None, ge=1, description="None: train.patience")
    learning_rate: float | None = Field(None, gt=0, description="None: train.learning_rate")
    seed: int = Field(0, description="seed of the random methods")
    recalibrate_batches: int = Field(
        0, ge=0, description="training batches that recompute the batch-norm statistics after each pruning step, "
        "before fine-tuning (0: none, as the study)",
    )
    calibration_images: int = Field(
        64, ge=1, description="training images whose loss gradients the Taylor and SNIP criteria read, drawn "
        "from prune.seed at each step",
    )
    save_removed: bool = Field(
        True, description="for structured methods, also save the physically smaller model (model_removed.pt)"
    )

    @field_validator("methods", "schedule", "retrain")
    @classmethod
    def _listed_once(cls, names: list[str]) -> list[str]:
        return _each_once(names, "name")

    @field_validator("rates")
    @classmethod
    def _increasing_above_one(cls, rates: list[float]) -> list[float]:
        if not rates:
            raise ValueError("give at least one rate")
        if not all(math.isfinite(rate) for rate in rates):  # allow_inf_nan refuses them first; the contract
            raise ValueError("rates must be finite numbers")
        if rates[0] <= 1:
            raise ValueError(f"rates must be > 1, got {rates[0]:g}")
        for before, after in zip(rates, rates[1:]):
            if after <= before:
                raise ValueError(f"rates must increase strictly, got {before:g} then {after:g}")
        return rates


class ExplainSettings(_Section):
    """Explanations of every model of a run on the same test images."""

    methods: list[str] = Field(
        default_factory=lambda: ["gradcam"],
        description="explanation methods, each evaluated and reported: gradcam (own, batched), the grad-cam "
        "library's CAMs, Captum's attributions and zennit's LRP (README, Explanations)",
    )
    images: int = Field(40, ge=1, description="the first N images of the test split")
    models: list[str] = Field(default_factory=list, description="[]: all; else 'dense', '<method>/cr_<rate>'")
    target_layer: str | None = Field(
        None, description="None: the last layer that outputs a spatial map (traced; VGG-16: the last of features)"
    )
    batch_size: int = Field(32, ge=1)
    render: bool = Field(False, description="also write occlusion and heatmap PNGs")
    occlusion: float = Field(0.10, gt=0, le=1, description="share of pixels left visible")
    heatmap_alpha: float = Field(0.5, ge=0, le=1)
    upsample: Literal["torch", "pil"] = Field(
        "torch",
        description="raw maps to image size: torch (bicubic a=-0.75, edges clamped, negatives clipped) or pil "
        "(PIL's bicubic a=-0.5 with renormalised edges, negatives kept: the original's)",
    )
    ig_steps: int = Field(32, ge=2, description="integrated gradients: steps of the path integral")
    ig_baseline: Literal["black", "zero"] = Field(
        "black", description="integrated gradients' reference image: black (pixel 0, normalised as the model's "
        "inputs), or zero in the model's input space (the normalisation's mean colour)",
    )
    smoothgrad_samples: int = Field(16, ge=1, description="SmoothGrad: noisy copies per image")
    smoothgrad_noise: float = Field(0.15, gt=0, description="SmoothGrad: noise deviation / the images' value range")
    seed: int = Field(0, description="seed of SmoothGrad's noise")

    @model_validator(mode="before")
    @classmethod
    def _one_method_is_a_list(cls, data: Any) -> Any:
        """`explain.method = "x"` of older settings files is `methods = ["x"]`, with one line saying so."""
        if isinstance(data, dict) and "method" in data:
            data = dict(data)
            method = data.pop("method")
            log.warning("explain.method is now explain.methods, a list: read as methods = [%r]; please rename it",
                        method)
            data.setdefault("methods", [method])
        return data

    @field_validator("methods")
    @classmethod
    def _listed_once(cls, names: list[str]) -> list[str]:
        return _each_once(names, "method")


class EvaluateSettings(_Section):
    """Automated metrics of every explained model (see prunexplain.evaluate.metrics.METRICS)."""

    steps: int = Field(10, ge=2, description="steps of the deletion and insertion curves")
    road_steps: int = Field(9, ge=1, description="ROAD: removal shares k / (steps + 1) of the pixels, k = 1..steps")
    road_noise: float = Field(0.01, ge=0, description="ROAD: noise deviation on imputed pixels (0..1 pixel values)")
    correlation_runs: int = Field(
        32, ge=2, description="faithfulness correlation: random subsets (10 % of the pixels each) per image"
    )
    resamples: int = Field(2000, ge=100, description="bootstrap resamples of the 95 % intervals")
    seed: int = 0
    sanity: bool = Field(True, description="cascading randomisation check of every model")
    sanity_threshold: float = Field(0.5, description="flag maps whose Spearman similarity stays above this")
    meta_images: int = Field(
        32, ge=0, description="meta-evaluation: images explained and scored again with input noise (0: no noise test)"
    )
    meta_noise: float = Field(0.02, ge=0, description="meta-evaluation: deviation of that noise (0..1 pixel values)")


class StudySettings(_Section):
    """`study build`: the images, stimuli and MTurk files of the human study (see prunexplain.study)."""

    models: list[str] = Field(
        default_factory=lambda: ["dense", "local_magnitude_unstructured/cr_2", "local_magnitude_unstructured/cr_32"],
        description="'dense' and '<method>/cr_<rate>'; shown as nonpruned and <rate>pruned",
    )
    per_class: int = Field(50, ge=1, description="test images per class that every model classifies correctly")
    explainer: str = Field("gradcam", description="the explanation method of the stimuli, one of explain.methods")
    seed: int = Field(0, description="seed of the image draw, the sides of experiment 1 and the input order")
    seed_model: int | None = Field(
        None, description="with run.seeds: the replicate whose models the study shows; None: the first seed"
    )
    experiments: list[str] = Field(
        default_factory=lambda: list(EXPERIMENTS),
        description="experiments of the spec (prunexplain.experiments): "
        + ", ".join(f"{key} ({e.kind.template}, {e.rendering})" for key, e in EXPERIMENTS.items()),
    )
    pairs: list[Annotated[tuple[str, str], Field(strict=False)]] = Field(  # TOML and JSON give a pair as a list
        default_factory=list, description="exp1 pairs by study name, e.g. [['nonpruned', '2pruned']]; []: every pair"
    )
    heatmap_pairs: list[Annotated[tuple[str, str], Field(strict=False)]] | None = Field(
        None, description="pairs of the heatmap variant of experiment 1; None: study.pairs"
    )
    selection: Literal["random", "first"] = Field(
        "random",
        description="random: a seeded draw per class, ids 0-based grouped by class; first: the first eligible "
        "images per class in the order of a test loader shuffled with study.seed, ids 1-based (the original's)",
    )
    images_csv: PathSetting | None = Field(
        None, description="CSV of the test images to show (columns path, label) instead of a selection"
    )
    occlusion: float = Field(0.10, gt=0, le=1, description="share of pixels left visible")
    occlusion_count: Literal["round", "original"] = Field(
        "round",
        description="round: round(share*H*W) pixels visible; original: int(share*H*W)-1 visible and the next one "
        "at its map value (the original's off-by-one)",
    )
    heatmap_alpha: float = Field(0.5, ge=0, le=1, description="weight of the jet colours over the image")
    heatmap_exponent: float = Field(1.0, gt=0, description="map raised to this power before colouring (original: 2)")
    layout: Literal["compact", "original"] = Field(
        "compact",
        description="compact: 900x340 px panels, exp2 images enlarged to 224 px; original: 3750x1200 px panels "
        "(25x8 in at 150 dpi, titles 22/15 pt) and exp2 images at about 453 px in a 900x600 canvas",
    )
    url_prefix: str = Field("", description="prefix of image_url in the input CSVs, e.g. the published bucket URL")
    stimulus_names: Literal["opaque", "study"] = Field(
        "opaque",
        description="opaque: file names are a keyed hash, study/key.csv maps them back (workers cannot read the "
        "models or the class off the image URL); study: the original's {i}_{left}_{class}_{right}.png names",
    )
    batch_size: int = Field(64, ge=1)

    @field_validator("models")
    @classmethod
    def _two_or_more(cls, models: list[str]) -> list[str]:
        if len(models) < 2 or len(set(models)) != len(models):
            raise ValueError("name at least two different models")
        return models

    @field_validator("experiments")
    @classmethod
    def _known_experiments(cls, keys: list[str]) -> list[str]:
        return _known(keys, EXPERIMENTS, "experiment")


# MTurk's system qualification types: the same ids in the sandbox and in production.
SYSTEM_QUALIFICATIONS = {
    "PercentAssignmentsApproved": "000000000000000000L0",
    "NumberHITsApproved": "00000000000000000040",
    "Locale": "00000000000000000071",
}
_LOCALE = r"[A-Z]{2}(-[A-Z0-9]{1,3})?"  # ISO 3166 country, optionally a subdivision: US, US-NY


class QualificationSetting(_Section):
    """One QualificationRequirement of the HITs: who may accept them (MTurk's API names the fields)."""

    type: str = Field(description="PercentAssignmentsApproved, NumberHITsApproved, Locale, or any qualification "
                      "type id")
    comparator: Literal["LessThan", "LessThanOrEqualTo", "GreaterThan", "GreaterThanOrEqualTo", "EqualTo",
                        "NotEqualTo", "Exists", "DoesNotExist", "In", "NotIn"]
    values: list[int] = Field(default_factory=list, description="integer values (every type but Locale)")
    locales: list[str] = Field(default_factory=list, description="Locale: country codes such as US or US-NY")
    actions_guarded: Literal["Accept", "PreviewAndAccept", "DiscoverPreviewAndAccept"] = Field(
        "Accept", description="what a worker without it may not do"
    )

    @property
    def type_id(self) -> str:
        return SYSTEM_QUALIFICATIONS.get(self.type, self.type)

    @model_validator(mode="after")
    def _values_fit_comparator(self) -> QualificationSetting:
        is_locale = self.type_id == SYSTEM_QUALIFICATIONS["Locale"]
        given = self.locales if is_locale else self.values
        other, other_name = (self.values, "values") if is_locale else (self.locales, "locales")
        if other:
            raise ValueError(f"{self.type}: give {'locales' if is_locale else 'values'}, not {other_name}")
        bad = [code for code in self.locales if not re.fullmatch(_LOCALE, code)]
        if bad:
            raise ValueError(f"{self.type}: {bad[0]!r} is no country code such as US or US-NY")
        wanted = {"Exists": "no value", "DoesNotExist": "no value", "In": "at least one value",
                  "NotIn": "at least one value"}
        count = wanted.get(self.comparator, "exactly one value")
        if (count == "no value" and given) or (count == "at least one value" and not given) or (
                count == "exactly one value" and len(given) != 1):
            raise ValueError(f"{self.type} {self.comparator} takes {count}, got {len(given)}")
        return self


def _default_qualifications() -> list[QualificationSetting]:
    return [
        QualificationSetting(type="PercentAssignmentsApproved", comparator="GreaterThanOrEqualTo", values=[95]),
        QualificationSetting(type="NumberHITsApproved", comparator="GreaterThanOrEqualTo", values=[100]),
        QualificationSetting(type="Locale", comparator="In", locales=["US", "GB", "CA", "AU", "NZ", "IE"]),
    ]


class MTurkSettings(_Section):
    """`prunexplain study mturk`: the HITs created through MTurk's API (prunexplain.study.hits).

    The defaults are the reproduced study's where its published batch results say them (Reward,
    AssignmentDurationInSeconds, AutoApprovalDelayInSeconds, Keywords, experiment 1's Description,
    Expiration - CreationTime); they are in no stage's fingerprint: HITs are not a computed output.
    """

    reward: float = Field(
        0.01, ge=0.01, description="USD per assignment (the study's $0.01, about $2.40 an hour at its 15 s median "
        "work time); whole cents"
    )
    assignments: int = Field(
        5, ge=1, description="assignments per HIT: distinct workers per stimulus (the study's 5; MTurk never gives "
        "one worker two assignments of one HIT)"
    )
    assignment_duration_seconds: int = Field(
        300, ge=30, le=31_536_000, description="time a worker has for one assignment (the study's 300)"
    )
    lifetime_seconds: int = Field(
        7 * 86_400, ge=30, le=31_536_000, description="how long HITs can be accepted (the study's 7 days)"
    )
    auto_approval_delay_seconds: int = Field(
        5 * 86_400, ge=0, le=2_592_000, description="submitted work is approved after this unless rejected before "
        "(the study's 5 days)"
    )
    keywords: str = Field("AI, explainability, machine learning, images", description="the study's keywords")
    descriptions: dict[str, str] = Field(
        default_factory=lambda: {
            "exp1": "This experiment investigates the reasonability of algorithms when they classify images. You "
            "will decide which of the algorithms makes a more reasonable decision based on the parts of the image "
            "it uses for its decision.",
            "exp2": "This experiment investigates what people recognise in the parts of an image an algorithm used "
            "for its decision. You will choose what you see on the image.",
        },
        description="per kind of task (exp1, exp2) the HIT description workers read (exp1: the study's; exp2's "
        "is not in its published files)",
    )
    qualifications: list[QualificationSetting] = Field(
        default_factory=_default_qualifications,
        description="who may accept (the study's are not in its published files): by default an approval rate of "
        "95 %, 100 approved HITs and an English-speaking country",
    )
    # The self-hosted study as one ExternalQuestion HIT (`study mturk create --external`): one assignment
    # per participant, who does a whole session. The study paid per stimulus HIT, so these are our choices.
    session_reward: float = Field(
        1.00, ge=0.01, description="USD per participant of the external HIT, for a whole session (consent, "
        "instructions, 20 tasks at the study's 15 s median: some 6 minutes, $10 an hour); whole cents. "
        "prunexplain's choice: the study paid $0.01 per stimulus HIT"
    )
    session_duration_seconds: int = Field(
        3600, ge=30, le=31_536_000, description="time a participant has for the whole session (prunexplain's choice)"
    )
    session_title: str = Field(
        "Judge what image classifiers look at", min_length=1, max_length=128,
        description="the external HIT's title (MTurk allows 128 characters)",
    )
    session_description: str = Field(
        "This study investigates how people judge the decisions of image classifiers. On our study website you "
        "will see images with the parts an algorithm used for its decision and answer a question about each.",
        min_length=1, max_length=2000, description="the external HIT's description workers read",
    )

    @field_validator("reward", "session_reward")
    @classmethod
    def _whole_cents(cls, reward: float) -> float:
        if abs(reward * 100 - round(reward * 100)) > 1e-6:
            raise ValueError(f"{reward} is not a whole number of cents")
        return reward

    @field_validator("descriptions")
    @classmethod
    def _known_kinds(cls, descriptions: dict[str, str]) -> dict[str, str]:
        _known(list(descriptions), KINDS, "kind of task")
        return descriptions


# The reference's named-run JSON keys and where each lands in Settings.
_REFERENCE_KEYS = {
    "batch_size": ("train", "batch_size"),
    "epochs": ("train", "epochs"),
    "vgg_no_train_parts": ("train", "frozen_parts"),
    "optimizer": ("train", "optimizer"),
    "learning_rate": ("train", "learning_rate"),
    "momentum": ("train", "momentum"),
    "model_path": ("runtime", "model_path"),
    "results_path": ("runtime", "results_path"),
    "pretrained": ("model", "weights"),
}

# What a named run of the reference JSON implies beneath its own keys: the model and data the
# original trained on (vgg_training.py and helpers.py of FlorianMerkle/pruning_for_explainability),
# since its JSON names only the training options. torchvision's VGG-16; the full-size Imagenette
# extracted in data/imagenette2, each image flipped and rotated before its resize to 224 px, never
# normalised; val/ split into test and valid with seed 69; SGD's weight decay 1e-4; 10 epochs of
# patience for a 1 % gain, the last improving epoch's weights kept. examples/study.toml agrees.
REFERENCE_BASE: dict[str, dict[str, Any]] = {
    "data": {
        "dataset": "imagenette", "root": "data/imagenette2", "image_size": 224, "split_seed": 69,
        "hflip": True, "vflip": True, "rotation": 10.0, "normalize": False, "augment_at": "full_size",
    },
    "model": {"arch": "vgg16", "width": 1.0, "pool_size": 7, "batch_norm": False, "dropout": 0.5},
    "train": {"weight_decay": 1e-4, "patience": 10, "min_improvement": 0.01, "restore": "last_improvement"},
}


def load_settings(
    config: Path | None = None,
    overrides: list[str] = (),
    reference: tuple[Path, str] | None = None,
) -> Settings:
    """Layers, each above the one before: the defaults; with a reference run, `REFERENCE_BASE` (the
    study's model and data, which the JSON does not name); the TOML file; the reference run's own
    keys; the `key=value` overrides. So `train training_config.json run8` alone is the original's
    run, a file can change its model or data, and the JSON's keys win over the file's.

    Each layer is validated on its own so an error names the place it came from.
    """
    data: dict[str, Any] = _merged({}, REFERENCE_BASE) if reference is not None else {}
    if config is not None:
        data = _merged(data, _runtime_moved(read_toml(config), str(config)))
        _validate(data, str(config))
    if reference is not None:
        for dotted, value in read_reference_run(*reference).items():
            _set_dotted(data, dotted, value)
        _validate(data, f"{reference[0]} [{reference[1]}]")
    for item in overrides:
        dotted, value = _parse_override(item)
        dotted = _runtime_key(dotted, f"--set {item}")
        if value is _UNSET:
            value = None if _optional(Settings, dotted) else "none"
        elif value == "" and _optional(Settings, dotted):
            raise UserError(f"--set {item}: empty value; write {dotted}=none to unset it")
        _set_dotted(data, dotted, value)
        _validate(data, f"--set {item}")
    return Settings.model_validate(data)


def _runtime_key(dotted: str, source: str) -> str:
    """`train.device` (an older name) -> `runtime.device`, with one deprecation line."""
    section, _, key = dotted.partition(".")
    if key in _MOVED_TO_RUNTIME.get(section, ()):
        log.warning("%s: %s is now runtime.%s (how work runs, not what it computes); please rename it",
                    source, dotted, key)
        return f"runtime.{key}"
    return dotted


def _runtime_moved(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A settings table with the runtime keys of older files moved into [runtime]."""
    for section, keys in _MOVED_TO_RUNTIME.items():
        table = data.get(section)
        if not isinstance(table, dict):
            continue
        for key in [k for k in keys if k in table]:
            runtime = data.setdefault("runtime", {})
            if isinstance(runtime, dict):
                runtime[_runtime_key(f"{section}.{key}", source).partition(".")[2]] = table.pop(key)
    return data


def _merged(below: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    """A copy of `below` with `above` laid over it, table by table (a key of `above` wins)."""
    merged = dict(below)
    for key, value in above.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = _merged({}, value) if isinstance(value, dict) else value
    return merged


def read_reference_run(path: Path, name: str) -> dict[str, Any]:
    """One named run of the study's training_config.json, as dotted Settings keys.

    `"optimizer": "Adam"` also sets no weight decay: the original gave Adam none (only its SGD had 1e-4).
    """
    runs = read_json(path)
    if not isinstance(runs, dict) or not all(isinstance(v, dict) for v in runs.values()):
        raise UserError(f"{path}: expected an object of named runs, e.g. {{\"run8\": {{...}}}}")
    if name not in runs:
        raise UserError(f"{path}: no run named '{name}' (runs: {', '.join(sorted(runs)) or 'none'})")
    values = {}
    for key, value in runs[name].items():
        if key not in _REFERENCE_KEYS:
            raise UserError(f"{path}: {name}.{key}: unknown key (known: {', '.join(_REFERENCE_KEYS)})")
        if key == "pretrained":
            if not isinstance(value, bool):
                raise UserError(f"{path}: {name}.pretrained: expected true or false, got {value!r}")
            value = "imagenet" if value else None
        values[".".join(_REFERENCE_KEYS[key])] = value
    if values.get("train.optimizer") == "Adam":
        values["train.weight_decay"] = 0.0
    return values


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a valid JSON file ({error})") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UserError(f"{path}: not a valid TOML file ({error})") from None


def _validate(data: dict[str, Any], source: str) -> None:
    validated(Settings, data, source)


def _dotted(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def validated(
    model: type[SectionT], data: dict[str, Any], source: str | None, name: Callable[[tuple], str] = _dotted
) -> SectionT:
    """`model` from `data`, or one UserError naming the source, each bad key (as `name` spells it) and its value."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
            problems.append(f"{name(item['loc'])}: {message} (got {item['input']!r})")
        raise UserError((f"{source}: " if source else "") + "; ".join(problems)) from None


def from_options(model: type[SectionT], **values: Any) -> SectionT:
    """Settings from command-line options (None: the default); an error names the option, e.g. --min-work-time."""
    given = {key: value for key, value in values.items() if value is not None}
    return validated(model, given, None, lambda loc: "--" + "-".join(str(p) for p in loc).replace("_", "-"))


def load_section(
    model: type[SectionT], table: str, config: Path | None, options: dict[str, Any], whole_file: bool = False
) -> SectionT:
    """Settings of a command outside the pipeline: defaults, then the TOML file's `[table]` (or, with
    `whole_file`, the file itself when it has no such table), then options that are not None."""
    name = lambda loc: f"{table}.{_dotted(loc)}"  # noqa: E731
    data: dict[str, Any] = {}
    source = "defaults"
    if config is not None:
        content = read_toml(config)
        data = content.get(table, content if whole_file else {})
        if not isinstance(data, dict):
            raise UserError(f"{config}: '{table}' must be a table, e.g. [{table}]")
        source = str(config)
        validated(model, data, source, name)
    given = {key: value for key, value in options.items() if value not in (None, [])}
    return validated(model, {**data, **given}, f"{source} and options" if given else source, name)


class _Unset(str):
    """The bare word `none` of `--set KEY=none`: None for an optional setting, else the text 'none'."""


_UNSET = _Unset("none")


def _parse_override(item: str) -> tuple[str, Any]:
    """`KEY=VALUE` with VALUE read as TOML; a bare word is a string, and the bare word `none` is `_UNSET`."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item}: expected KEY=VALUE, e.g. train.epochs=5")
    if raw.strip() == _UNSET:
        return key.strip(), _UNSET
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string
    return key.strip(), value


def _optional(model: type[BaseModel], dotted: str) -> bool:
    """Whether the field at `dotted` (e.g. `model.weights`) of `model` accepts None; False if there is none."""
    section, _, rest = dotted.partition(".")
    field = model.model_fields.get(section)
    if field is None:
        return False
    if rest:
        inner = field.annotation
        return isinstance(inner, type) and issubclass(inner, BaseModel) and _optional(inner, rest)
    return get_origin(field.annotation) in (Union, types.UnionType) and type(None) in get_args(field.annotation)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


class AnalysisSettings(_Section):
    """`prunexplain analyze`: how crowd answers are read, filtered and summarised."""

    models: list[str] = Field(
        default_factory=list, description="known model names; []: 'nonpruned' and '<rate>pruned' (e.g. 2pruned)"
    )
    repeated_items: Literal["keep", "first", "drop"] = Field(
        "keep",
        description="a worker answering the same item in two HITs: keep both (the study), the first, or neither",
    )
    min_median_work_time: float | None = Field(
        None, ge=0, description="seconds; leave out workers whose median work time is lower (and report before/after)"
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="level of every interval")
    bootstrap: int = Field(1000, ge=0, description="resamples of items for bootstrap intervals; 0: none")
    seed: int = Field(0, description="seed of the bootstrap")
    plots: bool = Field(True, description="write PNG plots")


class PairTruth(_Section):
    """Experiment 1 ground truth of one pair of models for simulated crowds."""

    a: str
    b: str
    preference: float = Field(0.5, ge=0, le=1, description="share of attentive, decided answers preferring a")
    none_share: float = Field(0.3, ge=0, le=1, description="share of attentive answers 'equally reasonable'")

    @field_validator("b")
    @classmethod
    def _two_models(cls, value: str, info) -> str:
        if value == info.data.get("a"):
            raise ValueError(f"a pair needs two different models, got {value!r} twice")
        return value


class ModelTruth(_Section):
    """Experiment 2 ground truth of one model for simulated crowds."""

    name: str
    correct: float = Field(0.85, ge=0, le=1, description="share of attentive answers naming the true class")
    none_share: float = Field(0.1, ge=0, le=1, description="share of attentive answers 'none'")

    @field_validator("none_share")
    @classmethod
    def _at_most_all(cls, value: float, info) -> float:
        correct = info.data.get("correct")
        if correct is not None and correct + value > 1:
            raise ValueError(f"correct + none_share must be <= 1, got {correct:g} + {value:g}")
        return value


def _known(keys: list[str], known: dict, what: str) -> list[str]:
    """Keys of the experiment spec only; a ValueError naming the unknown ones and listing the known."""
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    return keys


def _study_pairs() -> list[PairTruth]:
    # Close to the published occlusion-map results (experiment 1).
    return [
        PairTruth(a="nonpruned", b="2pruned", preference=0.45, none_share=0.54),
        PairTruth(a="nonpruned", b="32pruned", preference=0.54, none_share=0.26),
        PairTruth(a="2pruned", b="32pruned", preference=0.55, none_share=0.22),
    ]


def _study_models() -> list[ModelTruth]:
    # Close to the published experiment 2 results.
    return [
        ModelTruth(name="nonpruned", correct=0.86, none_share=0.10),
        ModelTruth(name="2pruned", correct=0.87, none_share=0.10),
        ModelTruth(name="32pruned", correct=0.81, none_share=0.13),
    ]


class SimulateSettings(_Section):
    """`prunexplain study simulate`: a crowd of workers with a known truth, answering in MTurk's format."""

    experiment: str = Field(next(iter(KINDS)), description=f"kind of task: {', '.join(KINDS)}")
    pairs: list[PairTruth] = Field(default_factory=_study_pairs, description="experiment 1 truth per pair")
    models: list[ModelTruth] = Field(default_factory=_study_models, description="experiment 2 truth per model")
    classes: list[str] = Field(
        default_factory=lambda: [
            "0-fish", "1-dog", "2-cassetteplayer", "3-chainsaw", "4-church",
            "5-frenchhorn", "6-garbagetruck", "7-gaspump", "8-golfball", "9-parachute",
        ],
        description="class labels of the images (Imagenette's in the study)",
    )
    images: int = Field(500, ge=1, description="images per pair (exp1) or per model (exp2)")
    workers: int = Field(200, ge=1, description="size of the worker pool")
    answers_per_item: int = Field(
        5, ge=1, validate_default=True, description="assignments per HIT, each by a different worker"
    )
    spammer_share: float = Field(0.05, ge=0, le=1, description="share of workers who answer at random")
    side_bias: float = Field(
        0.1, ge=0, le=0.5, description="exp1: mean share of a worker's decisions going to its favourite side"
    )
    item_correlation: float = Field(
        0.0, ge=0, lt=1, description="items differ: correlation of two attentive answers on one item; 0: items alike"
    )
    work_time: float = Field(12.0, gt=0, description="median seconds per answer of attentive workers")
    spammer_work_time: float = Field(3.0, gt=0, description="median seconds per answer of spammers")
    seed: int = 0
    power_target: float = Field(0.8, gt=0, lt=1, description="power the power analysis asks for")
    power_alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the power analysis")
    power_sims: int = Field(1000, ge=10, description="simulated studies per power check")

    @field_validator("experiment")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return _known([kind], KINDS, "experiment kind")[0]

    @field_validator("answers_per_item")
    @classmethod
    def _fits_pool(cls, value: int, info) -> int:
        workers = info.data.get("workers")
        if workers is not None and value > workers:
            raise ValueError(f"needs at least {value} workers")
        return value


class ServeSettings(_Section):
    """`prunexplain study serve`: the self-hosted study (see prunexplain.study.server).

    Attention checks are instructed-response items: a stimulus picture the participant has no task
    on, shown with the line "whatever you see, choose <option>"; the option is drawn at random from
    that experiment's options, so the right answer is known without trusting any model.
    """

    experiments: list[str] = Field(
        default_factory=first_of_each_kind, min_length=1, description="experiment keys of manifest.json"
    )
    answers_per_stimulus: int = Field(5, ge=1, description="distinct participants per stimulus (the study's 5)")
    tasks_per_participant: int = Field(20, ge=1, description="stimuli per participant, attention checks not counted")
    attention_checks: int = Field(2, ge=0, description="instructed-response items per participant, at random places")
    reservation_minutes: float = Field(
        60.0, gt=0, description="unanswered tasks of a participant hold their stimuli this long"
    )
    completion_code: str | None = Field(
        None, min_length=1, max_length=64, description="one code for all; None: one per participant, from a secret"
    )
    start_minutes: float = Field(
        10.0, gt=0, description="a participant who has not opened a task yet holds their stimuli only this long"
    )
    consents_per_minute: float = Field(
        10.0, gt=0, description="consents (and resume attempts) per client address: this many at once, then per minute"
    )
    sessions_per_client: int = Field(
        10, ge=1, description="unfinished participants holding places that one client address may have"
    )
    admin_logins_per_minute: float = Field(5.0, gt=0, description="admin login attempts per client address")
    max_request_bytes: int = Field(16_384, ge=1024, description="request bodies over this are refused (413)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    seed: int = Field(0, description="seed of the task order and of the attention-check draws")
    comprehension: bool = Field(
        True, description="a comprehension check after the instructions: questions about the task, two tries; "
        "a participant who fails both is thanked and ends there, their tasks go to others"
    )
    completion_url: str | None = Field(
        None, description="where /done sends the participant with their code, e.g. Prolific's "
        "https://app.prolific.com/submissions/complete?cc={code} ({code}: the completion code); None: show the code"
    )

    @field_validator("completion_url")
    @classmethod
    def _completion_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is no http(s) URL")
        if "{" in url.replace("{code}", "") or "}" in url.replace("{code}", ""):
            raise ValueError(f"{url!r}: only {{code}} may stand in braces (the completion code goes there)")
        return url


# Which way each metric of the evaluate stage reads better: +1 higher, -1 lower, 0 no direction (a sharp
# map is not a good map). Here, on the ground floor, so that settings can check `verdict.margins`.
BETTER: dict[str, int] = {
    "energy_pointing_game": 1, "pointing_game_hit": 1, "top10_iou_mask": 1,
    "spearman_to_dense": 1, "top10_iou_dense": 1, "ssim_to_dense": 1,
    "entropy": 0, "gini": 0,
    "deletion_auc": -1, "insertion_auc": 1, "road_morf": -1, "road_lerf": 1, "faithfulness_correlation": 1,
    "sanity_spearman_top_layer": -1, "sanity_spearman_all_layers": -1,
}


VERDICT_MARGINS = {  # 0.05 on 0..1 scales: five points, the human study's margin (see README, Verdict)
    "energy_pointing_game": 0.05, "pointing_game_hit": 0.05, "top10_iou_mask": 0.05,
    "deletion_auc": 0.05, "insertion_auc": 0.05, "road_morf": 0.05, "road_lerf": 0.05,
    "faithfulness_correlation": 0.05,
}


class VerdictSettings(_Section):
    """`prunexplain verdict`: up to which rate a pruned model is non-inferior to the dense one."""

    margins: dict[str, float] = Field(
        default_factory=lambda: dict(VERDICT_MARGINS),
        description="per metric the non-inferiority margin, in the metric's units; the metrics judged",
    )
    accuracy_margin: float = Field(0.01, ge=0, description="top-1 accuracy: one point")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="one-sided level of each non-inferiority test")
    correction: Literal["holm", "none"] = Field("holm", description="multiple testing across one line's rates")
    accuracy_floor: float | None = Field(
        None, ge=0, le=1, description="test top-1 below which a model is collapsed; None: twice chance"
    )
    resamples: int = Field(2000, ge=100, description="bootstrap resamples (seeds, then images within seed)")
    seed: int = 0
    human_margins: dict[Literal["recognition", "preference"], float] = Field(
        default_factory=lambda: {"recognition": 0.05, "preference": 0.10},
        description="the study's answers judged, and their margins: recognition (share of right classes, exp2) "
        "and preference (share preferring the pruned map minus share preferring the dense one, exp1)",
    )
    min_resilience: float = Field(
        0.5, ge=-1, le=1, description="a metric whose noise resilience (evaluate/meta.csv) is below this is "
        "judged but left out of the answer's sentences: its per-image verdicts are mostly noise",
    )

    @field_validator("margins")
    @classmethod
    def _known_metrics(cls, margins: dict[str, float]) -> dict[str, float]:
        for metric, margin in margins.items():
            if BETTER.get(metric, 0) == 0:
                raise ValueError(f"verdict.margins: {metric!r} has no better direction to test; "
                                 f"one of {', '.join(m for m, d in BETTER.items() if d)}")
            if margin < 0:
                raise ValueError(f"verdict.margins.{metric}: {margin} is negative")
        return margins


class ReportSettings(_Section):
    """`prunexplain report`: how much of a run the HTML report shows, and how small its pictures are."""

    images: int = Field(6, ge=0, description="example images (rows) in the grid of explanations")
    stimuli: int = Field(4, ge=0, description="study stimuli shown per experiment")
    cell_size: int = Field(128, ge=32, le=512, description="pixels; grid pictures are shown at about this side")
    figure_width: int = Field(1100, ge=200, description="pixels; wider plots and stimuli are downscaled to this")
    heatmap_alpha: float = Field(0.5, ge=0, le=1, description="weight of the jet colours over the image in the grid")


class CrowdSettings(_Section):
    """`prunexplain run`: who answers the study when no real answers are in the run yet.

    Real answers (CSV files in `study/answers/`, or the self-hosted study's database) always win;
    without them a simulated crowd (prunexplain.study.simulate) answers, so the analysis and the
    report can be read end to end before a study is paid for.
    """

    simulate: bool = Field(True, description="simulate a crowd when the run has no real answers")
    mode: Literal["observer", "published"] = Field(
        "observer",
        description="observer: model-based observers answer the run's own stimuli; published: workers drawn "
        "from the published study's effect sizes, blind to the stimuli",
    )
    none_confidence: float = Field(
        0.3, ge=0, le=1, description="observers answer 'none' (exp2) when their top probability is below this"
    )
    equal_margin: float = Field(
        0.1, ge=0, le=1, description="observers answer 'equally reasonable' (exp1) when the two maps' class "
        "probabilities differ by less than this"
    )
    observer_epochs: int = Field(12, ge=1, description="training epochs of the run's observer classifier")
    observer_noise: float = Field(
        0.5, ge=0, description="observers: mean standard deviation of a worker's noise on the classifier's "
        "log-probabilities (each worker's own is drawn from 0 to twice this)"
    )
    workers: int = Field(60, ge=1, description="size of the simulated worker pool")
    answers_per_item: int = Field(5, ge=1, description="assignments per stimulus, each by a different worker")
    spammer_share: float = Field(0.05, ge=0, le=1, description="share of simulated workers answering at random")
    seed: int = 0


class RunSettings(_Section):
    name: str = Field("demo", description="one plain folder name under root: letters, digits, . _ + -")
    root: PathSetting = Path("runs")
    seeds: list[int] = Field(
        default_factory=list, description="replicates: per seed its own training, pruning, explanations and "
        "metrics (train.seed and prune.seed = the seed); the run's folder holds study.seed_model's, the others "
        "seeds/<seed>/; []: one, with train.seed",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"run.seeds: {seeds} repeats a seed")
        return seeds

    @field_validator("name")
    @classmethod
    def _one_folder(cls, name: str) -> str:
        # The run folder is written and, on reruns, replaced: '..', 'a/b' or '/tmp' would reach outside root.
        if not safe_run_name(name):
            raise ValueError("a run name is one plain folder name (letters, digits, . _ + -; not '.', '..' "
                             "or hidden)")
        return name


def json_digest(value: Any) -> str:
    """16 hex digits of SHA-256 over `value` as JSON (keys sorted): the fingerprint of what decides
    an output, so an unchanged one need not be computed again."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class Settings(_Section):
    run: RunSettings = RunSettings()
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    prune: PruneSettings = PruneSettings()
    explain: ExplainSettings = ExplainSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    study: StudySettings = StudySettings()
    mturk: MTurkSettings = MTurkSettings()
    crowd: CrowdSettings = CrowdSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    verdict: VerdictSettings = VerdictSettings()
    report: ReportSettings = ReportSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    cluster: ClusterSettings = ClusterSettings()

    @model_validator(mode="after")
    def _replicate_of_the_study(self) -> Settings:
        """With run.seeds, the run's own models are the replicate the study shows: trained and pruned
        with its seed (a replicate's seed decides both)."""
        chosen = self.study.seed_model
        if not self.run.seeds:
            if chosen is not None:
                raise ValueError(f"study.seed_model = {chosen}: set run.seeds, the replicates to choose from")
            return self
        chosen = self.run.seeds[0] if chosen is None else chosen
        if chosen not in self.run.seeds:
            raise ValueError(f"study.seed_model = {chosen} is not one of run.seeds {self.run.seeds}")
        for section in ("train", "prune"):
            given = getattr(self, section)
            if "seed" in given.model_fields_set and given.seed != chosen:
                raise ValueError(f"{section}.seed = {given.seed}, but with run.seeds the run's models take "
                                 f"study.seed_model's seed ({chosen}); drop {section}.seed")
            if given.seed != chosen:
                setattr(self, section, given.model_copy(update={"seed": chosen}))
        return self

    def replicate_seeds(self) -> list[int]:
        """Every replicate's seed, the run's own (the study's models: train.seed) first."""
        return [self.train.seed, *(seed for seed in self.run.seeds if seed != self.train.seed)]

    def replicate(self, seed: int) -> Settings:
        """The settings of seed `seed`'s replicate of this run: these for the run's own seed, else its
        folder `seeds/<seed>/` under the run's, its training and pruning seeded with it (its own copy of a
        synthetic dataset: nothing in it names the run's folder, so a moved run keeps its replicates)."""
        from prunexplain.runs import Run

        if seed == self.train.seed:
            return self
        return self.model_copy(update={
            "run": RunSettings(name=str(seed), root=Run(self.run_dir).replicate(seed).parent),
            "train": self.train.model_copy(update={"seed": seed}),
            "prune": self.prune.model_copy(update={"seed": seed}),
            "study": self.study.model_copy(update={"seed_model": None}),
        })

    @property
    def run_dir(self) -> Path:
        return self.run.root / self.run.name

    def fingerprint(self, *sections: str) -> str:
        """Hash of the named sections (or `section.field`s): a stage whose sections are unchanged need not
        run again."""
        return json_digest({name: self.section(name) for name in sections})

    def section(self, name: str) -> Any:
        """A section (`train`) or one field of one (`run.seeds`) as JSON values."""
        value = self
        for part in name.split("."):
            value = getattr(value, part)
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))
