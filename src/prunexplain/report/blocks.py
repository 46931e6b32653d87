"""What the report's sections are made of, as plain data for the templates: tables, figures, cards.

Numbers are formatted here for reading (a dash where a value is missing), and pictures become PNG
data URIs, downscaled and compressed, so the report is one file that opens offline and fast. No
markup is made here: the templates lay these out and escape every string in them.
"""

from __future__ import annotations

import base64
import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image


@dataclass(frozen=True)
class Cell:
    """A table cell: its text, a tooltip, and whether it marks a failure."""

    text: str
    title: str | None = None
    bad: bool = False


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Cell]]

    @classmethod
    def of(cls, headers: Sequence[object], rows: Iterable[Sequence[object]]) -> Table:
        """A table from plain values; values that are not yet cells become cells of their text."""
        return cls([str(h) for h in headers],
                   [[c if isinstance(c, Cell) else Cell(str(c)) for c in row] for row in rows])


@dataclass(frozen=True)
class Picture:
    """A figure: an inline PNG with the caption that says what to look at."""

    uri: str
    caption: str
    alt: str


@dataclass(frozen=True)
class Card:
    """A headline number: the value shown big, what it is below."""

    label: str
    value: str


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- numbers ---------------------------------------------------------------------------------------


def number(value: object, digits: int = 3) -> str:
    """A number for a table: fixed digits (whole numbers with thousands separators), '-' where missing."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(value) else f"{value:,.0f}" if digits == 0 else f"{value:.{digits}f}"


def pvalue(value: object) -> str:
    """Three significant digits, so small p-values stay readable (1.2e-05)."""
    return "-" if number(value) == "-" else f"{float(value):.3g}"


def percent(value: object) -> str:
    """A share 0..1 as '12.3 %', '-' where missing."""
    return "-" if number(value) == "-" else f"{100 * float(value):.1f} %"


def interval(bounds: object) -> str:
    """'[low, high]' shares as '12.0-30.5 %', '-' where undefined."""
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or "-" in (number(bounds[0]), number(bounds[1])):
        return "-"
    return f"{100 * float(bounds[0]):.1f}-{100 * float(bounds[1]):.1f} %"


# --- pictures --------------------------------------------------------------------------------------


def png_uri(image: Image.Image | np.ndarray, max_width: int, palette: bool = False) -> str:
    """The image as a PNG data URI, downscaled to `max_width`; `palette` (256 colours) shrinks plots."""
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    image = image.convert("RGB")
    if image.width > max_width:
        height = max(1, round(image.height * max_width / image.width))
        image = image.resize((max_width, height), Image.LANCZOS)
    if palette:
        image = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def picture_file(path: Path, caption: str, max_width: int) -> Picture:
    """A plot written by a stage, embedded with its caption."""
    with Image.open(path) as image:
        return Picture(png_uri(image, max_width, palette=True), caption, Path(path).name)


def picture_plot(figure: Figure, caption: str, alt: str, max_width: int) -> Picture:
    """A plot drawn for the report itself (never written to the run directory)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    with Image.open(buffer) as image:
        return Picture(png_uri(image, max_width, palette=True), caption, alt)
