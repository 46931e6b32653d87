"""Meta-evaluation: how far each metric can be trusted on this run, before anyone reads it.

Two properties after Hedström et al. (2023, "The meta-evaluation problem in explainable AI",
MetaQuantus), measured on the run's own models and images:

- noise resilience: the images get a small Gaussian noise (`evaluate.meta_noise`, a change nobody
  would see), every model explains the noisy copies again and every metric scores them. Per model,
  the Spearman correlation between the per-image scores on the images and on their noisy copies;
  the mean over the models. Near 1: the metric judges the same images alike; near 0: its per-image
  verdicts are mostly noise.
- agreement: the Spearman correlation between two metrics' means across the run's models (the dense
  model and every pruned one), each metric turned so that higher reads better (`BETTER`). Metrics
  that measure the same quality should rank the models alike; a metric that disagrees with the
  others measures something else, or nothing. Entropy and Gini have no better direction (a sharp map
  is not a good map): they enter as they are, marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from prunexplain.config import BETTER
from prunexplain.runs import write_with


@dataclass(frozen=True)
class MetaRow:
    explainer: str
    metric: str
    better: str  # "higher", "lower" or "" (no direction)
    noise_resilience: float  # NaN where no noisy replicate was scored
    agreement: float  # mean Spearman with the other metrics across models; NaN below 3 models
    least_agreeing: str
    least_agreement: float


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho over the pairs where both have a value; NaN when either side is constant there
    (no ranking to compare) or fewer than 3 pairs remain."""
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def noise_resilience(clean: dict[str, np.ndarray], noisy: dict[str, np.ndarray]) -> float:
    """Mean over models of the Spearman correlation of per-image scores on the images and on their
    noisy copies (`clean[model]` restricted to the images that were copied); NaN where no model has a
    ranking on both sides (a metric constant over the images)."""
    values = [_spearman(clean[model], noisy[model]) for model in noisy]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def agreement_matrix(means: dict[str, np.ndarray]) -> np.ndarray:
    """Spearman correlation between every two metrics' per-model means, each turned so that higher
    reads better (`BETTER`); the diagonal is 1 where a metric varies over the models at all."""
    oriented = [means[m] * (BETTER.get(m, 0) or 1) for m in means]
    return np.array([[_spearman(a, b) for b in oriented] for a in oriented])


def meta_rows(explainer: str, clean: dict[str, dict[str, np.ndarray]], noisy: dict[str, dict[str, np.ndarray]],
              means: dict[str, np.ndarray]) -> list[MetaRow]:
    """One row per metric of `means` (metric -> per-model means, the models in one order):
    `clean[metric][model]` per-image scores on the copied images, `noisy` the same on the copies."""
    names, matrix = list(means), agreement_matrix(means)
    rows = []
    for i, metric in enumerate(names):
        others = {names[j]: matrix[i, j] for j in range(len(names)) if j != i and not np.isnan(matrix[i, j])}
        least = min(others, key=others.get) if others else ""
        resilience = noise_resilience(clean[metric], noisy[metric]) if metric in noisy else float("nan")
        rows.append(MetaRow(explainer, metric, {1: "higher", -1: "lower"}.get(BETTER.get(metric, 0), ""),
                            resilience, float(np.mean(list(others.values()))) if others else float("nan"),
                            least, others.get(least, float("nan"))))
    return rows


def plot_agreement(means: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """Per explainer (`means[explainer][metric]`: the models' means) a heatmap of `agreement_matrix`
    (red: two metrics rank the models alike, blue: oppositely, grey: a metric constant over the models)."""
    figure = Figure(figsize=(6.5 * len(means), 6), dpi=90)
    axes = figure.subplots(1, len(means), squeeze=False)[0]
    for axis, (explainer, by_metric) in zip(axes, means.items()):
        names, matrix = list(by_metric), agreement_matrix(by_metric)
        shown = axis.imshow(np.ma.masked_invalid(matrix), cmap=colormaps["coolwarm"].with_extremes(bad="0.85"),
                            vmin=-1, vmax=1)
        labels = [name.replace("_", " ") + ("" if BETTER.get(name, 0) else " *") for name in names]
        axis.set_xticks(range(len(names)), labels, rotation=60, ha="right", fontsize=7)
        axis.set_yticks(range(len(names)), labels, fontsize=7)
        axis.set_title(f"{explainer}: rank agreement across models", fontsize=10)
        figure.colorbar(shown, ax=axis, shrink=0.7)
    figure.tight_layout()
    return write_with(path, lambda handle: figure.savefig(handle, format="png"))
