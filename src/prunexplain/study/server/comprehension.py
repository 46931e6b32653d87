"""The comprehension check: questions about the task, asked after the instructions, before the first
picture. Torch-free.

The questions come from the experiment spec (`prunexplain.experiments`) for the experiments a
participant will do, so they ask about what the participant will see and answer with the options
the task pages show:
- a kind that compares two explanations: which option to choose when the left one is more
  reasonable (the option that `picks` the left side);
- a kind that asks for the class: what to answer when none of the listed objects is on the picture
  (the `none` option);
- per rendering (`SHOWN_AS`, `MARKED`): what the marked parts of a picture mean (the parts the
  program used most); a rendering the spec does not know gets none.
So a study of exp1 and exp2 (both occlusion maps) asks three questions. They differ from the
attention checks, which come between the tasks and tell the participant what to choose.
A question's `id` is its form field's name and stays the same for the same kind and rendering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prunexplain.experiments import NONE, SHOWN_AS
from prunexplain.study.server.catalog import Experiment

# How the instructions name the parts each rendering marks (its SHOWN_AS says how they are drawn).
MARKED = {"occlusion": "visible (not black) parts", "heatmap": "red areas"}
_USED, _IGNORED, _RANDOM = "used", "ignored", "random"
_MEANINGS = (
    (_IGNORED, "The parts the program ignored"),
    (_USED, "The parts the program used most to recognise the object"),
    (_RANDOM, "Parts picked at random, whatever the program did"),
)


@dataclass(frozen=True)
class Choice:
    value: str
    label: str


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    choices: tuple[Choice, ...]
    answer: str  # the right choice's value

    def as_json(self) -> dict:
        """What a program is shown (the right answer is not in it)."""
        return {"id": self.id, "text": self.text, "options": [{"value": c.value, "label": c.label}
                                                               for c in self.choices]}


def questions(experiments: Iterable[Experiment]) -> list[Question]:
    """The questions for a participant doing `experiments`: one per kind of task, in the order the
    tasks come (kinds that ask for the class first, as the instructions), then one per rendering."""
    experiments = list(experiments)
    asked: dict[str, Question] = {}
    for experiment in sorted(experiments, key=lambda e: e.spec.names_class):
        kind, choices = experiment.spec, tuple(Choice(o.value, o.label) for o in experiment.choices)
        if kind.compares:
            asked.setdefault(f"{kind.name}-left", Question(
                f"{kind.name}-left", "If the picture on the left shows the more reasonable choice of parts, which "
                "answer do you choose?", choices, kind.picking("left")))
        if kind.asks_class:
            asked.setdefault(f"{kind.name}-none", Question(
                f"{kind.name}-none", "What do you answer when none of the listed objects is on the picture?",
                choices, NONE))
    for rendering in dict.fromkeys(e.variant for e in experiments if e.variant in MARKED):
        asked.setdefault(f"shown-{rendering}", Question(
            f"shown-{rendering}", f"What do the {MARKED[rendering]} of a picture show?",
            tuple(Choice(value, label) for value, label in _MEANINGS), _USED))
    return list(asked.values())


def wrong(asked: list[Question], answers: Mapping[str, str]) -> list[str]:
    """The ids of the questions `answers` (question id -> chosen value) got wrong or left out."""
    return [q.id for q in asked if answers.get(q.id) != q.answer]


def shown_as(experiments: Iterable[Experiment]) -> list[str]:
    """How each rendering among `experiments` draws what a program used, for the instructions."""
    return [SHOWN_AS[r] for r in dict.fromkeys(e.variant for e in experiments) if r in SHOWN_AS]
