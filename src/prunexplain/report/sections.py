"""The model-side sections of the report: settings, training, pruning and the automated metrics.

Each function reads one stage's files through the run's accessors and returns a `Section` holding
plain data for its template; a stage that has not run yet gives a section that names the command
which makes its files.
"""

from __future__ import annotations

import json
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from prunexplain.config import EvaluateSettings, ReportSettings
from prunexplain.report.blocks import Card, Cell, Picture, Table, number, percent, picture_file, picture_plot, read_csv
from prunexplain.report.page import Section
from prunexplain.runs import DENSE, Run, same_rate


def settings_section(run: Run) -> Section:
    """config.toml as it is: it describes what the run computed, not what a killed run meant to."""
    if not run.config.exists():
        return Section("settings", "Settings", missing="no config.toml yet: run `prunexplain run` (or any stage)")
    return Section("settings", "Settings", {"name": run.config.name, "text": run.config.read_text()})


# --- training --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Training:
    cards: list[Card]
    curves: Picture | None


def training_section(run: Run, settings: ReportSettings) -> Section:
    if not run.train_result.exists():
        return Section("training", "Training", missing="no trained model yet: run `prunexplain train`")
    figures = json.loads(run.train_result.read_text())
    cards = [
        Card("test top-1", percent(figures.get("test_top1"))), Card("test top-5", percent(figures.get("test_top5"))),
        Card("valid (restored epoch)", percent(figures.get("valid_accuracy"))),
        Card("train accuracy", percent(figures.get("train_accuracy"))),
        Card("epochs trained", str(figures.get("epochs_trained", "-"))),
        Card("restored epoch", str(figures.get("best_epoch", "-"))),
        Card("time", f"{number(figures.get('seconds'), 0)} s on {figures.get('device', '?')}"),
    ]
    curves = None
    if run.train_history.exists():
        curves = _curves(read_csv(run.train_history), figures.get("best_epoch"), settings)
    return Section("training", "Training", Training(cards, curves))


_CURVES = ("Loss (left) and top-1 accuracy (right) per epoch on the training and validation sets. The dotted "
           "line marks the epoch whose weights were kept (train.restore: the best validation epoch, or the last "
           "that improved on it by min_improvement). Training accuracy far above validation "
           "accuracy means overfitting; curves still rising at the end mean more epochs would help.")


def _curves(rows: list[dict[str, str]], best: object, settings: ReportSettings) -> Picture:
    """Loss and accuracy per epoch, train against valid: drawn here, the train stage writes no plot."""
    epochs = [int(r["epoch"]) for r in rows]
    figure = Figure(figsize=(10, 3.4), dpi=100)
    axes = figure.subplots(1, 2)
    for axis, quantity in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "o-"), ("valid", "s-")):
            axis.plot(epochs, [float(r[f"{split}_{quantity}"]) for r in rows], style, markersize=3, label=split)
        if isinstance(best, int):
            axis.axvline(best, color="grey", linestyle=":", label="restored epoch")
        axis.set_xlabel("epoch")
        axis.set_title(quantity)
        axis.grid(alpha=0.3)
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    return picture_plot(figure, _CURVES, "training curves", settings.figure_width)


# --- pruning ---------------------------------------------------------------------------------------

_PRUNE_COLUMNS = [  # results.csv column -> header, digits (None: a share shown in %)
    ("sparsity", "rate", 0), ("measured_rate_scope", "measured, pruned layers", 2),
    ("measured_rate_model", "measured, whole model", 2), ("nonzero_params", "non-zero weights", 0),
    ("test_top1_accuracy", "test top-1", None), ("test_top5_accuracy", "test top-5", None),
    ("accuracy_before_finetune", "top-1 before fine-tuning", None),
]


@dataclass(frozen=True)
class Pruning:
    plot: Picture | None
    tables: dict[str, Table]  # by pruning method


def pruning_section(run: Run, settings: ReportSettings) -> Section:
    tables = run.prune_tables()
    if not tables:
        return Section("pruning", "Accuracy against compression rate",
                       missing="no pruned models yet: run `prunexplain prune`")
    plot = None
    if run.accuracy_plot.exists():
        plot = picture_file(run.accuracy_plot, "Test top-1 accuracy after fine-tuning (solid) and right after "
                                               "pruning (dashed) against compression rate, log scale. Where the "
                                               "solid line falls, fine-tuning no longer recovers what pruning "
                                               "removed.", settings.figure_width)
    return Section("pruning", "Accuracy against compression rate",
                   Pruning(plot, {method: _prune_table(read_csv(path)) for method, path in tables.items()}))


def _prune_table(rows: list[dict[str, str]]) -> Table:
    """One method's results, its first row (rate 1) named as the dense model."""
    cells = [[_cell(row.get(key), digits) for key, _, digits in _PRUNE_COLUMNS] for row in rows]
    if cells:
        cells[0][0] += " (dense)"
    return Table.of([header for _, header, _ in _PRUNE_COLUMNS], cells)


def _cell(value: str | None, digits: int | None) -> str:
    return percent(value) if digits is None else number(value, digits)


# --- explanation metrics ---------------------------------------------------------------------------

_SANITY = ("sanity_spearman_top_layer", "sanity_spearman_all_layers")  # a model failing either is flagged


@dataclass(frozen=True)
class Sanity:
    """The randomisation check: whether it ran, and the models whose maps survived it."""

    ran: bool
    failed: list[str]
    threshold: float


@dataclass(frozen=True)
class Meta:
    """The meta-evaluation: per explainer a table of each metric's noise resilience and agreement."""

    tables: dict[str, Table]
    agreement: Picture | None


@dataclass(frozen=True)
class Metrics:
    plots: list[Picture]  # one per explainer
    sanity: Sanity
    tables: dict[str, Table]  # by pruning method (and explainer, where the run has several)
    meta: Meta | None = None  # absent in runs evaluated before the meta-evaluation


def metrics_section(run: Run, settings: ReportSettings) -> Section:
    if not run.metrics.exists():
        return Section("metrics", "Explanation metrics against compression rate",
                       missing="no explanation metrics yet: run `prunexplain evaluate`")
    threshold = _sanity_threshold(run)
    verdict = json.loads(run.verdict.read_text()) if run.verdict.exists() else {}
    rows = _metric_rows(run, verdict)
    explainers = list(dict.fromkeys(r["explainer"] for r in rows))
    plots = [picture_file(plot, f"{explainer}: each metric (mean, shaded {_interval(verdict)}) and test accuracy "
                          "against compression rate, one line per pruning method, starting at the dense model "
                          "(rate 1); collapsed models crossed out. Look for the rate where the agreement with the "
                          "dense model and the localisation start to fall.", settings.figure_width)
             for explainer in explainers if (plot := _metrics_plot(run, explainer)).exists()]
    failed = sorted({_model(r, len(explainers) > 1) for r in rows
                     if r["metric"] in _SANITY and float(r["mean"]) > threshold})
    sanity = Sanity(any(r["metric"] in _SANITY for r in rows), failed, threshold)
    tables = {}
    for explainer in explainers:
        for method, table in _by_method([r for r in rows if r["explainer"] == explainer], threshold,
                                        verdict.get("collapsed", {})).items():
            tables[f"{method} · {explainer}" if len(explainers) > 1 else method] = table
    return Section("metrics", "Explanation metrics against compression rate",
                   Metrics(plots, sanity, tables, _meta(run, settings)))


def _meta(run: Run, settings: ReportSettings) -> Meta | None:
    """The meta-evaluation's tables (one per explainer, every metric a row) and its heatmaps."""
    if not run.meta_evaluation.exists():
        return None
    tables: dict[str, list] = defaultdict(list)
    for row in read_csv(run.meta_evaluation):
        least = row["least_agreeing"].replace("_", " ")
        least = f"{least} ({number(row['least_agreement'])})" if least else "-"
        tables[row["explainer"]].append([row["metric"].replace("_", " "), row["better"] or "no direction",
                                         number(row["noise_resilience"]), number(row["agreement"]), least])
    headers = ["metric", "better", "noise resilience", "mean agreement", "least agreeing (rho)"]
    picture = picture_file(run.agreement_plot, "Rank agreement of every two metrics across the run's models (Spearman, "
                           "each metric turned so that higher reads better; * no better direction). Metrics that "
                           "measure one quality should be red together.", settings.figure_width) \
        if run.agreement_plot.exists() else None
    return Meta({explainer: Table.of(headers, body) for explainer, body in tables.items()}, picture)


def _sanity_threshold(run: Run) -> float:
    """The run's evaluate.sanity_threshold (config.toml), or the default where the file lacks it."""
    saved = tomllib.loads(run.config.read_text()).get("evaluate", {}) if run.config.exists() else {}
    return float(saved.get("sanity_threshold", EvaluateSettings().sanity_threshold))


def _model(row: dict[str, str], explainer: bool = False) -> str:
    name = DENSE if row["method"] == DENSE else f"{row['method']} x{float(row['rate']):g}"
    return f"{name} ({row['explainer']})" if explainer else name


def _metric_rows(run: Run, verdict: dict) -> list[dict[str, str]]:
    """Per explainer, metric, method and rate its mean and interval: over every seed where the run has
    several (the verdict's table), else over the images of the run's one (the evaluate stage's)."""
    if len(verdict.get("seeds", [])) > 1:
        return [{**row, "n": f"{row['seeds']} seeds x {row['images']}"} for row in read_csv(run.verdict_metrics)
                if row["explainer"] != "-"]  # test accuracy has tables of its own
    return [{"explainer": "gradcam", **row} for row in read_csv(run.metrics)]  # files from before the column


def _metrics_plot(run: Run, explainer: str) -> Path:
    """The verdict's figure (over every seed, collapsed models crossed out), else the evaluate stage's."""
    return run.verdict_plot(explainer) if run.verdict_plot(explainer).exists() else run.metrics_plot_of(explainer)


def _interval(verdict: dict) -> str:
    """Over what the figures' intervals vary: the verdict's (its confidence; seeds and images, or images)."""
    if not verdict:
        return "95 % interval over images"
    return f"{verdict['settings']['confidence']:.0%} interval {verdict.get('intervals', 'over images')}"


def _by_method(rows: list[dict[str, str]], threshold: float, collapsed: dict[str, list[float]]) -> dict[str, Table]:
    """Per pruning method a table: one row per metric, one column per rate (the dense model first);
    a collapsed model's column says so: its maps explain a model that no longer classifies."""
    cells: dict[str, dict[str, dict[float, dict]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        cells[row["method"]][row["metric"]][float(row["rate"])] = row
    dense = cells.pop(DENSE, {})
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    tables = {}
    for method, by_metric in (cells or {DENSE: {}}).items():
        rates = sorted({1.0} | {rate for values in by_metric.values() for rate in values})
        body = []
        for metric in metrics:
            values = {**dense.get(metric, {}), **by_metric.get(metric, {})}
            cells = [_metric_cell(metric, values.get(rate), threshold) for rate in rates]
            body.append([metric.replace("_", " "), *cells])
        gone = collapsed.get(method, [])
        headers = [DENSE if rate == 1 else f"x{rate:g} (collapsed)" if any(same_rate(rate, g) for g in gone)
                   else f"x{rate:g}" for rate in rates]
        tables[method] = Table.of(["metric", *headers], body)
    return tables


def _metric_cell(metric: str, row: dict | None, threshold: float) -> Cell:
    if row is None:
        return Cell("-")
    failed = metric in _SANITY and float(row["mean"]) > threshold
    title = f"95 % interval {number(row['ci_low'])} to {number(row['ci_high'])}, {row['n']} images"
    return Cell(number(row["mean"]), title=title, bad=failed)
