"""Accuracy against compression rate, one colour per method: after fine-tuning (solid) and right
after pruning, before fine-tuning (dashed). A `matplotlib.figure.Figure`, no pyplot: nothing global
changes when a stage draws it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from prunexplain.runs import write_with


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot_accuracy(rows: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Write the plot of every method's results rows (dense row first) to `path` (PNG)."""
    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    axis = figure.subplots()
    for colour, (method, table) in zip(matplotlib.colormaps["tab10"].colors, rows.items()):
        rates = [float(r["sparsity"]) for r in table]
        axis.plot(rates, [float(r["test_top1_accuracy"]) for r in table], "o-", color=colour, label=method)
        before = [(float(r["sparsity"]), _number(r["accuracy_before_finetune"])) for r in table[1:]]
        before = [(rate, acc) for rate, acc in before if acc is not None]
        if before:
            axis.plot(*zip(*[(rates[0], float(table[0]["test_top1_accuracy"])), *before]), "x--", color=colour,
                      alpha=0.6, label=f"{method} (before fine-tuning)")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("compression rate (all / non-zero weights in scope)")
    axis.set_ylabel("test top-1 accuracy")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return write_with(path, lambda handle: figure.savefig(handle, format="png"))
