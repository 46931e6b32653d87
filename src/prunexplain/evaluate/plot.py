"""One figure: each metric (mean and 95 % interval) and test accuracy against compression rate,
one line per pruning method, every line starting at the dense model (rate 1)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from prunexplain.explain.render import save_figure, plt


def plot_metrics(rows: list[dict], accuracies: dict[str, list[tuple[float, float]]], path: Path) -> Path:
    by_metric: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_metric[row["metric"]][row["method"]].append(row)
    panels = [*by_metric, "test accuracy"] if accuracies else list(by_metric)
    columns = 4
    figure, axes = plt.subplots(math.ceil(len(panels) / columns), columns, figsize=(16, 3.3 * math.ceil(len(panels) / columns)), dpi=90, squeeze=False)
    colours = dict(zip(sorted({r["method"] for r in rows} - {"dense"} | set(accuracies)), plt.cm.tab10.colors))
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
        axis.set_title(panel.replace("_", " "), fontsize=10)
        axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=7)
    figure.supxlabel("compression rate")
    figure.tight_layout()
    return save_figure(figure, path)
