"""The pictures people judge: experiment 1 panels and experiment 2 occlusion maps.

Randomness is drawn first and recorded (which model goes left), then rendering is deterministic:
the same maps, sides and settings give byte-identical PNGs. Every stimulus has a name in the study's
scheme, which the experiment spec (`prunexplain.experiments`) both writes and parses back for the
analysis. Its file is called so with `study.stimulus_names = "study"` (the original's, which tells a
worker who looks at the image URL the models and the class); by default the file name is opaque, a
keyed hash of that name (`Naming`), and `study/key.csv` maps it back.
"""

from __future__ import annotations

import hmac
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from prunexplain.experiments import Experiment
from prunexplain.explain.render import Exp1Panels, Exp2Pictures, heatmap, occlude, visibility
from prunexplain.runs import StudyFolder


@dataclass(frozen=True)
class Stimulus:
    experiment: str
    file: str  # relative to the study folder
    image: int
    label: str
    left: str | None = None
    right: str | None = None
    model: str | None = None
    name: str | None = None  # its name in the study's scheme, where the file is named otherwise (opaque)

    def record(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class Naming:
    """How stimulus files are called: `study`, the study's scheme itself, or `opaque`, the first 20 hex
    digits of HMAC-SHA256(key, "<experiment>/<study name>"). The key is random per study and kept in
    its manifest (private; only the PNGs are published): without it nobody can tell from a name which
    models or class it shows, and with it a rebuild gives the same names."""

    scheme: str  # opaque | study
    key: bytes = b""

    def file_name(self, experiment: str, name: str) -> str:
        if self.scheme == "study":
            return name
        digest = hmac.new(self.key, f"{experiment}/{name}".encode(), "sha256").hexdigest()[:20]
        return digest + Path(name).suffix


def study_pairs(names: list[str], pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs of experiment 1: those asked for, or every pair of the models in their order."""
    return [tuple(pair) for pair in pairs] or list(itertools.combinations(names, 2))


def draw_sides(images: int, pairs: int, seed: int) -> np.ndarray:
    """`[pairs, images]` booleans, True: the pair's first model is drawn left.

    Per pair exactly half of the images put the first model left (the odd one out is itself a coin
    flip), in an order drawn from the seed: sides are balanced, random per image and reproducible.
    """
    rng = np.random.default_rng([seed, 1])
    sides = np.zeros((pairs, images), dtype=bool)
    for p in range(pairs):
        left = images // 2 + (images % 2) * int(rng.integers(2))
        sides[p] = rng.permutation(np.arange(images) < left)
    return sides


def shared_sides(images: int, pair_lists: list[list[tuple[str, str]]], seed: int) -> list[np.ndarray]:
    """Sides (as `draw_sides`) for each list of pairs, drawn once for all of them: a pair that is in
    several lists, in either order, puts the same model on the same side of an image in each.

    The first list's rows are exactly `draw_sides(images, len(first), seed)`, so adding more lists
    (the heatmap variant's own pairs) leaves the first experiment's sides as they were.
    """
    known = list(pair_lists[0]) if pair_lists else []
    for pairs in pair_lists[1:]:
        known += [(a, b) for a, b in pairs if (a, b) not in known and (b, a) not in known]
    drawn = draw_sides(images, len(known), seed)
    sides = []
    for pairs in pair_lists:
        rows = [drawn[known.index((a, b))] if (a, b) in known else ~drawn[known.index((b, a))] for a, b in pairs]
        sides.append(np.stack(rows) if rows else np.zeros((0, images), dtype=bool))
    return sides


def draw_maps(variant: str, images: np.ndarray, maps: np.ndarray, occlusion: float, alpha: float,
              count: str = "round", exponent: float = 1.0) -> np.ndarray:
    """Each image `[N, H, W, 3]` uint8 as a person sees its map: top pixels only (counted by `count`,
    see `render.visibility`), or a jet overlay of the map raised to `exponent`."""
    if variant == "occlusion":
        masks = visibility(torch.from_numpy(maps), occlusion, count).numpy()
        return np.stack([occlude(image, mask) for image, mask in zip(images, masks)])
    return np.stack([heatmap(image, cam, alpha, exponent) for image, cam in zip(images, maps)])


def _stimulus(experiment: Experiment, folder: StudyFolder, naming: Naming, image: int, label: str,
              models: tuple[str, ...]) -> Stimulus:
    """The stimulus of `models` on one image in the experiment's folder, its file called as `naming` says."""
    name = experiment.kind.stimulus_name(image, label, models)
    called = naming.file_name(experiment.key, name)
    file = folder.relative(folder.stimuli(experiment.key) / called)
    return Stimulus(experiment.key, file, image, label, **dict(zip(experiment.kind.shows, models)),
                    name=None if called == name else name)


def exp1_stimuli(experiment: Experiment, images: np.ndarray, drawn: dict[str, np.ndarray], labels: list[str],
                 pairs: list[tuple[str, str]], sides: np.ndarray, folder: StudyFolder,
                 progress: bool, ids: list[int] | None = None, layout: str = "compact",
                 naming: Naming = Naming("study")) -> list[Stimulus]:
    """Three panels per image and pair: the two models' maps around the original image. `ids` are
    the image ids the file names carry (default: positions 0..N-1)."""
    ids = list(range(len(images))) if ids is None else ids
    stimuli = []
    jobs = [(p, i) for p in range(len(pairs)) for i in range(len(images))]
    with Exp1Panels(layout) as panel:
        for p, i in tqdm(jobs, desc=experiment.key, unit="stimulus", disable=not progress):
            a, b = pairs[p]
            left, right = (a, b) if sides[p, i] else (b, a)
            stimulus = _stimulus(experiment, folder, naming, ids[i], labels[i], (left, right))
            panel(drawn[left][i], images[i], drawn[right][i], labels[i], folder.stimulus(stimulus.file))
            stimuli.append(stimulus)
    return stimuli


def exp2_stimuli(experiment: Experiment, drawn: dict[str, np.ndarray], labels: list[str], folder: StudyFolder,
                 progress: bool, ids: list[int] | None = None, layout: str = "compact",
                 naming: Naming = Naming("study")) -> list[Stimulus]:
    """One occluded image per image and model; `ids` as in `exp1_stimuli`."""
    ids = list(range(len(labels))) if ids is None else ids
    stimuli = []
    jobs = [(name, i) for name in drawn for i in range(len(labels))]
    with Exp2Pictures(layout) as picture:
        for name, i in tqdm(jobs, desc=experiment.key, unit="stimulus", disable=not progress):
            stimulus = _stimulus(experiment, folder, naming, ids[i], labels[i], (name,))
            picture(drawn[name][i], folder.stimulus(stimulus.file))
            stimuli.append(stimulus)
    return stimuli
