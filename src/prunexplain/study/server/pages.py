"""HTML of the study: Jinja2 templates (`templates/*.html`, shipped as package data) with autoescaping
on, so every id, label and text is escaped, and StrictUndefined, so a name a page misses fails
loudly instead of showing nothing.

What is asked and the options people choose from come from the experiment spec (through
`catalog.Experiment`); each kind of task has its instructions in `templates/<kind.template>.html`.
Script and style are served as files (/static/study.js, /static/study.css) because the pages forbid
inline code (security.HEADERS); they lie beside the templates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from jinja2 import Environment, PackageLoader, StrictUndefined

from prunexplain.experiments import NONE, Option
from prunexplain.study.server.catalog import Experiment

_FOLDER = resources.files("prunexplain.study.server") / "templates"
SCRIPT = (_FOLDER / "study.js").read_text()
STYLE = (_FOLDER / "study.css").read_text()

# KeyboardEvent.key values as a keyboard labels them.
_KEY_NAMES = {"ArrowLeft": "\u2190", "ArrowRight": "\u2192", "ArrowUp": "\u2191", "ArrowDown": "\u2193"}


def key_name(key: str) -> str:
    """'ArrowLeft' -> the arrow, 'e' -> 'E': a key as printed on the keyboard."""
    return _KEY_NAMES.get(key, key.upper())


@dataclass(frozen=True)
class Section:
    """The instructions of one kind of task: its template and its options in screen order."""

    template: str
    options: tuple[Option, ...]
    none: Option


def instruction_sections(experiments: Iterable[Experiment]) -> list[Section]:
    """One section per kind of task among `experiments`, in the order the tasks come (kinds that ask
    for the class first, see assign.plan_tasks)."""
    first: dict = {}
    for experiment in experiments:
        first.setdefault(experiment.spec, experiment)
    ordered = sorted(first.values(), key=lambda e: e.spec.names_class)
    return [Section(e.spec.template, e.choices, next(o for o in e.choices if o.value == NONE)) for e in ordered]


def environment() -> Environment:
    """Autoescaping on for every template, whatever its name; undefined names fail loudly."""
    env = Environment(loader=PackageLoader("prunexplain.study.server", "templates"), autoescape=True,
                      undefined=StrictUndefined)
    env.filters["key_name"] = key_name
    return env
