"""The statistics of the verdict: is a pruned model non-inferior to the dense one, and from which rate not.

A comparison is paired: the same images (and seeds) under the pruned and the dense model, the
difference per image read the better way up (positive: the pruned model does better). The mean
difference gets its uncertainty from a hierarchical bootstrap: resample the seeds (training runs),
then the images within each drawn seed, so that the interval covers the randomness of training as
well as the choice of images; with one seed it is the ordinary bootstrap over images.

Non-inferiority within a margin m: H0 "the mean difference is at most -m" against H1 "it is above
-m", one-sided at `confidence`; the bootstrap p-value is the share of resampled means at or below -m.
The rates of one line (method, explainer, metric) are one family, corrected by Holm's step-down.
The breaking point is the largest rate up to which every rate is non-inferior; the first rate that is
not (or whose model has collapsed) is where the line breaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def hierarchical_means(replicates: list[np.ndarray], resamples: int, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution `[resamples]` of the mean over `replicates` (one array of per-image values
    per seed): each resample draws as many seeds as there are, with replacement, and within each drawn
    seed its images with replacement; the mean of every drawn value (seeds weigh by their images)."""
    rng = np.random.default_rng(seed)
    k = len(replicates)
    drawn = rng.integers(0, k, (resamples, k))
    sums, counts = np.zeros(resamples), np.zeros(resamples)
    for index, values in enumerate(replicates):
        values = np.asarray(values, dtype=np.float64)
        times = (drawn == index).sum(1)  # how often each resample drew this seed
        for repeat in range(1, int(times.max(initial=0)) + 1):
            rows = np.flatnonzero(times >= repeat)  # resamples that drew it at least `repeat` times
            picks = values[rng.integers(0, len(values), (len(rows), len(values)))]
            sums[rows] += picks.sum(1)
            counts[rows] += len(values)
    return sums / counts


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (each at most 1, monotone in the raw ones)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """One pruned model against the dense one on one measure, the difference the better way up."""

    rate: float
    difference: float  # mean of the paired differences
    ci_low: float  # two-sided interval at `confidence`, for reading
    ci_high: float
    bound: float  # one-sided lower bound at `confidence` (before correction)
    p: float  # of "the difference is at most -margin"
    p_adjusted: float
    non_inferior: bool
    collapsed: bool


@dataclass(frozen=True)
class Line:
    """Every rate of one method on one measure, and where it breaks."""

    measure: str
    margin: float
    comparisons: list[Comparison]

    @property
    def holds_to(self) -> float | None:
        """The largest rate up to which every rate is non-inferior (None: not even the first)."""
        held = None
        for comparison in self.comparisons:
            if not comparison.non_inferior:
                break
            held = comparison.rate
        return held

    @property
    def breaks_at(self) -> Comparison | None:
        """The first rate that is not non-inferior; None: none within the tested rates."""
        return next((c for c in self.comparisons if not c.non_inferior), None)


def compare(measure: str, differences: dict[float, list[np.ndarray]], margin: float, collapsed: set[float],
            confidence: float = 0.95, correction: str = "holm", resamples: int = 2000, seed: int = 0) -> Line:
    """The line of one measure: `differences[rate]` holds per seed the per-image paired differences
    (pruned - dense, the better way up). Collapsed rates are never non-inferior."""
    rates = sorted(differences)
    alpha = 1 - confidence
    rows, p_values = [], []
    for rate in rates:
        means = hierarchical_means(differences[rate], resamples, seed)
        low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
        p_values.append((1 + np.sum(means <= -margin)) / (resamples + 1))
        rows.append((rate, float(np.mean(np.concatenate(differences[rate]))), float(low), float(high),
                     float(np.quantile(means, alpha))))
    adjusted = holm(np.array(p_values)) if correction == "holm" else np.array(p_values)
    comparisons = [
        Comparison(rate, difference, low, high, bound, float(p), float(q), bool(q < alpha and rate not in collapsed),
                   rate in collapsed)
        for (rate, difference, low, high, bound), p, q in zip(rows, p_values, adjusted)
    ]
    return Line(measure, margin, comparisons)
