"""The report page from its Jinja2 templates (`report/templates/`, shipped as package data).

Autoescaping is on for every template, so text read from a run's files (class labels, settings,
model names) can never become markup; an undefined name is an error rather than an empty string,
so a template and the data it is given cannot drift apart unnoticed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape


@dataclass(frozen=True)
class Section:
    """One numbered part of the report: the data its template (`<anchor>.html`) lays out, or
    the one line that says which command makes it."""

    anchor: str
    title: str
    body: Any = None
    missing: str | None = None

    @property
    def template(self) -> str:
        return f"{self.anchor}.html"


def prose(text: str) -> Markup:
    """Escaped text in which `backquoted` commands become <code>."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


@functools.cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("prunexplain.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["prose"] = prose
    return env


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole document: stylesheet, title, table of contents and the numbered sections."""
    return environment().get_template("report.html").render(title=title, subtitle=subtitle, sections=sections)


def render_section(section: Section, number: int = 1) -> str:
    """One section alone, as it appears in the page (for tests and for reading one part)."""
    return environment().get_template("section.html").render(section=section, number=number)
