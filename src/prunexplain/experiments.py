"""The human-study experiments as data: one spec read by the study build, its MTurk layouts, the
study server, the simulated crowds, the export and the analysis. Torch-free.

Two kinds of task come from the reproduced study:
- `exp1`, *compare*: two explanations of the same image side by side (algorithm 1 left, algorithm 2
  right, the original between them); the answer is `alg1`, `alg2` or `none` (equally reasonable).
- `exp2`, *recognise*: one explanation (an occlusion map); the answer is one of the classes or `none`.
An experiment is a kind shown in a rendering (occlusion map or jet heatmap): the study ran `exp1`
with both (`exp1`, `exp1_heatmap`) and `exp2` with occlusion maps. Adding one is one entry below.

File names of stimuli follow the study's scheme (DESIGN.md): experiment 1
`{i}_{left}_{classlabel}_{right}.png`, experiment 2 `{i}_{classlabel}_{model}.png`, where a model is
`nonpruned` or `<rate>pruned`. A class label goes in as `file_label(label)`: itself where it is
file-name and URL safe (`0-fish`, the study's), else a safe form with a short hash; readers map it
back through the known classes (`label_of_file`).

What people see comes from here too: the question, each option's label and keyboard keys in the
order the pages lay them out (`Kind.choices`), and the words for each rendering (`SHOWN_AS`); the
prose around them lives in the kind's templates (`<template>.html` under `study/templates` for the
MTurk layouts and `study/server/templates` for the self-hosted study).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from prunexplain.errors import UserError
from prunexplain.runs import ModelKey

NONE = "none"


@dataclass(frozen=True)
class Option:
    """One answer: its value in the answer files, the words people see, and its keyboard keys."""

    value: str
    label: str
    keys: str = ""  # space-separated KeyboardEvent.key values
    hint: str = ""  # the key shown on the page
    picks: str = ""  # the shown model this answer prefers ('left', 'right'); '' for none
    explains: str = ""  # one line of the MTurk instructions: what choosing it means


@dataclass(frozen=True, eq=False)  # a kind is one object: compared and hashed by identity (registry keys)
class Kind:
    """What is asked and how answers are recorded, for one kind of task."""

    name: str  # the kind's key in manifests and summaries: exp1 | exp2
    question: str  # as the self-hosted study and the MTurk layouts ask it
    title: str  # the study's HIT title
    heading: str  # the analysis' title of its results
    answer_group: str  # MTurk answer columns are Answer.<group>.<option>
    fixed_options: tuple[Option, ...]  # in the answer files' order; classes come before these where asked
    asks_class: bool  # the options are the classes (recognise) rather than fixed (compare)
    shows: tuple[str, ...]  # which models one stimulus shows: ('left', 'right') or ('model',)
    scheme: str  # the study's stimulus file-name scheme
    pattern: re.Pattern  # parser of that scheme
    preprocessed: dict[str, str]  # the study's preprocessed-CSV columns -> our column names
    screen_order: tuple[str, ...]  # fixed options as the pages lay them out (after the classes where asked)
    # Its stimuli name the class (experiment 1's panels carry it as a title): a participant gets
    # these tasks after those that ask for the class, which would otherwise be given away.
    names_class: bool
    template: str  # stem of its template files: the MTurk instructions, the study server's instructions

    @property
    def prefix(self) -> str:
        return f"Answer.{self.answer_group}."

    @property
    def compares(self) -> bool:
        return len(self.shows) == 2

    def options(self, classes: list[str] = ()) -> list[str]:
        """Answer values in the order the study listed them; `none` last."""
        return [*classes, NONE] if self.asks_class else [option.value for option in self.fixed_options]

    def columns(self, classes: list[str] = ()) -> list[str]:
        """MTurk batch-results answer columns, one per option."""
        return [self.prefix + option for option in self.options(classes)]

    def stimulus_name(self, image: int, label: str, models: tuple[str, ...]) -> str:
        """The study's file name of a stimulus showing `models` (study names) on image `image`."""
        if len(models) != len(self.shows):
            raise ValueError(f"{self.name} shows {len(self.shows)} model(s), got {models}")
        fields = dict(zip(self.shows, models), i=image, classlabel=file_label(label))
        return self.scheme.format(**fields)

    def parse_name(self, name: str) -> dict[str, str] | None:
        """Fields of a stimulus file name (`image`, `label` and the shown models), or None."""
        match = self.pattern.match(name)
        return match.groupdict() if match else None

    def other(self) -> Kind:
        return next(kind for kind in KINDS.values() if kind is not self)

    def choices(self, classes: list[str] = ()) -> list[Option]:
        """The options as people see them, in screen order: the classes (keyed by their digit, which
        is the class index of labels like '0-fish'), then the fixed options in `screen_order`."""
        fixed = {option.value: option for option in self.fixed_options}
        shown = [fixed[value] for value in self.screen_order]
        if not self.asks_class:
            return shown
        digits = [str(index) if index < 10 else "" for index in range(len(classes))]
        return [*(Option(c, display_name(c), d, d or "-") for c, d in zip(classes, digits)), *shown]

    def label(self, value: str, classes: list[str] = ()) -> str:
        """The words people see for an answer value."""
        found = next((option.label for option in self.choices(classes) if option.value == value), None)
        if found is None:
            raise ValueError(f"{value!r} is no option of {self.name}")
        return found

    def picking(self, shown: str) -> str:
        """The answer value that prefers the model shown at `shown` ('left' -> 'alg1')."""
        return next(option.value for option in self.fixed_options if option.picks == shown)


COMPARE = Kind(
    name="exp1",
    question="Which algorithm is more reasonable?",
    title="Given two Pictures, decide which Algorithm is more Reasonable",
    heading="Experiment 1: which explanation is more reasonable?",
    answer_group="algorithms",
    fixed_options=(
        Option("alg1", "Algorithm 1 (left)", "1 ArrowLeft", "1", picks="left",
               explains="Algorithm 1, the picture on the left, is more reasonable."),
        Option("alg2", "Algorithm 2 (right)", "2 ArrowRight", "2", picks="right",
               explains="Algorithm 2, the picture on the right, is more reasonable."),
        Option(NONE, "Equally reasonable", "e ArrowDown", "E",
               explains="both are equally reasonable (or equally unreasonable)."),
    ),
    asks_class=False,
    shows=("left", "right"),
    scheme="{i}_{left}_{classlabel}_{right}.png",
    pattern=re.compile(r"^(?P<image>\d+)_(?P<left>[^_]+)_(?P<label>[^_]+)_(?P<right>[^_]+)\.(?:png|jpe?g)$", re.I),
    preprocessed={"img_id": "image", "img_class": "label", "alg1": "left", "alg2": "right",
                  "annotation_result": "answer"},
    screen_order=("alg1", NONE, "alg2"),  # 'equally' between the two algorithms, as the panels are laid out
    names_class=True,
    template="compare",
)

RECOGNISE = Kind(
    name="exp2",
    question="What is on the picture?",
    title="Given Parts of an Image, choose what you see on the Image",
    heading="Experiment 2: what is on the picture?",
    answer_group="classes",
    fixed_options=(Option(NONE, "None of these", "n", "N"),),
    asks_class=True,
    shows=("model",),
    scheme="{i}_{classlabel}_{model}.png",
    pattern=re.compile(r"^(?P<image>\d+)_(?P<label>[^_]+)_(?P<model>[^_]+)\.(?:png|jpe?g)$", re.I),
    preprocessed={"img_id": "image", "img_class": "label", "algorithm": "model", "img_answer": "answer"},
    screen_order=(NONE,),
    names_class=False,
    template="recognise",
)

KINDS: dict[str, Kind] = {kind.name: kind for kind in (COMPARE, RECOGNISE)}


@dataclass(frozen=True)
class Experiment:
    """One experiment of a study: a kind of task shown in one rendering."""

    key: str
    kind: Kind
    rendering: str  # occlusion | heatmap

    @property
    def options(self) -> tuple[Option, ...]:
        return self.kind.fixed_options


EXPERIMENTS: dict[str, Experiment] = {
    e.key: e
    for e in (
        Experiment("exp1", COMPARE, "occlusion"),
        Experiment("exp1_heatmap", COMPARE, "heatmap"),
        Experiment("exp2", RECOGNISE, "occlusion"),
    )
}
RENDERINGS = ("occlusion", "heatmap")

# How each rendering shows what a model relied on, in words for the people who judge it.
SHOWN_AS = {
    "occlusion": "only the parts it used most are visible, everything else is black",
    "heatmap": "red marks the parts it used most, blue the parts it hardly used",
}


def kind(name: str) -> Kind:
    """The kind called `name` (exp1 or exp2); anything else is a UserError listing the kinds."""
    if name not in KINDS:
        raise UserError(f"unknown experiment kind {name!r} (kinds: {', '.join(KINDS)})")
    return KINDS[name]


def experiment(key: str) -> Experiment:
    if key not in EXPERIMENTS:
        raise UserError(f"unknown experiment {key!r} (experiments: {', '.join(EXPERIMENTS)})")
    return EXPERIMENTS[key]


def first_of_each_kind() -> list[str]:
    """One experiment per kind, the first the spec lists: what the self-hosted study serves by default."""
    first: dict[str, str] = {}
    for key, spec in EXPERIMENTS.items():
        first.setdefault(spec.kind.name, key)
    return list(first.values())


def class_name(label: str) -> str:
    """'3-plus' -> 'plus': the index prefix of a label is for sorting, not for people."""
    head, _, tail = label.partition("-")
    return tail if head.isdigit() and tail else label


def display_name(label: str) -> str:
    """The words a participant reads for a class label: Imagenette's as the study showed them
    ('2-cassetteplayer' -> 'Cassette Player'), an indexed label without its index, capitalised
    ('3-plus' -> 'Plus'), any other (a dataset's own folder name) with its first letter capitalised
    and underscores as spaces ('golden_retriever' -> 'Golden retriever', 'iPod' -> 'IPod'). Panel
    titles, HIT layouts and the study server show this."""
    from prunexplain.data.imagenette import DISPLAY_NAMES  # here: data imports config, which imports this module

    if label in DISPLAY_NAMES:
        return DISPLAY_NAMES[label]
    name = class_name(label)
    if name != label:
        return name.capitalize()
    return label[:1].upper() + label[1:].replace("_", " ")


SAFE_LABEL = re.compile(r"[A-Za-z0-9.+-]+")


def file_label(label: str) -> str:
    """A class label as it appears in stimulus file names and URLs: the label itself where it is
    safe there (`0-fish`, `3-plus`: the study's names), else its ASCII letters and digits with '-'
    for the rest, plus 6 hex digits of its SHA-256 so two labels never share a name
    ('Golden Retriever' -> 'Golden-Retriever-2eb35b'); the analysis maps it back through the labels."""
    if SAFE_LABEL.fullmatch(label):
        return label
    folded = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9.+]+", "-", folded).strip("-") or "class"
    return f"{slug}-{hashlib.sha256(label.encode()).hexdigest()[:6]}"


def label_of_file(name: str, classes: Iterable[str]) -> str:
    """The class label a stimulus file name carries (`file_label` undone through the known classes);
    the name itself where no class has it (the study's labels are their own file labels)."""
    return next((label for label in classes if file_label(label) == name), name)


def answer_files_of(key: str, names: list[str]) -> list[str]:
    """The answer files (`<key>*.csv`) that belong to experiment `key` and not to a longer key that
    starts the same (exp1_heatmap_batch1.csv belongs to exp1_heatmap, not exp1)."""
    longer = [other for other in EXPERIMENTS if other != key and other.startswith(key)]
    return [n for n in names if n.startswith(key) and not any(n.startswith(o) for o in longer)]


# Model names the study's files use: nonpruned, <rate>pruned.
DENSE_NAME = "nonpruned"
_STUDY_MODEL = re.compile(r"^(?:nonpruned|(?P<rate>\d+(?:\.\d+)?)pruned)$")
STUDY_MODEL_HINT = "'nonpruned' or '<rate>pruned', e.g. 2pruned"  # for messages about a name that is none


def study_model_name(key: ModelKey) -> str:
    """A run's model as the study's file names call it: dense -> nonpruned, 2x -> 2pruned."""
    return DENSE_NAME if key.dense else f"{key.rate:g}pruned"


def study_model_rate(name: str) -> float | None:
    """Compression rate of a study model name (1 for nonpruned); None if it is not one."""
    match = _STUDY_MODEL.match(name)
    if not match:
        return None
    return float(match["rate"]) if match["rate"] else 1.0
