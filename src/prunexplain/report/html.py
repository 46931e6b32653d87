"""HTML building blocks of the report: escaping by default, tables, inline PNG figures, the page.

Every string is escaped unless it is wrapped in `Raw`, so text read from a run's files (class
labels, settings, model names) can never become markup. Pictures are embedded as PNG data URIs,
downscaled and compressed here, so the report is one file that opens offline and fast.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


class Raw(str):
    """HTML that is already safe (built by these helpers); everything else gets escaped.

    Adding a plain string to Raw escapes that string, so `Raw + text` stays safe HTML.
    """

    def __add__(self, other: object) -> Raw:
        return Raw(str.__add__(self, esc(other)))

    def __radd__(self, other: object) -> Raw:
        return Raw(str.__add__(esc(other), self))


def esc(value: object) -> Raw:
    return value if isinstance(value, Raw) else Raw(html.escape(str(value)))


def join(parts: Iterable[object]) -> Raw:
    return Raw("".join(esc(part) for part in parts))


def tag(name: str, content: object = "", **attributes: object) -> Raw:
    """`<name a="v">content</name>`; `class_` sets class; attributes whose value is None are left out."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{html.escape(str(value))}"'
        for key, value in attributes.items()
        if value is not None
    )
    return Raw(f"<{name}{attrs}>" if name in _VOID else f"<{name}{attrs}>{esc(content)}</{name}>")


_VOID = {"img", "br", "meta"}  # elements without content or end tag


def table(headers: Sequence[object], rows: Iterable[Sequence[object]], class_: str | None = None) -> Raw:
    head = tag("thead", tag("tr", join(tag("th", h) for h in headers)))
    body = tag("tbody", join(tag("tr", join(c if _is_cell(c) else tag("td", c) for c in row)) for row in rows))
    return tag("table", head + body, class_=class_)


def _is_cell(value: object) -> bool:
    """A cell given as a ready `<td>` (to carry a class or title) is used as it is."""
    return isinstance(value, Raw) and value.startswith("<td")


def prose(text: str) -> Raw:
    """Escaped text in which `backquoted` commands become <code>."""
    return Raw(re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text)))


def details(summary: object, content: object) -> Raw:
    """A collapsed block the reader opens on demand (long files such as config.toml)."""
    return tag("details", tag("summary", summary) + esc(content))


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


def png_uri(image: Image.Image | np.ndarray, max_width: int, palette: bool = False) -> Raw:
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
    return Raw("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


def figure(path: Path, caption: object, max_width: int) -> Raw:
    """A plot written by a stage, embedded with a caption that says what to look at."""
    with Image.open(path) as image:
        uri = png_uri(image, max_width, palette=True)
    return tag("figure", tag("img", src=uri, alt=Path(path).name) + tag("figcaption", caption))


# --- the page --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One numbered part of the report: its body, or the one line that says how to make it."""

    anchor: str
    title: str
    body: Raw | None = None
    missing: str | None = None

    def render(self, number_: int) -> Raw:
        heading = tag("h2", f"{number_}. {self.title}", id=self.anchor)
        content = self.body if self.body is not None else tag("p", prose(self.missing or ""), class_="missing")
        return tag("section", heading + content)


def page(title: str, subtitle: object, sections: Sequence[Section]) -> str:
    """The whole document: stylesheet, title, table of contents and the numbered sections."""
    toc = tag("ol", join(
        tag("li", tag("a", s.title, href=f"#{s.anchor}") + ("" if s.body is not None else Raw(" <em>(missing)</em>")))
        for s in sections
    ))
    body = tag("h1", title) + tag("p", subtitle, class_="sub") + tag("nav", tag("h2", "Contents") + toc)
    body += join(section.render(i) for i, section in enumerate(sections, 1))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_POLICY}\">"
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head>\n<body>{body}</body></html>\n"
    )


# Only inline styles and data: images may load: the file never reaches the network.
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1180px;
margin:0 auto;padding:1.5em 2em 4em;background:#fdfdfc}
h1{margin-bottom:.1em}h2{border-bottom:2px solid #e4e4e0;padding-bottom:.2em;margin-top:2.2em}
h3{margin:1.5em 0 .4em}.sub{color:#666;margin-top:0}
nav{background:#f4f4f1;border-radius:6px;padding:.2em 1.4em .6em;display:inline-block}
nav h2{border:0;margin:.6em 0 .2em;font-size:1.05em}nav ol{margin:0;padding-left:1.4em}
a{color:#1f5fa8}em{color:#888}
.missing{color:#8a6d00;background:#fff8e0;border-left:4px solid #e0b400;padding:.4em .8em}
.note{color:#555}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13.5px}
th,td{padding:.25em .7em;border-bottom:1px solid #e6e6e2;text-align:right;vertical-align:top}
th{background:#f4f4f1;font-weight:600}td:first-child,th:first-child{text-align:left}
td.bad{background:#fde2e1;color:#a01d16;font-weight:600}
figure{margin:1em 0 1.6em;width:fit-content;max-width:100%}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:13.5px;margin-top:.3em;contain:inline-size}
pre{background:#f6f6f3;padding:.8em 1em;overflow-x:auto;font-size:12.5px;line-height:1.35}
details summary{cursor:pointer;color:#1f5fa8}
.banner{padding:.6em 1em;border-radius:5px;font-weight:600;margin:.6em 0 1em}
.banner.simulated{background:#fde2e1;color:#8c1b13;border:1px solid #f2b8b5}
.banner.real{background:#e3f4e6;color:#1d5e2b;border:1px solid #b6dfbf}
.banner.unknown{background:#f0f0ec;color:#555;border:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:.6em 0 1em}
.card{background:#f4f4f1;border-radius:6px;padding:.4em .9em;min-width:7em}
.card b{display:block;font-size:1.25em}.card span{color:#666;font-size:12.5px}
.grid{overflow-x:auto}.grid table{font-size:12px}.grid td,.grid th{text-align:center;padding:3px;border:0}
.grid img{image-rendering:pixelated;display:block;margin:auto;border:3px solid transparent}
.grid img.wrong{border-color:#d62d20}.pred{color:#d62d20;font-weight:600}.grid .truth{font-weight:600}
.grid th.group{border-bottom:2px solid #ccc}
.figs{display:flex;flex-wrap:wrap;gap:0 2em;align-items:flex-start}.figs img{max-height:460px;width:auto}
.stimuli img{max-height:280px;width:auto}
"""
