"""Model-based observers: simulated participants whose answers depend on the stimuli themselves.

The published-effects crowd (`study.simulate`) answers the same whatever the run's maps show. The
observers look at the run's own stimuli instead, so a study of explanations that lose the object
comes out worse than one of explanations that show it, before anybody is paid to look.

**The observer classifier.** A small VGG-style network (`LAYOUT`: five conv-BN-ReLU blocks and a
global average pool, about 0.1 M weights) that looks at pictures averaged down to half their side
(`input_size`), trained once per run on the run's training split with `crowd.observer_epochs`
epochs of `train.fit`, from its own seed: it is none of the explained models and shares none of
their weights, so it has no privileged knowledge of where they look. It is not the run's
architecture on purpose: the compact VGG-16 needs tens of epochs to learn the embedded dataset, and
an observer must be cheap enough to train on every run (the demo's: about 3 s an epoch on 2 cores).
It learns from occluded views of the kind the stimuli show (`training_views`): the `study.occlusion`
share of pixels left visible where a random low-resolution map (upsampled, 2x2 up to pixel noise) is
highest, the rest black, some views weighted softly by such a map (how it reads heatmaps), a few
whole pictures. Where the dataset has object masks (the embedded one) most views keep the pixels a
map peaking on the object would keep (the object itself, the object seen at a CAM's coarse
resolution, or part of it): a participant knows what the classes look like before the study, and
background fragments, which the random views show, teach the observer that they say nothing.
Without masks (Imagenette) it learns from random views and whole pictures only, and needs more
epochs. It is kept in `study/observer/model.pt` with a fingerprint of what decides it (data, the
dense checkpoint, its settings, this recipe) and trained again only when that changes.

It is a weak reader of real maps, and the defaults are set for that (measured on the embedded data
with objects of 16-26 % of the side, 3600 training images at 64 px, 12 epochs in 38 s on 2 cores,
400 test images): it names the class of 39 % of
occlusion maps that show the whole object, 19 % of Grad-CAM maps of a dense model at an 8x8 layer
(57 % of the object visible), 10 % at a 4x4 layer (23 % visible) and of random maps (chance); its
top probability is rarely above 0.5 there, hence 'none' below 0.3 (`crowd.none_confidence`).

**What it reads.** The stimuli are drawn again, from the run's checkpoints and `selection.csv`,
through the function `study build` draws them with (`build.shown_again`, `Shown.drawn`): an
occlusion map is read as exactly the array its PNG shows. A heatmap is read as the image weighted by
its map (scaled to 0..1, raised to `study.heatmap_exponent`, as the colours are): what is red stays,
what is blue fades to black. The jet colours themselves are not fed to it: the observer never saw
colour-mapped pictures, and a person reads a heatmap as "look here", which weighting expresses.

**Answers.** Experiment 2 ("what is on the picture?"): the class the observer finds most probable,
or "none" where that probability is below `crowd.none_confidence`. Experiment 1 ("which is more
reasonable?"): the side whose map gives the shown class the higher probability, "equally
reasonable" where the two differ by less than `crowd.equal_margin`.

**Workers on top** (all from `crowd.seed`): the pool of `study.simulate` (`draw_crowd`: a share
`crowd.spammer_share` answering uniformly at random and fast, each other worker with its own side
bias); each worker perceives the observer's log-probabilities through its own noise (Gaussian, sd
drawn from 0 to twice `crowd.observer_noise`, fresh per answer) and temperature (log-normal around
1); `crowd.answers_per_item` different workers per stimulus. Rows are MTurk batch results
(`simulate.mturk_rows`), so `prunexplain analyze`, the analysis stage and the report read them as
any other answers. `truth.json` beside them holds the effects the observers predict for attentive
workers (per pair: preference and 'equally' share, per model: accuracy and 'none' share, by
averaging many noisy perceptions per stimulus), the input of a power analysis (`predict`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from torchvision.models.vgg import make_layers

from prunexplain.config import (
    DataSettings,
    ModelTruth,
    PairTruth,
    Settings,
    SimulateSettings,
    TrainSettings,
    UserError,
    json_digest,
)
from prunexplain.data import dataset_root, splits_of
from prunexplain.data.loaders import image_dataset, object_masks, prepare
from prunexplain.experiments import EXPERIMENTS, NONE, Kind, kind
from prunexplain.explain.render import heat_weights
from prunexplain.models import file_digest
from prunexplain.runs import Run, SimulationFolder, atomic_open, write_json, write_with
from prunexplain.study.build import Shown, read_manifest, shown_again
from prunexplain.study.simulate import (
    Crowd,
    answer_rows,
    assign_workers,
    draw_crowd,
    expected_truth,
    mturk_rows,
    power_analysis,
)
from prunexplain.train import device_for, fit, make_loader

log = logging.getLogger(__name__)

ARCH = "observer-vgg"
LAYOUT: list[int | str] = [8, "M", 16, "M", 32, "M", 64, "M", 128]
VERSION = 2  # of the recipe below: a change retrains every run's observer

# The training views (see `training_views`): shares of whole pictures, of views of the object (where
# the dataset has masks), of soft (heatmap-like) weighting; the views of the object split between the
# object itself, the object at a CAM's resolution and a blob on part of it (`_object_maps`).
# Measured on the embedded data: views of the object teach the classes fastest (fewer of them left a
# 40-second observer near chance), and the coarse ones let it read real Grad-CAM maps.
WHOLE, OBJECT, SOFT = 0.05, 0.7, 0.15
OBJECT_KINDS = (0.4, 0.4, 0.2)
GRIDS = (2, 3, 4, 6, 8, 16)  # sides of the random low-resolution maps; plus the picture's own (pixel noise)
BATCH, LEARNING_RATE = 64, 0.003
MIN_INPUT = 32
SEED_OFFSET = 7919  # the observer's seed is crowd.seed + this: never train.seed, the explained model's
TEMPERATURE_SPREAD = 0.3  # sd of a worker's log temperature
EXPECTATION_DRAWS = 200  # noisy perceptions per stimulus behind the predicted effects
MAX_ITEMS = 5000  # a predicted effect needing more items (HITs) than this is not simulated for power


def input_size(image_size: int) -> int:
    """The side the observer looks at pictures with: half the image's, at least 32 px (a glance; and
    narrow convolutions on the CPU cost by the pixel, so half the side trains about three times faster)."""
    return min(image_size, max(MIN_INPUT, image_size // 2))


class ObserverNet(nn.Module):
    """Pictures averaged down to `size`, conv-BN-ReLU blocks of `LAYOUT` (torchvision's VGG builder),
    global average pool, linear."""

    def __init__(self, num_classes: int, size: int, layout: list[int | str] = LAYOUT) -> None:
        super().__init__()
        self.size = size
        self.features = make_layers(layout, batch_norm=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(next(v for v in reversed(layout) if v != "M"), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        return self.classifier(self.pool(self.features(x)).flatten(1))


# --- the classifier ---------------------------------------------------------------------------


def _random_maps(count: int, size: int) -> torch.Tensor:
    """`[count, size, size]` maps: uniform noise on a grid of a side drawn from GRIDS and the
    picture's own, upsampled bilinearly (blobs of every scale, down to single pixels)."""
    grids = (*GRIDS, size)
    side = grids[int(torch.randint(len(grids), ()))]
    noise = torch.rand(count, 1, side, side)
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _object_maps(masks: torch.Tensor) -> torch.Tensor:
    """Maps that peak on the object, in the shares of OBJECT_KINDS: the object itself (mask times
    noise, plus weaker noise around); the object at a CAM's resolution (its mask averaged to a
    coarse grid and upsampled, so the kept pixels spill onto the background as a CAM's do); or a
    Gaussian blob at one of its pixels (a map that found part of it)."""
    count, size = masks.shape[0], masks.shape[-1]
    noise = _random_maps(count, size)
    whole = masks.float() * (0.5 + noise) + 0.3 * _random_maps(count, size)
    side = GRIDS[int(torch.randint(len(GRIDS) - 1, ()))]  # a CAM's sides, the finest aside
    coarse = F.interpolate(F.adaptive_avg_pool2d(masks.float()[:, None], side), size=(size, size), mode="bilinear",
                           align_corners=False)[:, 0] + 0.3 * torch.rand(count, 1, 1) * noise
    weights = masks.flatten(1).float() + 1e-6  # a mask with no object: any pixel
    centre = torch.multinomial(weights, 1)[:, 0]
    cy, cx = (centre // size).float(), (centre % size).float()
    sigma = (0.05 + 0.15 * torch.rand(count)) * size
    grid = torch.arange(size).float()
    blob = torch.exp(-((grid[None, :, None] - cy[:, None, None]) ** 2 + (grid[None, None, :] - cx[:, None, None]) ** 2)
                     / (2 * sigma[:, None, None] ** 2)) + 0.3 * torch.rand(count, 1, 1) * noise
    which = torch.multinomial(torch.tensor(OBJECT_KINDS), count, replacement=True)[:, None, None]
    return torch.where(which == 0, whole, torch.where(which == 1, coarse, blob))


def scaled(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to 0..1 (a constant map to 0)."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (maps - low) / (high - low).clamp_min(1e-12)


def training_views(images: torch.Tensor, masks: torch.Tensor | None, share: float) -> torch.Tensor:
    """Occluded views `[B, 3, H, W]` uint8 of a batch of uint8 images, drawn from torch's global
    generator (which `fit` seeds): the `share` of pixels where a random map is highest kept, the rest
    black; a share SOFT weighted by the scaled map instead; a share WHOLE left whole; with `masks`,
    a share OBJECT of maps that peak on the object."""
    count, size = images.shape[0], images.shape[-1]
    draw = torch.rand(count)
    maps = _random_maps(count, size)
    if masks is not None:
        on_object = torch.nonzero((draw >= WHOLE) & (draw < WHOLE + OBJECT))[:, 0]
        if len(on_object):
            maps[on_object] = _object_maps(masks[on_object])
    # the top `share` of each map by its k-th largest value: `top_pixels` without its exact tie-breaking,
    # which only the stimuli need, at a fraction of the cost of a full sort
    keep = max(1, round(share * size * size))
    threshold = maps.flatten(1).topk(keep, dim=1).values[:, -1, None, None]
    weights = torch.where((torch.rand(count) < SOFT)[:, None, None], scaled(maps), (maps >= threshold).float())
    weights[draw < WHOLE] = 1.0
    return (images.float() * weights[:, None]).to(torch.uint8)


class _Views(Dataset):
    """The training split as batches of fresh occluded views, one batch per item (occlusion is batched
    tensor work); the images of a batch are drawn with replacement from torch's global generator."""

    def __init__(self, images, labels: torch.Tensor, masks: torch.Tensor | None, share: float) -> None:
        self.images, self.labels, self.masks, self.share = images, labels, masks, share

    def __len__(self) -> int:
        return -(-len(self.labels) // BATCH)

    def __getitem__(self, _: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.labels), (BATCH,)).sort().values
        images = _pixels(self.images, index)
        masks = None if self.masks is None else self.masks[index]
        return training_views(images, masks, self.share), self.labels[index]


def _pixels(dataset: Dataset, index: torch.Tensor) -> torch.Tensor:
    """uint8 `[B, 3, H, W]` of a split's images at `index` (sorted): read from the decoded cache's
    memory map where there is one, so a large split is never held in memory whole."""
    array = getattr(dataset, "array", None)
    if array is not None:
        return torch.from_numpy(np.asarray(array[index.numpy()])).permute(0, 3, 1, 2)
    return torch.stack([dataset[i][0] for i in index.tolist()])


def observer_data(data: DataSettings) -> DataSettings:
    """The run's image size and augmentation (batched, at the image size), no normalisation: the
    observer reads pictures as the stimuli are, 0..1."""
    return data.model_copy(update={"normalize": False, "augment_at": "image_size"})


def fingerprint(settings: Settings, run: Run) -> str:
    """What decides the observer: its recipe, the data, the dense checkpoint, its settings."""
    dense = file_digest(run.dense_checkpoint) if run.dense_checkpoint.is_file() else None
    decided = {"version": VERSION, "layout": LAYOUT, "input": input_size(settings.data.image_size),
               "data": settings.data.model_dump(mode="json"), "dense": dense,
               "epochs": settings.crowd.observer_epochs, "seed": settings.crowd.seed,
               "occlusion": settings.study.occlusion}
    return json_digest(decided)


@dataclass
class Observer:
    model: ObserverNet
    classes: list[str]
    data: DataSettings
    device: torch.device
    meta: dict

    @torch.no_grad()
    def log_probabilities(self, pictures: np.ndarray, batch: int = 256) -> np.ndarray:
        """Log class probabilities `[N, C]` (float64) of uint8 pictures `[N, H, W, 3]`."""
        self.model.eval()
        out = []
        for start in range(0, len(pictures), batch):
            x = torch.from_numpy(np.ascontiguousarray(pictures[start:start + batch])).permute(0, 3, 1, 2)
            out.append(F.log_softmax(self.model(prepare(x.to(self.device), self.data)).float(), 1).cpu())
        return torch.cat(out).double().numpy() if out else np.zeros((0, len(self.classes)))


def observer(settings: Settings, run: Run) -> Observer:
    """The run's observer: the saved one while its fingerprint holds, else trained now and saved."""
    path, wanted = run.study.observer, fingerprint(settings, run)
    device = device_for(settings.runtime)
    data = observer_data(settings.data)
    saved = _read(path) if path.is_file() else None
    if saved is not None and saved["meta"].get("fingerprint") == wanted:
        model = ObserverNet(saved["num_classes"], saved["meta"]["input_size"])
        model.load_state_dict(saved["state_dict"])
        log.info("observers: the run's observer classifier (%s) is up to date", path)
        return Observer(model.to(device).eval(), saved["meta"]["classes"], data, device, saved["meta"])
    return _train(settings, run, wanted, data, device)


def _read(path: Path) -> dict | None:
    """A saved observer, or None (then it is trained again) when the file is not one."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever the unpickler met: a damaged cache is trained again
        log.warning("observers: %s is not a readable observer; training a new one", path)
        return None
    return saved if isinstance(saved, dict) and saved.get("arch") == ARCH else None


def _train(settings: Settings, run: Run, wanted: str, data: DataSettings, device: torch.device) -> Observer:
    root = dataset_root(settings.data, run, settings.runtime.progress)
    splits = splits_of(settings.data, root)
    size, share, seed = settings.data.image_size, settings.study.occlusion, settings.crowd.seed + SEED_OFFSET
    runtime = settings.runtime
    train = image_dataset(splits.train, settings.data, run.cache_dir, "train", runtime)
    valid = image_dataset(splits.valid, settings.data, run.cache_dir, "valid", runtime)
    masks = {name: None if split.masks is None else torch.from_numpy(object_masks(split, size))
             for name, split in (("train", splits.train), ("valid", splits.valid))}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ObserverNet(len(splits.train.classes), input_size(size)).to(device)
        index = torch.arange(len(splits.valid))
        valid_views = training_views(_pixels(valid, index), masks["valid"], share)  # fixed: epochs compare
    recipe = TrainSettings(epochs=settings.crowd.observer_epochs, batch_size=BATCH, learning_rate=LEARNING_RATE,
                           patience=settings.crowd.observer_epochs, seed=seed)
    views = _Views(train, torch.tensor(splits.train.labels), masks["train"], share)
    start = time.perf_counter()
    fitted = fit(model, make_loader(views, None, device), make_loader(
        TensorDataset(valid_views, torch.tensor(splits.valid.labels)), 256, device), recipe, data, device, runtime,
        description="observer")
    seconds = time.perf_counter() - start
    meta = {"fingerprint": wanted, "classes": list(splits.train.classes), "layout": LAYOUT, "seed": seed,
            "input_size": model.size,
            "data": {"image_size": size, "normalize": False}, "epochs": fitted.epochs_trained,
            "valid_accuracy": fitted.valid_accuracy, "seconds": round(seconds, 1),
            "object_views": masks["train"] is not None}
    checkpoint = {"arch": ARCH, "num_classes": len(meta["classes"]), "masks": {}, "meta": meta,
                  "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    write_with(run.study.observer, lambda handle: torch.save(checkpoint, handle))
    log.info("observers: trained the observer classifier in %.1f s (%d epochs), accuracy %.3f on occluded "
             "validation views; saved in %s", seconds, fitted.epochs_trained, fitted.valid_accuracy,
             run.study.observer)
    return Observer(model.eval(), meta["classes"], data, device, meta)


# --- what the observer reads -------------------------------------------------------------------


def weighted(pictures: np.ndarray, maps: np.ndarray, exponent: float = 1.0) -> np.ndarray:
    """Pictures `[N, H, W, 3]` weighted by their maps scaled to 0..1 and raised to `exponent`: how the
    observer reads a heatmap (red stays, blue fades to black)."""
    weights = heat_weights(np.asarray(maps, np.float32), exponent)
    return (pictures * weights[..., None]).astype(np.uint8)


def seen(settings: Settings, shown: Shown, rendering: str) -> dict[str, np.ndarray]:
    """Each model's pictures as the observer reads them in `rendering`: the stimuli's own arrays for
    occlusion maps, the weighted pictures for heatmaps."""
    if rendering == "occlusion":
        return shown.drawn(settings.study, rendering)
    return {name: weighted(shown.pictures, maps, settings.study.heatmap_exponent) for name, maps in shown.maps.items()}


# --- workers -----------------------------------------------------------------------------------


@dataclass
class Perception:
    """How each worker of a pool perceives: a temperature and a noise level, per worker."""

    temperature: np.ndarray
    noise: np.ndarray


def draw_perception(workers: int, noise: float, rng: np.random.Generator) -> Perception:
    return Perception(np.exp(rng.normal(0, TEMPERATURE_SPREAD, workers)), rng.uniform(0, 2 * noise, workers))


def perceived(log_probabilities: np.ndarray, workers: np.ndarray, perception: Perception,
              rng: np.random.Generator) -> np.ndarray:
    """Probabilities `[..., C]` as the given workers `[...]` perceive log-probabilities `[..., C]`:
    fresh Gaussian noise of each worker's level, then each worker's temperature."""
    noise = perception.noise[workers][..., None] * rng.standard_normal(log_probabilities.shape)
    logits = (log_probabilities + noise) / perception.temperature[workers][..., None]
    logits -= logits.max(-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(-1, keepdims=True)


def recognised(probabilities: np.ndarray, none_confidence: float) -> np.ndarray:
    """Experiment 2: the most probable class's index, or C ('none') where it is below `none_confidence`."""
    top = probabilities.argmax(-1)
    return np.where(probabilities.max(-1) >= none_confidence, top, probabilities.shape[-1])


def compared(left: np.ndarray, right: np.ndarray, margin: float) -> np.ndarray:
    """Experiment 1, from each side's probability of the shown class: 0 left, 1 right, 2 equally."""
    return np.where(np.abs(left - right) < margin, 2, np.where(left > right, 0, 1))


@dataclass
class Workers:
    """The pool (`simulate.Crowd`) with its perception, and the simulation settings it was drawn with."""

    crowd: Crowd
    perception: Perception
    pool: SimulateSettings

    @property
    def attentive(self) -> np.ndarray:
        return np.flatnonzero(~self.crowd.spammer)


def draw_workers(settings: Settings, classes: list[str]) -> Workers:
    """The seeded pool every experiment draws its workers from."""
    crowd = settings.crowd
    pool = SimulateSettings(classes=classes, workers=max(crowd.workers, crowd.answers_per_item),
                            answers_per_item=crowd.answers_per_item, spammer_share=crowd.spammer_share,
                            seed=crowd.seed)
    rng = np.random.default_rng([crowd.seed, 0])
    drawn = draw_crowd(pool, rng)
    return Workers(drawn, draw_perception(pool.workers, crowd.observer_noise, rng), pool)


# --- answers ------------------------------------------------------------------------------------


@dataclass
class Observed:
    """One experiment answered by the observers: the MTurk file, the predicted truth and its inputs."""

    key: str
    kind: str
    results: Path
    truth: dict
    effects: SimulateSettings  # the predicted effects (pairs or models) on the pool's settings
    correlation: dict[str, float] = field(default_factory=dict)  # per pair 'a vs b': items' correlation
    power: list[dict] = field(default_factory=list)


@dataclass
class _Items:
    """The stimuli of one experiment as arrays: file names, log-probabilities, shown class."""

    urls: list[str]
    first: np.ndarray  # [n, C]: the model's (exp2) or the left model's (exp1) picture
    second: np.ndarray | None  # [n, C]: the right model's picture (exp1)
    label: np.ndarray  # [n] class index
    shown: list[tuple[str, ...]]  # per stimulus the models, as the kind shows them


def _items(stimuli: list[dict], spec: Kind, log_p: dict[str, np.ndarray], ids: list[int],
           classes: list[str]) -> _Items:
    row = {image: i for i, image in enumerate(ids)}
    try:
        index = np.array([row[int(s["image"])] for s in stimuli], int)
        label = np.array([classes.index(s["label"]) for s in stimuli], int)
        shown = [tuple(s[field] for field in spec.shows) for s in stimuli]
        sides = [np.stack([log_p[models[side]][i] for models, i in zip(shown, index)]) if stimuli
                 else np.zeros((0, len(classes))) for side in range(len(spec.shows))]
    except (KeyError, ValueError) as error:
        raise UserError(f"observers: the study's manifest names a stimulus its selection or models lack ({error}); "
                        "run `prunexplain study build` again") from None
    urls = [Path(s["file"]).name for s in stimuli]
    return _Items(urls, sides[0], sides[1] if spec.compares else None, label, shown)


def _attentive_choices(items: _Items, spec: Kind, workers: np.ndarray, pool: Workers, settings: Settings,
                       rng: np.random.Generator) -> np.ndarray:
    """The answer index each worker `[n, k]` would give from what it perceives (before side bias)."""
    crowd = settings.crowd
    first = perceived(items.first[:, None, :].repeat(workers.shape[1], 1), workers, pool.perception, rng)
    if not spec.compares:
        return recognised(first, crowd.none_confidence)
    second = perceived(items.second[:, None, :].repeat(workers.shape[1], 1), workers, pool.perception, rng)
    label = items.label[:, None, None]
    left = np.take_along_axis(first, label, -1)[..., 0]
    right = np.take_along_axis(second, label, -1)[..., 0]
    return compared(left, right, crowd.equal_margin)


def answer(items: _Items, spec: Kind, classes: list[str], pool: Workers, settings: Settings,
           rng: np.random.Generator) -> pd.DataFrame:
    """Every assignment's answer: `answers_per_item` different workers per stimulus; spammers answer
    at random; an attentive worker answers from what it perceives, and in experiment 1 a decided one
    picks its favoured side with its own side-bias probability instead (as `study.simulate`)."""
    options = np.array(spec.options(classes) if spec.asks_class else
                       [*(spec.picking(side) for side in spec.shows), NONE])
    workers = assign_workers(len(items.urls), pool.pool, rng)
    choice = _attentive_choices(items, spec, workers, pool, settings, rng)
    draws = rng.random((2, *workers.shape))
    if spec.compares:
        favoured = np.where(pool.crowd.favours_left[workers], 0, 1)
        biased = (choice != 2) & (draws[0] < pool.crowd.side_bias[workers])
        choice = np.where(biased, favoured, choice)
    random_choice = np.minimum((draws[1] * len(options)).astype(int), len(options) - 1)
    choice = np.where(pool.crowd.spammer[workers], random_choice, choice)
    return answer_rows(items.urls, workers, options[choice])


def _expected(items: _Items, spec: Kind, pool: Workers, settings: Settings, rng: np.random.Generator) -> np.ndarray:
    """Per stimulus, the share of each answer index among attentive workers before side bias, from
    EXPECTATION_DRAWS noisy perceptions by workers drawn from the attentive pool: `[n, options]`."""
    attentive = pool.attentive if len(pool.attentive) else np.arange(pool.pool.workers)
    workers = attentive[rng.integers(len(attentive), size=(len(items.urls), EXPECTATION_DRAWS))]
    choice = _attentive_choices(items, spec, workers, pool, settings, rng)
    options = items.first.shape[1] + 1 if not spec.compares else 3
    return np.stack([(choice == o).mean(1) for o in range(options)], axis=1)


def _pair_effects(items: _Items, shares: np.ndarray, names: list[str]) -> tuple[list[PairTruth], dict[str, float]]:
    """Per pair (in the study's model order): the attentive preference for a among decided answers, the
    'equally' share, and how much stimuli differ (the correlation of two answers on one stimulus)."""
    by_pair: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for (left, right), (p_left, p_right, p_none) in zip(items.shown, shares):
        a, b = sorted((left, right), key=names.index)
        p_a, p_b = (p_left, p_right) if left == a else (p_right, p_left)
        by_pair.setdefault((a, b), []).append((p_a, p_b, p_none))
    pairs, correlation = [], {}
    for (a, b), rows in by_pair.items():
        p_a, p_b, p_none = np.array(rows).T
        decided = p_a + p_b
        preference = float(p_a.sum() / decided.sum()) if decided.sum() > 0 else 0.5
        pairs.append(PairTruth(a=a, b=b, preference=preference, none_share=float(p_none.mean())))
        correlation[f"{a} vs {b}"] = _correlation(p_a, decided, preference)
    return pairs, correlation


def _correlation(p_a: np.ndarray, decided: np.ndarray, mean: float) -> float:
    """Between-stimulus variance of the preference over its binomial maximum (the beta-binomial
    correlation of two decided answers on one stimulus), weighted by how often each is decided."""
    if decided.sum() <= 0 or mean in (0.0, 1.0):
        return 0.0
    share = np.divide(p_a, decided, out=np.full_like(p_a, mean), where=decided > 0)
    variance = float(np.average((share - mean) ** 2, weights=decided))
    return float(np.clip(variance / (mean * (1 - mean)), 0.0, 0.95))


def _model_effects(items: _Items, shares: np.ndarray, names: list[str]) -> list[ModelTruth]:
    correct = shares[np.arange(len(items.label)), items.label]
    none = shares[:, -1]
    shown = np.array([models[0] for models in items.shown])
    effects = []
    for name in [n for n in names if (shown == n).any()]:
        right, nothing = float(correct[shown == name].mean()), float(none[shown == name].mean())
        effects.append(ModelTruth(name=name, correct=right, none_share=min(nothing, 1 - right)))
    return effects


def observe(settings: Settings, run: Run, keys: list[str], folder: Callable[[str], Path]) -> dict[str, Observed]:
    """The observers answer the built study's experiments `keys`; each one's answers (MTurk format) and
    predicted truth go to `SimulationFolder(folder(key))`."""
    manifest = read_manifest(run.study.manifest)
    if not keys:
        return {}
    started = time.perf_counter()
    shown = shown_again(settings, run)
    seer = observer(settings, run)
    if seer.classes != shown.classes:
        raise UserError(f"observers: {run.study.observer} was trained for other classes than the study shows; "
                        "delete it to train it again")
    observed = answer_study(settings, seer, shown, manifest, keys, folder)
    log.info("observers: answered %s in %.1f s", ", ".join(keys), time.perf_counter() - started)
    return observed


def answer_study(settings: Settings, seer: Observer, shown: Shown, manifest: dict, keys: list[str],
                 folder: Callable[[str], Path]) -> dict[str, Observed]:
    """The observer `seer` answers the stimuli a manifest lists for each experiment of `keys`, drawn
    from `shown` (the manifest's `experiments`, `models` and `stimuli` are read)."""
    names = list(manifest["models"])
    workers = draw_workers(settings, shown.classes)
    log_p: dict[str, dict[str, np.ndarray]] = {}
    observed = {}
    for key in keys:
        spec = kind(manifest["experiments"][key]["kind"])
        rendering = EXPERIMENTS[key].rendering if key in EXPERIMENTS else manifest["experiments"][key]["variant"]
        if rendering not in log_p:
            log_p[rendering] = {name: seer.log_probabilities(pictures)
                                for name, pictures in seen(settings, shown, rendering).items()}
        stimuli = [s for s in manifest["stimuli"] if s["experiment"] == key]
        items = _items(stimuli, spec, log_p[rendering], shown.ids, shown.classes)
        stream = list(manifest["experiments"]).index(key) + 1
        frame = answer(items, spec, shown.classes, workers, settings, np.random.default_rng([settings.crowd.seed,
                                                                                              stream]))
        shares = _expected(items, spec, workers, settings, np.random.default_rng([settings.crowd.seed, stream, 1]))
        observed[key] = _write(settings, key, spec, items, shares, frame, names, workers, seer,
                               SimulationFolder(folder(key)))
    return observed


def _write(settings: Settings, key: str, spec: Kind, items: _Items, shares: np.ndarray, frame: pd.DataFrame,
           names: list[str], workers: Workers, seer: Observer, folder: SimulationFolder) -> Observed:
    pool = workers.pool.model_copy(update={"experiment": spec.name})
    rows = mturk_rows(frame, pool, workers.crowd, np.random.default_rng([settings.crowd.seed, 7]))
    results = folder.results(spec.name)
    with atomic_open(results) as handle:
        rows.to_csv(handle, index=False)
    if spec.compares:
        pairs, correlation = _pair_effects(items, shares, names)
        effects = pool.model_copy(update={"pairs": pairs, "models": [], "images": max(1, len(items.urls))})
    else:
        correlation = {}
        effects = pool.model_copy(update={"models": _model_effects(items, shares, names), "pairs": [],
                                          "images": max(1, len(items.urls))})
    truth = expected_truth(effects) | {
        "source": "observers", "experiment_key": key, "answers": len(rows), "item_correlation": correlation,
        "observer": {k: seer.meta.get(k) for k in ("fingerprint", "epochs", "valid_accuracy", "seconds")},
        "crowd": settings.crowd.model_dump(mode="json"),
    }
    write_json(folder.truth, truth)
    return Observed(key, spec.name, results, truth, effects, correlation)


# --- prediction ---------------------------------------------------------------------------------


def predict(settings: Settings, run: Run) -> dict[str, Observed]:
    """`study predict`: the observers answer every experiment of the built study into `prediction/`,
    and each pair's power analysis runs on the effects they predict (its preference and 'equally'
    share, and how much its stimuli differ), with the crowd's pool settings; a pair needing more than
    MAX_ITEMS items is reported by the normal approximation alone. Real answers are not looked at:
    this is what a study would show before it is run."""
    manifest = read_manifest(run.study.manifest)
    keys = list(manifest["experiments"])
    observed = observe(settings, run, keys, lambda key: run.prediction.answers(key).root)
    for result in observed.values():
        if not kind(result.kind).compares:
            continue
        rows = []
        for pair in result.effects.pairs:
            rho = result.correlation.get(f"{pair.a} vs {pair.b}", 0.0)
            effects = result.effects.model_copy(update={"pairs": [pair], "item_correlation": rho})
            rows += power_analysis(effects, MAX_ITEMS)
        result.power = rows
        write_json(run.prediction.answers(result.key).power, rows)
    return observed
