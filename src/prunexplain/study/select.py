"""Which test images a human study shows: N per class that every model of the study gets right.

The study showed only images all its models classify correctly, so that a person judges the
explanation and not a wrong answer. Three ways to choose (`study.selection`, `study.images_csv`):
- `random`: a seeded draw per class; image ids 0-based, grouped by class.
- `first`: the original's (experiments_prep.ipynb): the first N per class in the order of the test
  loader shuffled with the seed; image ids 1-based in that order, classes interleaved.
- a CSV of test images (`images_csv`): shown in its row order, ids 1-based rows.
`selection.csv` records each image's id, the id scheme, its position in the test split, its file and
its label (plain text, not pickled tensors).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from prunexplain.config import DataSettings, UserError
from prunexplain.data.loaders import ImageSet, prepare
from prunexplain.experiments import study_model_name
from prunexplain.runs import ModelKey, write_csv

log = logging.getLogger(__name__)


def study_key(text: str) -> ModelKey:
    """A model of `study.models` ('dense', '<method>/cr_<rate>'); anything else is a UserError naming the key."""
    try:
        return ModelKey.parse(text)
    except UserError as error:
        raise UserError(f"study.models: {error}") from None


def study_name(text: str) -> str:
    """A model of `study.models` as the study's file names spell it: 'local_magnitude_unstructured/cr_2'
    -> '2pruned', 'dense' -> 'nonpruned' (experiments.study_model_name)."""
    return study_model_name(study_key(text))


# What the `image` ids of each way of choosing mean, as selection.csv records it.
ID_SCHEMES = {
    "random": "0-based position in this list (drawn per class from study.seed, grouped by class)",
    "first": "1-based position in this list (the test loader's order, shuffled with study.seed)",
    "csv": "1-based row of study.images_csv",
}


@dataclass(frozen=True)
class Selection:
    """The chosen images: their positions in the test split, the images themselves, and the ids the
    stimulus file names carry (`scheme`, a key of ID_SCHEMES, says how they count)."""

    indices: tuple[int, ...]
    images: ImageSet
    scheme: str = "random"

    @property
    def ids(self) -> list[int]:
        """0-based for the random draw (as it always was), 1-based otherwise (the original's i+1, CSV rows)."""
        start = 0 if self.scheme == "random" else 1
        return list(range(start, start + len(self.indices)))

    def rows(self) -> list[dict]:
        """One row per image, `image` being the id the stimulus file names carry."""
        return [
            {"image": i, "id_scheme": ID_SCHEMES[self.scheme], "test_index": index, "path": str(path),
             "label": label, "class": self.images.classes[label]}
            for i, index, path, label in zip(self.ids, self.indices, self.images.paths, self.images.labels)
        ]

    def write(self, path: Path) -> Path:
        return write_csv(path, self.rows())


def read_selection(path: Path, test: ImageSet) -> Selection:
    """The selection `Selection.write` wrote, on the run's test split: what later readers of a built
    study (the observers) redraw its stimuli from. A file that does not fit the split stops here."""
    schemes = {text: key for key, text in ID_SCHEMES.items()}
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        indices = tuple(int(row["test_index"]) for row in rows)
        scheme = schemes[rows[0]["id_scheme"]] if rows else "random"
        ids = [int(row["image"]) for row in rows]
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; run `prunexplain study build` first") from None
    except (KeyError, ValueError, OSError) as error:
        raise UserError(f"{path}: not a study selection ({type(error).__name__}: {error})") from None
    if any(not 0 <= index < len(test) for index in indices):
        raise UserError(f"{path}: names test images the run's test split ({len(test)} images) does not have; "
                        "run `prunexplain study build` again")
    selection = Selection(indices, test.subset(list(indices)), scheme)
    paths = [str(p) for p in selection.images.paths]
    if selection.ids != ids or paths != [row["path"] for row in rows]:
        raise UserError(f"{path}: its images are not the run's test split's; run `prunexplain study build` again")
    return selection


@torch.no_grad()
def predictions(model: torch.nn.Module, dataset, data: DataSettings, batch_size: int, device) -> np.ndarray:
    """Predicted class of every image of a uint8 dataset, in order (float32, no autocast: the
    selection must not depend on mixed-precision rounding)."""
    model.eval()
    out = [model(prepare(x.to(device), data)).argmax(1).cpu() for x, _ in DataLoader(dataset, batch_size)]
    return torch.cat(out).numpy()


def all_correct(predicted: dict[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Boolean per image: every model predicts its label."""
    return np.logical_and.reduce([p == labels for p in predicted.values()])


def _enough(labels: np.ndarray, eligible: np.ndarray, per_class: int, classes: tuple[str, ...]) -> None:
    """Too few eligible images in any class stops with the counts of every class, so the user can
    lower `study.per_class` or choose better models."""
    counts = np.bincount(labels[eligible], minlength=len(classes))
    if (counts < per_class).any():
        listing = ", ".join(f"{name} {count}" for name, count in zip(classes, counts))
        raise UserError(
            f"study.per_class={per_class}: too few test images that every model classifies correctly "
            f"({listing}); lower study.per_class or choose models that are more accurate"
        )


def draw(labels: np.ndarray, eligible: np.ndarray, per_class: int, seed: int, classes: tuple[str, ...]) -> np.ndarray:
    """`per_class` eligible positions of each class, drawn from `seed`, sorted by class then position."""
    _enough(labels, eligible, per_class, classes)
    rng = np.random.default_rng(seed)
    chosen = [np.sort(rng.choice(np.flatnonzero(eligible & (labels == c)), per_class, replace=False))
              for c in range(len(classes))]
    return np.concatenate(chosen)


def loader_order(n: int, seed: int, batch_size: int = 50) -> np.ndarray:
    """Positions 0..n-1 in the order the original's test loader visits them: a `DataLoader` with
    `shuffle=True, generator=torch.Generator().manual_seed(seed)` (experiments/utils.py,
    deterministic_testloader).

    The order is the one this torch version's DataLoader draws, taken from a real DataLoader: it
    draws a base seed from the generator before its sampler's randperm, so a hand-made randperm
    from the same seed would give another order. The batch size does not change it.
    """
    if n == 0:
        return np.zeros(0, np.int64)
    loader = DataLoader(range(n), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return torch.cat(list(loader)).numpy()


def first(labels: np.ndarray, eligible: np.ndarray, per_class: int, order: np.ndarray,
          classes: tuple[str, ...]) -> np.ndarray:
    """The first `per_class` eligible positions of each class in `order`, kept in that order (classes
    interleaved): the original took images from its shuffled loader until every class had enough."""
    _enough(labels, eligible, per_class, classes)
    ordered = order[eligible[order]]
    found = labels[ordered]
    seen = np.cumsum(found[:, None] == np.arange(len(classes)), axis=0)[np.arange(len(found)), found]
    return ordered[seen <= per_class]


def select(models: dict[str, torch.nn.Module], test: ImageSet, dataset, data: DataSettings,
           per_class: int, seed: int, batch_size: int, device, progress: bool = True,
           how: str = "random") -> Selection:
    """Predict the whole test split with every model, then choose (`how`: random, first) among the
    images all of them get right."""
    labels = np.asarray(test.labels)
    predicted = {
        name: predictions(model, dataset, data, batch_size, device)
        for name, model in tqdm(models.items(), desc="select", unit="model", disable=not progress)
    }
    eligible = all_correct(predicted, labels)
    log.info("select: %d of %d test images are classified correctly by all %d models",
             eligible.sum(), len(labels), len(models))
    if how == "first":
        indices = first(labels, eligible, per_class, loader_order(len(labels), seed, batch_size), test.classes)
    elif how == "random":
        indices = draw(labels, eligible, per_class, seed, test.classes)
    else:
        raise UserError(f"study.selection: unknown {how!r} (random, first)")
    return Selection(tuple(int(i) for i in indices), test.subset(indices.tolist()), how)


def from_csv(path: Path, test: ImageSet, root: Path) -> Selection:
    """The test images a CSV names (columns `path`, `label`), in its row order, ids 1-based rows.

    A path is relative to the dataset folder `root` or absolute, and must be an image of the test
    split (shown images must be ones the models never trained on); its label must be the one the
    dataset gives it. Any other row stops with the file and the row (1-based, the header not counted).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except FileNotFoundError:
        raise UserError(f"study.images_csv: no such file {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"study.images_csv: {path}: not a readable CSV file ({error})") from None
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise UserError(f"{path}: no column {' or '.join(missing)} (columns path, label expected)")
    if not rows:
        raise UserError(f"{path}: no images listed")
    positions = {Path(p).resolve(): i for i, p in enumerate(test.paths)}
    rows_of: dict[int, int] = {}  # test position -> its row
    for number, row in enumerate(rows, start=1):
        given = Path(row["path"])
        index = positions.get((given if given.is_absolute() else Path(root) / given).resolve())
        if index is None:
            raise UserError(f"{path}: row {number}: path {row['path']!r} is not an image of the test split of {root}")
        if row["label"] not in test.classes:
            raise UserError(f"{path}: row {number}: unknown label {row['label']!r} (labels: {', '.join(test.classes)})")
        actual = test.classes[test.labels[index]]
        if row["label"] != actual:
            raise UserError(f"{path}: row {number}: label {row['label']!r}, but the dataset labels {row['path']!r} "
                            f"{actual!r}")
        if index in rows_of:
            raise UserError(f"{path}: row {number}: {row['path']!r} repeats row {rows_of[index]}")
        rows_of[index] = number
    indices = list(rows_of)
    log.info("select: %d images from %s", len(indices), path)
    return Selection(tuple(indices), test.subset(indices), "csv")
