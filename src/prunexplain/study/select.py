"""Which test images a human study shows: N per class that every model of the study gets right.

The study showed only images all its models classify correctly, so that a person judges the
explanation and not a wrong answer. The draw is seeded; `selection.csv` records each image's
position in the test split, its file and its label (plain text, not pickled tensors).
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Selection:
    """The chosen images: their positions in the test split and the images themselves."""

    indices: tuple[int, ...]
    images: ImageSet

    def rows(self) -> list[dict]:
        """One row per image, `image` being the id the stimulus file names carry."""
        return [
            {"image": i, "test_index": index, "path": str(path), "label": label, "class": self.images.classes[label]}
            for i, (index, path, label) in enumerate(zip(self.indices, self.images.paths, self.images.labels))
        ]

    def write(self, path: Path) -> Path:
        return write_csv(path, self.rows())


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


def draw(labels: np.ndarray, eligible: np.ndarray, per_class: int, seed: int, classes: tuple[str, ...]) -> np.ndarray:
    """`per_class` eligible positions of each class, drawn from `seed`, sorted by class then position.

    Too few eligible images in any class stops with the counts of every class, so the user can
    lower `study.per_class` or choose better models.
    """
    counts = np.bincount(labels[eligible], minlength=len(classes))
    if (counts < per_class).any():
        listing = ", ".join(f"{name} {count}" for name, count in zip(classes, counts))
        raise UserError(
            f"study.per_class={per_class}: too few test images that every model classifies correctly "
            f"({listing}); lower study.per_class or choose models that are more accurate"
        )
    rng = np.random.default_rng(seed)
    chosen = [np.sort(rng.choice(np.flatnonzero(eligible & (labels == c)), per_class, replace=False))
              for c in range(len(classes))]
    return np.concatenate(chosen)


def select(models: dict[str, torch.nn.Module], test: ImageSet, dataset, data: DataSettings,
           per_class: int, seed: int, batch_size: int, device, progress: bool = True) -> Selection:
    """Predict the whole test split with every model, then draw the images all of them get right."""
    labels = np.asarray(test.labels)
    predicted = {
        name: predictions(model, dataset, data, batch_size, device)
        for name, model in tqdm(models.items(), desc="select", unit="model", disable=not progress)
    }
    eligible = all_correct(predicted, labels)
    log.info("select: %d of %d test images are classified correctly by all %d models",
             eligible.sum(), len(labels), len(models))
    indices = draw(labels, eligible, per_class, seed, test.classes)
    return Selection(tuple(int(i) for i in indices), test.subset(indices.tolist()))
