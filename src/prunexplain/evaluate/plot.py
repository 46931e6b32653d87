"""One figure: each metric (mean and 95 % interval) and test accuracy against compression rate,
one line per pruning method, every line starting at the dense model (rate 1). A
`matplotlib.figure.Figure`, no pyplot: nothing global changes when a stage draws it."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from prunexplain.runs import same_rate, write_with


def plot_metrics(rows: list[dict], accuracies: dict[str, list[tuple[float, float]]], path: Path,
                 collapsed: dict[str, list[float]] | None = None) -> Path:
    """Write `metrics_figure` to `path` (PNG)."""
    figure = metrics_figure(rows, accuracies, collapsed)
    return write_with(path, lambda handle: figure.savefig(handle, format="png"))


def metrics_figure(rows: list[dict], accuracies: dict[str, list[tuple[float, float]]],
                   collapsed: dict[str, list[float]] | None = None) -> Figure:
    """The figure of metrics.csv's rows and each method's (rate, accuracy) points; the `collapsed` rates
    of each method crossed out in grey (their numbers describe no classifier)."""
    by_metric: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_metric[row["metric"]][row["method"]].append(row)
    panels = [*by_metric, "test accuracy"] if accuracies else list(by_metric)
    columns = 4
    lines = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(16, 3.3 * lines), dpi=90)
    axes = figure.subplots(lines, columns, squeeze=False)
    methods = sorted({r["method"] for r in rows} - {"dense"} | set(accuracies))
    palette = matplotlib.colormaps["tab10"].colors
    colours = {method: palette[i % len(palette)] for i, method in enumerate(methods)}
    for axis, panel in zip(axes.flat, panels):
        if panel == "test accuracy":
            for method, points in accuracies.items():
                axis.plot(*zip(*points), "o-", color=colours[method], label=method)
        else:
            dense = by_metric[panel].get("dense", [])
            for method, points in by_metric[panel].items():
                if method == "dense":
                    continue
                line = sorted(dense + points, key=lambda r: r["rate"])
                rates = [r["rate"] for r in line]
                axis.plot(rates, [r["mean"] for r in line], "o-", color=colours[method], label=method)
                axis.fill_between(rates, [r["ci_low"] for r in line], [r["ci_high"] for r in line],
                                  color=colours[method], alpha=0.15)
                gone = (collapsed or {}).get(method, [])
                _cross_out(axis, [r for r in points if any(same_rate(r["rate"], rate) for rate in gone)])
        axis.set_title(panel.replace("_", " "), fontsize=10)
        axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if any((collapsed or {}).values()):
        figure.suptitle("x: collapsed (test top-1 below the accuracy floor)", fontsize=9)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=7)
    figure.supxlabel("compression rate")
    figure.tight_layout()
    return figure


def _cross_out(axis, rows: list[dict]) -> None:
    if rows:
        axis.plot([r["rate"] for r in rows], [r["mean"] for r in rows], "x", color="0.3", markersize=11, mew=2)
