"""The grid of example explanations: one row per image, the original then every model's heatmap.

Reads the explained images' table and each model's maps and predictions; the overlays are drawn
here (jet, as the study's heatmaps) at the maps' size, so nothing needs `explain --render`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunexplain.config import ReportSettings, UserError
from prunexplain.data.loaders import decode
from prunexplain.explain.render import heatmap
from prunexplain.report.blocks import png_uri, read_csv
from prunexplain.report.page import Section
from prunexplain.runs import Run

log = logging.getLogger(__name__)

_TITLE = "Example explanations"


@dataclass(frozen=True)
class Cell:
    """One picture of the grid, shown `width` pixels wide; under it the true class (first column) or the
    class a model wrongly predicts (its map then explains that class)."""

    uri: str
    title: str
    width: int
    truth: str | None = None
    wrong: str | None = None


@dataclass(frozen=True)
class Grid:
    groups: list[tuple[str, int]]  # header row 1: each pruning method and how many rates it spans
    headings: list[str]  # header row 2: each model's column
    rows: list[list[Cell]]
    total: int  # explained images; the first len(rows) are shown
    explainer: str = "gradcam"  # whose maps are shown


def grid_section(run: Run, settings: ReportSettings) -> Section:
    explainer = next(iter(run.explainers()), "gradcam")  # Grad-CAM's maps where the run has them
    keys = run.explained_models(explainer)
    if not keys or not run.explained_images.exists():
        return Section("grid", _TITLE, missing="no explanations yet: run `prunexplain explain`")
    rows = read_csv(run.explained_images)
    names = _class_names(run, rows)
    shown = rows[: settings.images]
    maps = {key: np.load(run.maps(key, explainer), mmap_mode="r")[: len(shown)] for key in keys}
    predictions = {key: np.load(run.predictions(key)) for key in keys}
    cells = []
    for i, row in enumerate(shown):
        image = _image(Path(row["path"]), maps[keys[0]].shape[-1])
        grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
        line = [_cell(image, f"#{row['index']} {row['class']}", settings, truth=row["class"])]
        for key in keys:
            overlay = heatmap(grey, np.asarray(maps[key][i]), settings.heatmap_alpha)
            predicted = int(predictions[key][i])
            wrong = names.get(predicted, f"class {predicted}") if predicted != int(row["label"]) else None
            line.append(_cell(overlay, f"{key}: predicts {wrong}" if wrong else str(key), settings, wrong=wrong))
        cells.append(line)
    groups: dict[str, int] = {}
    for key in keys:
        groups[key.method or ""] = groups.get(key.method or "", 0) + 1
    headings = ["dense" if key.dense else f"x{key.rate:g}" for key in keys]
    return Section("grid", _TITLE, Grid(list(groups.items()), headings, cells, len(rows), explainer))


def _class_names(run: Run, rows: list[dict]) -> dict[int, str]:
    """Class index -> name for predictions: the trained checkpoint's classes (its tensors stay on disk,
    memory-mapped), else the classes of the explained images."""
    names = {int(row["label"]): row["class"] for row in rows}
    if run.dense_checkpoint.exists():
        meta = torch.load(run.dense_checkpoint, map_location="cpu", weights_only=True, mmap=True).get("meta", {})
        names = {**names, **dict(enumerate(meta.get("classes", [])))}
    return names


def _image(path: Path, size: int) -> np.ndarray:
    """The explained image at the maps' size; mid-grey when the file is gone (dataset moved)."""
    try:
        return decode(path, size)
    except UserError as error:
        log.warning("report: %s; shown grey", error)
        return np.full((size, size, 3), 128, np.uint8)


def _cell(picture: np.ndarray, title: str, settings: ReportSettings, truth: str | None = None,
          wrong: str | None = None) -> Cell:
    """The picture at a whole multiple of its pixels (crisp) near the cell size."""
    side = picture.shape[1]
    shown = side * max(1, settings.cell_size // side) if side <= settings.cell_size else settings.cell_size
    return Cell(png_uri(picture, settings.cell_size), title, shown, truth, wrong)
