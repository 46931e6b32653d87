"""Automated explanation metrics, each per image over a batch of maps `[N, H, W]`.

Maps may hold small negatives: the study's PIL bicubic resize (`explain.upsample = "pil"`) keeps
its overshoot below the ReLU'd map. Metrics that treat a map as a mass of evidence (energy, entropy,
Gini) use its positive part, as the overshoot is no evidence against a pixel; metrics of ranks or
of the peak (pointing, top-k IoU, Spearman, deletion and insertion) and SSIM (min-max scaled) take
the values as they are, where the negatives simply rank lowest.

A registry maps a metric's name to a function of `MetricInputs`; the stage averages each metric
per model with a bootstrap confidence interval. Localisation metrics need object masks (the
embedded dataset has them; Imagenette does not). Faithfulness metrics query the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from skimage.metrics import structural_similarity

from prunexplain.explain.render import top_pixels


@dataclass
class MetricInputs:
    maps: np.ndarray  # [N, H, W], the model's maps
    masks: np.ndarray | None = None  # [N, H, W] bool object masks, where the dataset has them
    reference: np.ndarray | None = None  # [N, H, W] the dense model's maps of the same images
    share: float = 0.10  # the "most important pixels" share, as the occlusion maps


def _flat(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(len(maps), -1).astype(np.float64)


def _positive(maps: np.ndarray) -> np.ndarray:
    return np.maximum(_flat(maps), 0.0)


def energy_pointing(x: MetricInputs) -> np.ndarray:
    """Share of the map's positive energy that falls inside the object mask."""
    maps, masks = _positive(x.maps), _flat(x.masks)
    return (maps * masks).sum(1) / np.maximum(maps.sum(1), 1e-12)


def pointing_hit(x: MetricInputs) -> np.ndarray:
    """1 when the map's maximum lies on the object (first maximum in pixel order), else 0."""
    peak = _flat(x.maps).argmax(1)
    return _flat(x.masks)[np.arange(len(peak)), peak]


def _top(maps: np.ndarray, share: float) -> np.ndarray:
    return top_pixels(torch.from_numpy(np.ascontiguousarray(maps)), share).numpy().reshape(len(maps), -1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a & b).sum(1) / np.maximum((a | b).sum(1), 1)


def top_iou_mask(x: MetricInputs) -> np.ndarray:
    """IoU of the map's top pixels (the occlusion map's visible part) with the object mask."""
    return _iou(_top(x.maps, x.share), _flat(x.masks).astype(bool))


def spearman_to_dense(x: MetricInputs) -> np.ndarray:
    """Rank correlation of each map with the dense model's map of the same image."""
    a, b = rankdata(_flat(x.maps), axis=1), rankdata(_flat(x.reference), axis=1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.maximum(np.sqrt((a * a).sum(1) * (b * b).sum(1)), 1e-12)


def top_iou_dense(x: MetricInputs) -> np.ndarray:
    """IoU of the top pixels of the map and of the dense model's map: same occlusion map or not."""
    return _iou(_top(x.maps, x.share), _top(x.reference, x.share))


def ssim_dense(x: MetricInputs) -> np.ndarray:
    """Structural similarity (scikit-image) of the map with the dense model's map, both min-max scaled to 0..1."""
    pairs = zip(_scaled(x.maps), _scaled(x.reference))
    return np.array([structural_similarity(a, b, data_range=1.0) for a, b in pairs])


def _scaled(maps: np.ndarray) -> np.ndarray:
    flat = _flat(maps)
    low, high = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    return ((flat - low) / np.maximum(high - low, 1e-12)).reshape(maps.shape)


def entropy(x: MetricInputs) -> np.ndarray:
    """Shannon entropy of the map as a distribution over pixels, divided by its maximum log(H*W):
    1 for a flat map, 0 for a single pixel (positive part)."""
    p = _positive(x.maps)
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1)), 0.0)
    return terms.sum(1) / np.log(p.shape[1])


def gini(x: MetricInputs) -> np.ndarray:
    """Gini index of the map's positive part: 0 when all pixels are equal, near 1 when one pixel holds
    all (negatives would push it past 1)."""
    values = np.sort(_positive(x.maps), axis=1)
    n = values.shape[1]
    ranks = np.arange(1, n + 1)
    total = np.maximum(values.sum(1), 1e-12)
    return ((2 * ranks - n - 1) * values).sum(1) / (n * total)


@dataclass(frozen=True)
class Metric:
    function: Callable[[MetricInputs], np.ndarray]
    needs: str  # "" | "masks" | "reference"


METRICS: dict[str, Metric] = {
    "energy_pointing_game": Metric(energy_pointing, "masks"),
    "pointing_game_hit": Metric(pointing_hit, "masks"),
    "top10_iou_mask": Metric(top_iou_mask, "masks"),
    "spearman_to_dense": Metric(spearman_to_dense, "reference"),
    "top10_iou_dense": Metric(top_iou_dense, "reference"),
    "ssim_to_dense": Metric(ssim_dense, "reference"),
    "entropy": Metric(entropy, ""),
    "gini": Metric(gini, ""),
}


def bootstrap_mean(values: np.ndarray, seed: int = 0, resamples: int = 2000) -> tuple[float, float, float]:
    """Mean and percentile 95 % interval of the mean, from `resamples` resamples of the images."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)
