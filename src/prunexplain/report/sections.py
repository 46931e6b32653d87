"""The model-side sections of the report: settings, training, pruning and the automated metrics.

Each function reads one stage's files from the run directory and returns a `Section`; a stage
that has not run yet gives a section that names the command which makes its files.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from prunexplain.config import EvaluateSettings, ReportSettings  # noqa: E402
from prunexplain.report.html import Raw, Section, details, esc, figure, join, number, percent, png_uri, table, tag  # noqa: E402
from prunexplain.runs import Run  # noqa: E402


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def cards(items: list[tuple[str, object]]) -> Raw:
    """Headline numbers as a row of small boxes: the value big, what it is below."""
    return tag("div", join(tag("div", tag("b", value) + tag("span", label), class_="card") for label, value in items),
               class_="cards")


def settings_section(run: Run) -> Section:
    path = run.path("config.toml")
    if not path.exists():
        return Section("settings", "Settings", missing="no config.toml yet: run `prunexplain run` (or any stage)")
    body = tag("p", "The resolved settings of every stage; the file is itself a valid --config.", class_="note")
    return Section("settings", "Settings", body + details("config.toml", tag("pre", path.read_text())))


def training_section(run: Run, settings: ReportSettings) -> Section:
    history, result = run.path("train", "history.csv"), run.path("train", "result.json")
    if not result.exists():
        return Section("training", "Training", missing="no trained model yet: run `prunexplain train`")
    figures = json.loads(result.read_text())
    body = cards([
        ("test top-1", percent(figures.get("test_top1"))), ("test top-5", percent(figures.get("test_top5"))),
        ("valid (best epoch)", percent(figures.get("valid_accuracy"))),
        ("train (best epoch)", percent(figures.get("train_accuracy"))),
        ("epochs trained", figures.get("epochs_trained", "-")), ("best epoch", figures.get("best_epoch", "-")),
        ("time", f"{number(figures.get('seconds'), 0)} s on {figures.get('device', '?')}"),
    ])
    if history.exists():
        body += tag("figure", tag("img", src=_curves(read_csv(history), figures.get("best_epoch"), settings),
                                  alt="training curves") + tag("figcaption", _CURVES))
    return Section("training", "Training", body)


_CURVES = ("Loss (left) and top-1 accuracy (right) per epoch on the training and validation sets. The dotted "
           "line marks the best validation epoch, whose weights were kept. Training accuracy far above validation "
           "accuracy means overfitting; curves still rising at the end mean more epochs would help.")


def _curves(rows: list[dict[str, str]], best: object, settings: ReportSettings) -> Raw:
    """Loss and accuracy per epoch, train against valid, as an inline PNG."""
    epochs = [int(r["epoch"]) for r in rows]
    figure_, axes = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100)
    for axis, quantity in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "o-"), ("valid", "s-")):
            axis.plot(epochs, [float(r[f"{split}_{quantity}"]) for r in rows], style, markersize=3, label=split)
        if isinstance(best, int):
            axis.axvline(best, color="grey", linestyle=":", label="best epoch")
        axis.set_xlabel("epoch")
        axis.set_title(quantity)
        axis.grid(alpha=0.3)
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8)
    figure_.tight_layout()
    buffer = io.BytesIO()
    figure_.savefig(buffer, format="png")
    plt.close(figure_)
    return png_uri(Image.open(buffer), settings.figure_width, palette=True)


_PRUNE_COLUMNS = [  # results.csv column -> header, digits (None: a share shown in %)
    ("sparsity", "rate", 0), ("measured_rate_scope", "measured, pruned layers", 2),
    ("measured_rate_model", "measured, whole model", 2), ("nonzero_params", "non-zero weights", 0),
    ("test_top1_accuracy", "test top-1", None), ("test_top5_accuracy", "test top-5", None),
    ("accuracy_before_finetune", "top-1 before fine-tuning", None),
]


def pruning_section(run: Run, settings: ReportSettings) -> Section:
    tables = sorted(run.path("prune").glob("*/results.csv"))
    if not tables:
        return Section("pruning", "Accuracy against compression rate",
                       missing="no pruned models yet: run `prunexplain prune`")
    body = Raw("")
    plot = run.path("prune", "accuracy.png")
    if plot.exists():
        body += figure(plot, "Test top-1 accuracy after fine-tuning (solid) and right after pruning (dashed) "
                             "against compression rate, log scale. Where the solid line falls, fine-tuning no "
                             "longer recovers what pruning removed.", settings.figure_width)
    for path in tables:
        rows = [[_cell(row.get(key), digits) for key, _, digits in _PRUNE_COLUMNS] for row in read_csv(path)]
        if rows:
            rows[0][0] += " (dense)"
        body += tag("h3", path.parent.name) + table([header for _, header, _ in _PRUNE_COLUMNS], rows)
    note = ("Rate = all / non-zero weights in the pruned layers. Measured rates are counted from the "
            "saved tensors; the whole-model rate is lower because layers outside the pruning scope stay dense.")
    return Section("pruning", "Accuracy against compression rate", body + tag("p", note, class_="note"))


def _cell(value: str | None, digits: int | None) -> str:
    return percent(value) if digits is None else number(value, digits)


_READING = ("How to read: localisation (energy pointing game, pointing game hit, top-10 IoU with the object mask) "
            "and insertion AUC: higher is better; deletion AUC: lower is better; agreement with the dense model "
            "(Spearman, top-10 IoU, SSIM): 1 = the dense model's map; entropy 1 = a flat map, Gini 0 = flat. "
            "Sanity: Spearman similarity of the maps after randomising the model's weights; low is good. Hover "
            "a cell for its 95 % interval.")


def metrics_section(run: Run, settings: ReportSettings) -> Section:
    path = run.path("evaluate", "metrics.csv")
    if not path.exists():
        return Section("metrics", "Explanation metrics against compression rate",
                       missing="no explanation metrics yet: run `prunexplain evaluate`")
    threshold = _sanity_threshold(run)
    body = Raw("")
    if run.path("evaluate", "metrics.png").exists():
        body += figure(run.path("evaluate", "metrics.png"),
                       "Each metric (mean, shaded 95 % interval) and test accuracy against compression rate, one "
                       "line per pruning method, starting at the dense model (rate 1). Look for the rate where "
                       "the agreement with the dense model and the localisation start to fall.", settings.figure_width)
    rows = read_csv(path)
    failed = sorted({_model(r) for r in rows if r["metric"] == "sanity_spearman_all_layers"
                     and float(r["mean"]) > threshold})
    body += tag("p", _sanity_line(rows, failed, threshold))
    for method, table_ in _by_method(rows, threshold).items():
        body += tag("h3", method) + table_
    return Section("metrics", "Explanation metrics against compression rate", body + tag("p", _READING, class_="note"))


def _sanity_threshold(run: Run) -> float:
    """The run's evaluate.sanity_threshold (config.toml), or the default where the file lacks it."""
    path = run.path("config.toml")
    saved = tomllib.loads(path.read_text()).get("evaluate", {}) if path.exists() else {}
    return float(saved.get("sanity_threshold", EvaluateSettings().sanity_threshold))


def _model(row: dict[str, str]) -> str:
    return "dense" if row["method"] == "dense" else f"{row['method']} x{float(row['rate']):g}"


def _sanity_line(rows: list[dict[str, str]], failed: list[str], threshold: float) -> Raw:
    if not any(r["metric"] == "sanity_spearman_all_layers" for r in rows):
        return esc("The randomisation sanity check was not run (evaluate.sanity = false).")
    if not failed:
        return esc(f"Sanity check passed by every model: maps change when the weights are randomised "
                   f"(Spearman similarity at most {threshold:g}).")
    return tag("strong", f"Sanity check failed by {', '.join(failed)}: their maps stay similar (Spearman above "
                         f"{threshold:g}) after every layer is randomised, so they do not explain the model.",
               class_="pred")


def _by_method(rows: list[dict[str, str]], threshold: float) -> dict[str, Raw]:
    """Per pruning method a table: one row per metric, one column per rate (the dense model first)."""
    cells: dict[str, dict[str, dict[float, dict]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        cells[row["method"]][row["metric"]][float(row["rate"])] = row
    dense = cells.pop("dense", {})
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    tables = {}
    for method, by_metric in (cells or {"dense": {}}).items():
        rates = sorted({1.0} | {rate for values in by_metric.values() for rate in values})
        body = []
        for metric in metrics:
            values = {**dense.get(metric, {}), **by_metric.get(metric, {})}
            body.append([metric.replace("_", " "), *(_metric_cell(metric, values.get(rate), threshold) for rate in rates)])
        tables[method] = table(["metric", *(("dense" if rate == 1 else f"x{rate:g}") for rate in rates)], body)
    return tables


def _metric_cell(metric: str, row: dict | None, threshold: float) -> Raw:
    if row is None:
        return tag("td", "-")
    failed = metric == "sanity_spearman_all_layers" and float(row["mean"]) > threshold
    title = f"95 % interval {number(row['ci_low'])} to {number(row['ci_high'])}, {row['n']} images"
    return tag("td", number(row["mean"]), title=title, class_="bad" if failed else None)
