"""A run's replicates (its seeds) as the verdict reads them, and every measure aggregated over them.

With `run.seeds` each seed trained, pruned, explained and scored its own models (the run's folder
holds `study.seed_model`'s, `seeds/<seed>/` the others); without, the run is its one replicate. A
measure's mean per (method, rate) gets its interval from the hierarchical bootstrap (seeds, then
images within seed), which with one seed is the bootstrap over images: the table says which.
Test accuracy pairs every test image (the prune stage's per-image answers), each metric the
explained images (the evaluate stage's per-image scores).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunexplain.config import Settings, UserError, VerdictSettings
from prunexplain.evaluate.plot import plot_metrics
from prunexplain.runs import ModelKey, Run, same_rate, write_csv
from prunexplain.verdict.stats import hierarchical_means

log = logging.getLogger(__name__)

ACCURACY = "top-1 accuracy"


@dataclass
class Replicate:
    seed: int
    run: Run
    scores: dict[str, np.ndarray]  # `scores_key` -> per explained image
    correct: dict[str, dict[float, np.ndarray]]  # method -> rate (1: dense) -> per test image 1 or 0
    accuracies: dict[str, list[tuple[float, float]]]  # method -> (rate, test top-1), the prune tables'


def replicates(settings: Settings, run: Run) -> list[Replicate]:
    """Every replicate of the run, the run's own (the study's models) first."""
    return [_read(seed, run if seed == settings.train.seed else Run(run.replicate(seed)))
            for seed in settings.replicate_seeds()]


def _read(seed: int, run: Run) -> Replicate:
    if not run.scores.is_file():
        raise UserError(f"{run.scores}: no per-image scores of seed {seed}; run `prunexplain run` first")
    accuracies = run.test_accuracies()
    correct = {}
    for method, points in accuracies.items():
        answers = run.test_correct(method)
        whole = len(answers) == len(points)  # else (some of) its rates were pruned before they were recorded
        correct[method] = answers if whole else _explained_correct(run, method, [rate for rate, _ in points])
    return Replicate(seed, run, dict(np.load(run.scores)), correct, accuracies)


def _explained_correct(run: Run, method: str, rates: list[float]) -> dict[float, np.ndarray]:
    """Per rate whether each explained image is classified right: the pairs of a run whose prune stage
    predates the per-image test answers (its accuracy is then paired over fewer images)."""
    log.warning("%s: no per-image test answers (pruned by an older prunexplain): accuracy is paired over the "
                "explained images only; rerun the prune stage for the whole test split", run.prune_correct(method))
    with open(run.explained_images, newline="") as handle:
        labels = np.array([int(row["label"]) for row in csv.DictReader(handle)])
    keys = {rate: ModelKey() if rate == 1 else ModelKey.pruned(method, rate) for rate in rates}
    return {rate: (np.load(run.predictions(key)) == labels).astype(np.float64) for rate, key in keys.items()
            if run.predictions(key).is_file()}


def at_rate(values: dict[float, object], rate: float):
    """The value of `values` at `rate` (`same_rate`); None where it has none."""
    return next((v for r, v in values.items() if same_rate(r, rate)), None)


def collapsed_rates(reps: list[Replicate], floor: float) -> dict[str, list[float]]:
    """Per method the rates whose test top-1, averaged over the replicates, is below `floor`: models
    that no longer classify, whose explanations cannot count as good."""
    collapsed = {}
    for method, points in reps[0].accuracies.items():
        tested = [[a for rep in reps if (a := at_rate(dict(rep.accuracies.get(method, [])), rate)) is not None]
                  for rate, _ in points]
        collapsed[method] = [rate for (rate, _), accuracies in zip(points, tested)
                             if rate != 1 and np.mean(accuracies) < floor]
    return collapsed


def is_collapsed(collapsed: dict[str, list[float]], method: str, rate: float) -> bool:
    return any(same_rate(rate, other) for other in collapsed.get(method, []))


def accuracy_pairs(reps: list[Replicate], method: str, rate: float) -> list[np.ndarray]:
    """Per replicate the paired differences pruned - dense of each test image's right answer."""
    pairs = []
    for rep in reps:
        answers = rep.correct.get(method, {})
        pruned, dense = at_rate(answers, rate), at_rate(answers, 1.0)
        if pruned is not None and dense is not None:
            pairs.append(np.asarray(pruned, np.float64) - np.asarray(dense, np.float64))
    return pairs


def aggregate(reps: list[Replicate], tests: VerdictSettings, collapsed: dict[str, list[float]]) -> list[dict]:
    """Every measure's mean and interval per (explainer, metric, method, rate) over the replicates:
    test accuracy (explainer "-") and each metric of the per-image scores; the dense model once."""
    methods = list(reps[0].correct)
    rows = [_row("-", ACCURACY, ModelKey(), _answers(reps, methods[0], 1.0), tests, collapsed)] if methods else []
    for method in methods:
        for rate in sorted(rate for rate in reps[0].correct[method] if rate != 1):
            rows.append(_row("-", ACCURACY, ModelKey.pruned(method, rate), _answers(reps, method, rate), tests,
                             collapsed))
    for name in reps[0].scores:
        explainer, model, metric = name.split("|")
        values = [rep.scores[name] for rep in reps if name in rep.scores]
        rows.append(_row(explainer, metric, ModelKey.parse(model), values, tests, collapsed))
    return rows


def _answers(reps: list[Replicate], method: str, rate: float) -> list[np.ndarray]:
    """Per replicate each test image's right answer (1 or 0) of the model at `rate` (1: dense)."""
    return [np.asarray(a, np.float64) for rep in reps if (a := at_rate(rep.correct.get(method, {}), rate)) is not None]


def _row(explainer: str, metric: str, key: ModelKey, values: list[np.ndarray], tests: VerdictSettings,
         collapsed: dict[str, list[float]]) -> dict:
    kept = [v[np.isfinite(v)] for v in map(np.asarray, values)]
    kept = [v for v in kept if len(v)]
    alpha = 1 - tests.confidence
    if kept:
        means = hierarchical_means(kept, tests.resamples, tests.seed)
        low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
        mean = float(np.mean(np.concatenate(kept)))
    else:
        mean = low = high = float("nan")
    method = "dense" if key.dense else key.method
    return {"explainer": explainer, "metric": metric, "method": method, "rate": 1.0 if key.dense else key.rate,
            "mean": mean, "ci_low": float(low), "ci_high": float(high), "seeds": len(kept),
            "images": int(np.mean([len(v) for v in kept])) if kept else 0,
            "collapsed": not key.dense and is_collapsed(collapsed, method, key.rate)}


def write_aggregate(run: Run, rows: list[dict], collapsed: dict[str, list[float]]) -> list[Path]:
    """`verdict/metrics.csv` and per explainer its figure: every metric and test accuracy against rate,
    the interval as a band, collapsed models crossed out."""
    written = [write_csv(run.verdict_metrics, rows)]
    accuracy = [row for row in rows if row["metric"] == ACCURACY]
    for explainer in sorted({row["explainer"] for row in rows} - {"-"}):
        mine = [row for row in rows if row["explainer"] == explainer]
        written.append(plot_metrics(mine + accuracy, {}, run.verdict_plot(explainer), collapsed))
    return written
