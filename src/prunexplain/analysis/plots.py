"""PNG plots of the analysis, drawn from the summary's numbers (never from raw answers again).

Figures are built with `matplotlib.figure.Figure` (no pyplot, no global figure state, no GUI
backend needed) and written atomically through `runs.write_with`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from prunexplain.experiments import COMPARE, NONE
from prunexplain.runs import write_with

_DPI = 120
_EQUALLY = COMPARE.label(NONE).lower()  # 'equally reasonable': the words people chose


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    return write_with(path, lambda handle: figure.savefig(handle, format="png", dpi=_DPI))


def _errors(values: Sequence[float], intervals: Sequence[Sequence[float]]) -> np.ndarray:
    """Asymmetric error bars from intervals; zero where an interval is unknown."""
    low = [v - lo if not math.isnan(lo) else 0.0 for v, (lo, _) in zip(values, intervals)]
    high = [hi - v if not math.isnan(hi) else 0.0 for v, (_, hi) in zip(values, intervals)]
    return np.array([low, high])


def preference_bars(pairs: list[dict], path: Path) -> Path:
    """Left: how each pair's answers split (a / equally / b). Right: share preferring a among decided, with CIs."""
    names = [f"{p['a']} vs {p['b']}" for p in pairs]
    y = np.arange(len(pairs))
    figure = Figure(figsize=(11, 1.2 + 0.7 * len(pairs)))
    split, prefer = figure.subplots(1, 2)
    left = np.zeros(len(pairs))
    for key, label, color in (("a_preferred", "a preferred", "#4477aa"), ("none", _EQUALLY, "#bbbbbb"),
                              ("b_preferred", "b preferred", "#ee6677")):
        widths = np.array([p[key] / p["n"] if p["n"] else 0.0 for p in pairs])
        split.barh(y, widths, left=left, color=color, label=label)
        left += widths
    split.set(yticks=y, yticklabels=names, xlim=(0, 1), xlabel="share of answers")
    split.invert_yaxis()
    split.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize="small", frameon=False)
    shares = [p["a_share"] for p in pairs]
    prefer.errorbar(shares, y, xerr=_errors(shares, [p["a_share_ci"] for p in pairs]), fmt="o", color="#4477aa",
                    capsize=4, label="Wilson (answers)")
    boot = [p.get("a_share_ci_items", [math.nan, math.nan]) for p in pairs]
    if not all(math.isnan(lo) for lo, _ in boot):
        prefer.errorbar(shares, y + 0.15, xerr=_errors(shares, boot), fmt="none", ecolor="#228833", capsize=3,
                        label="bootstrap (items)")
    prefer.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
    prefer.set(yticks=y, yticklabels=[f"{p['a']} over {p['b']}" for p in pairs],
               xlabel="share preferring a among decided answers")
    prefer.invert_yaxis()
    prefer.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return _save(figure, path)


def class_heatmaps(rows: list[dict], labels: Sequence[str], path: Path) -> Path:
    """Per class and pair: share 'equally reasonable' and share preferring a among decided answers."""
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in rows))
    index = {(r["class"], r["a"], r["b"]): r for r in rows}
    figure = Figure(figsize=(4 + 2.2 * len(pairs), 1.5 + 0.4 * len(labels)))
    axes = figure.subplots(1, 2)
    for axis, key, title, cmap, limits in (
        (axes[0], "none_share", f"share '{_EQUALLY}'", "Greys", (0, 1)),
        (axes[1], "a_share", "share preferring a (of decided)", "RdBu", (0.2, 0.8)),
    ):
        values = np.array([[index[(label, a, b)][key] for a, b in pairs] for label in labels], dtype=float)
        image = axis.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if not math.isnan(value):
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="small",
                          color="white" if key == "none_share" and value > 0.6 else "black")
        axis.set(xticks=range(len(pairs)), xticklabels=[f"{a}\nvs {b}" for a, b in pairs],
                 yticks=range(len(labels)), yticklabels=labels, title=title)
        figure.colorbar(image, ax=axis, shrink=0.8)
    return _save(figure, path)


def worker_scatter(workers, path: Path, y: str = "none_share", label: str = "share 'none'") -> Path:
    """Each worker's median work time against its share of 'none' (dot size: answers)."""
    figure = Figure(figsize=(6, 4.5))
    axis = figure.subplots()
    sizes = 10 + 60 * workers["answers"] / max(workers["answers"].max(), 1)
    axis.scatter(workers["median_work_time"], workers[y], s=sizes, alpha=0.5, color="#4477aa")
    axis.set(xlabel="median work time per answer (s)", ylabel=label, ylim=(-0.05, 1.05),
             title=f"{len(workers)} workers")
    if workers["median_work_time"].notna().any():
        axis.set_xscale("log")
    return _save(figure, path)


def accuracy_bars(models: dict[str, dict], path: Path) -> Path:
    """Recognition accuracy per model with Wilson intervals, and the share of 'none'."""
    names = list(models)
    x = np.arange(len(names))
    figure = Figure(figsize=(2 + 1.5 * len(names), 4.5))
    axis = figure.subplots()
    accuracy = [models[m]["accuracy"] for m in names]
    none = [models[m]["none_share"] for m in names]
    axis.bar(x - 0.2, accuracy, width=0.4, color="#4477aa", label="correct",
             yerr=_errors(accuracy, [models[m]["accuracy_ci"] for m in names]), capsize=4)
    axis.bar(x + 0.2, none, width=0.4, color="#bbbbbb", label="'none'",
             yerr=_errors(none, [models[m]["none_ci"] for m in names]), capsize=4)
    for xi, value in zip(x, accuracy):
        axis.text(xi - 0.2, value / 2, f"{value:.3f}", ha="center", va="center", color="white", fontsize="small")
    axis.set(xticks=x, xticklabels=names, ylim=(0, 1), ylabel="share of answers")
    axis.legend(loc="upper right")
    return _save(figure, path)


def confusion_matrix(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str, path: Path) -> Path:
    """True class (rows) x answer (columns, incl. 'none'); colour is the row share, text the count."""
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, matrix / np.maximum(totals, 1), np.nan)
    figure = Figure(figsize=(1.5 + 0.6 * len(columns), 1.5 + 0.55 * len(rows)))
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            axis.text(j, i, str(int(count)), ha="center", va="center", fontsize="x-small",
                      color="white" if shares[i, j] > 0.6 else "black")
    axis.set(xticks=range(len(columns)), yticks=range(len(rows)), yticklabels=rows, xlabel="answer",
             ylabel="true class", title=title)
    axis.set_xticklabels(columns, rotation=90)
    figure.colorbar(image, ax=axis, shrink=0.8, label="share of the row")
    return _save(figure, path)


def class_accuracy(rows: list[dict], models: Sequence[str], labels: Sequence[str], path: Path,
                   pooled: list[dict] | None = None) -> Path:
    """Accuracy per class (rows) and model (columns), and over all models (last column) if `pooled`."""
    index = {(r["class"], r["model"]): r["accuracy"] for r in rows}
    values = np.array([[index[(label, m)] for m in models] for label in labels], dtype=float)
    if pooled is not None:
        overall = {r["class"]: r["accuracy"] for r in pooled}
        values = np.column_stack([values, [overall[label] for label in labels]])
        models = [*models, "all models"]
    figure = Figure(figsize=(3 + 1.3 * len(models), 1.5 + 0.4 * len(labels)))
    axis = figure.subplots()
    image = axis.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if not math.isnan(value):
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="small",
                      color="black" if value > 0.5 else "white")
    axis.set(xticks=range(len(models)), xticklabels=models, yticks=range(len(labels)), yticklabels=labels,
             title="accuracy per class")
    figure.colorbar(image, ax=axis, shrink=0.8)
    return _save(figure, path)
