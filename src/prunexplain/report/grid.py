"""The grid of example explanations: one row per image, the original then every model's heatmap.

Reads `explain/images.csv` and each model's `maps.npy` and `predictions.npy`; the overlays are
drawn here (jet, as the study's heatmaps) at the maps' size, so nothing needs `explain --render`.
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
from prunexplain.report.html import Raw, Section, join, png_uri, tag
from prunexplain.report.sections import read_csv
from prunexplain.runs import Run

log = logging.getLogger(__name__)

_TITLE = "Example explanations"


@dataclass(frozen=True)
class Column:
    """One explained model: 'dense' or '<method>/cr_<rate>'."""

    key: str
    method: str
    rate: float

    @property
    def heading(self) -> str:
        return "dense" if self.method == "dense" else f"x{self.rate:g}"


def explained_models(run: Run) -> list[Column]:
    """Every model with Grad-CAM maps: dense first, then each method in increasing rate."""
    root = run.path("explain")
    columns = [Column("dense", "dense", 1.0)] if (root / "dense" / "maps.npy").exists() else []
    for method in sorted(p for p in root.glob("*") if p.is_dir() and p.name != "dense"):
        found = [Column(f"{method.name}/{p.parent.name}", method.name, float(p.parent.name.removeprefix("cr_")))
                 for p in method.glob("cr_*/maps.npy")]
        columns += sorted(found, key=lambda column: column.rate)
    return columns


def grid_section(run: Run, settings: ReportSettings) -> Section:
    columns = explained_models(run)
    if not columns or not run.path("explain", "images.csv").exists():
        return Section("grid", _TITLE, missing="no explanations yet: run `prunexplain explain`")
    rows = read_csv(run.path("explain", "images.csv"))
    names = _class_names(run, rows)
    shown = rows[: settings.images]
    maps = {c.key: np.load(run.path("explain", c.key, "maps.npy"), mmap_mode="r")[: len(shown)] for c in columns}
    predictions = {c.key: np.load(run.path("explain", c.key, "predictions.npy")) for c in columns}
    body = _header(columns)
    for i, row in enumerate(shown):
        image = _image(Path(row["path"]), maps[columns[0].key].shape[-1])
        grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
        cells = [_picture(image, f"#{row['index']} {row['class']}", settings, truth=row["class"])]
        for column in columns:
            overlay = heatmap(grey, np.asarray(maps[column.key][i]), settings.heatmap_alpha)
            predicted = int(predictions[column.key][i])
            wrong = names.get(predicted, f"class {predicted}") if predicted != int(row["label"]) else None
            cells.append(_picture(overlay, f"{column.key}: predicts {wrong}" if wrong else column.key, settings, wrong))
        body += tag("tr", join(cells))
    return Section("grid", _TITLE, tag("div", tag("table", body), class_="grid") + tag("p", _caption(shown, rows), class_="note"))


def _caption(shown: list, rows: list) -> str:
    return (f"The first {len(shown)} of the {len(rows)} explained test images (rows) and the Grad-CAM map of each "
            "model (columns) as a jet overlay on the image in grey, so every colour comes from the map: red = most "
            "important for the predicted class, blue = least. "
            "A red frame and the class under a map mark a wrong prediction (the map then explains that class). "
            "Look for the rate from which the maps leave the object or stop resembling the dense model's.")


def _header(columns: list[Column]) -> Raw:
    """Two header rows: the pruning methods spanning their rates, then the rates."""
    groups: dict[str, int] = {}
    for column in columns:
        groups[column.method] = groups.get(column.method, 0) + 1
    top = join(tag("th", "" if method == "dense" else method, colspan=n, class_="group") for method, n in groups.items())
    return (tag("tr", tag("th", "") + top)
            + tag("tr", tag("th", "image (true class)") + join(tag("th", c.heading) for c in columns)))


def _class_names(run: Run, rows: list[dict]) -> dict[int, str]:
    """Class index -> name for predictions: the trained checkpoint's classes (its tensors stay on disk,
    memory-mapped), else the classes of the explained images."""
    names = {int(row["label"]): row["class"] for row in rows}
    checkpoint = run.path("train", "model.pt")
    if checkpoint.exists():
        meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("meta", {})
        names = {**names, **dict(enumerate(meta.get("classes", [])))}
    return names


def _image(path: Path, size: int) -> np.ndarray:
    """The explained image at the maps' size; mid-grey when the file is gone (dataset moved)."""
    try:
        return decode(path, size)
    except UserError as error:
        log.warning("report: %s; shown grey", error)
        return np.full((size, size, 3), 128, np.uint8)


def _picture(picture: np.ndarray, title: str, settings: ReportSettings, wrong: str | None = None,
             truth: str | None = None) -> Raw:
    """A grid cell: the picture at a whole multiple of its pixels (crisp) near the cell size, and under it
    the true class (first column) or the wrongly predicted one."""
    side = picture.shape[1]
    shown = side * max(1, settings.cell_size // side) if side <= settings.cell_size else settings.cell_size
    img = tag("img", src=png_uri(picture, settings.cell_size), alt=title, title=title, width=shown,
              class_="wrong" if wrong else None)
    label = tag("div", wrong, class_="pred") if wrong else tag("div", truth, class_="truth") if truth else Raw("")
    return tag("td", img + label)
