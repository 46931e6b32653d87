"""The study folder written by `study build`, read once: experiments, their options and stimuli.

What each experiment asks and which answers it takes come from the experiment spec
(`prunexplain.experiments`), by the kind manifest.json records for it. Every stimulus file named in
manifest.json must resolve to a file inside the study folder, so a manifest (or a symbolic link)
can never make the server hand out anything else, e.g. study.db.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from prunexplain.config import UserError
from prunexplain.experiments import EXPERIMENTS, KINDS, RENDERINGS, Kind, Option
from prunexplain.runs import StudyFolder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _ExperimentSpec(_Loose):
    kind: str
    folder: str
    options: list[str] | None = None
    question: str | None = None
    variant: str | None = None


class _StimulusSpec(_Loose):
    experiment: str
    file: str
    image: int
    label: str


class _Manifest(_Loose):
    classes: list[str]
    experiments: dict[str, _ExperimentSpec]
    stimuli: list[_StimulusSpec]


@dataclass(frozen=True)
class Experiment:
    """One experiment key of the manifest: what is asked and which answers are allowed."""

    key: str
    kind: str  # the kind's name, as manifest.json records it
    options: tuple[str, ...]  # answer values, in the answer files' order
    question: str
    variant: str
    spec: Kind  # the kind of task in the experiment spec
    choices: tuple[Option, ...]  # the options as the pages show them: screen order, labels, keys

    def label(self, value: str) -> str:
        """The words people see for an answer value."""
        return next(option.label for option in self.choices if option.value == value)


@dataclass(frozen=True)
class Stimulus:
    """One picture to answer; `id` is its path relative to the study folder (unique across experiments)."""

    id: str
    experiment: str
    image: int
    label: str
    path: Path

    @property
    def name(self) -> str:
        """The file name the MTurk input CSVs carry as image_url (the analysis parses it)."""
        return self.path.name


@dataclass
class Study:
    folder: Path
    classes: list[str]
    experiments: dict[str, Experiment]
    stimuli: dict[str, Stimulus]

    def of(self, experiment: str) -> list[Stimulus]:
        return [s for s in self.stimuli.values() if s.experiment == experiment]


def load_study(folder: Path, experiments: list[str] | None = None) -> Study:
    """Read `folder/manifest.json`, keeping the named experiments (None: all); every problem is one
    UserError line."""
    folder = Path(folder).resolve()
    manifest_path = StudyFolder(folder).manifest
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: no such file; run `prunexplain study build` first")
    try:
        manifest = _Manifest.model_validate(json.loads(manifest_path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{manifest_path}: not a readable JSON file ({error})") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"{manifest_path}: {where}: {first['msg']}") from None
    experiments = list(manifest.experiments) if experiments is None else experiments
    unknown = [key for key in experiments if key not in manifest.experiments]
    if unknown:
        known = ", ".join(manifest.experiments) or "none"
        raise UserError(f"{manifest_path}: no experiment {', '.join(map(repr, unknown))} (it has: {known})")
    chosen = {key: _experiment(manifest_path, key, manifest.experiments[key], manifest.classes) for key in experiments}
    stimuli = {}
    for spec in manifest.stimuli:
        if spec.experiment in chosen:
            path = inside(folder, spec.file)
            if path is None:
                raise UserError(f"{manifest_path}: stimulus {spec.file!r} is not an image file inside {folder}")
            stimuli[spec.file] = Stimulus(spec.file, spec.experiment, spec.image, spec.label, path)
    empty = [key for key in chosen if not any(s.experiment == key for s in stimuli.values())]
    if empty:
        raise UserError(f"{manifest_path}: experiment(s) {', '.join(empty)} have no stimuli")
    return Study(folder, list(manifest.classes), chosen, stimuli)


def _experiment(source: Path, key: str, spec: _ExperimentSpec, classes: list[str]) -> Experiment:
    """The experiment with its options checked: the export's answer columns are made from them."""
    if spec.kind not in KINDS:
        raise UserError(f"{source}: experiments.{key}.kind: expected {' or '.join(KINDS)}, got {spec.kind!r}")
    kind = KINDS[spec.kind]
    expected = kind.options(classes)
    if spec.options is not None and spec.options != expected:
        raise UserError(f"{source}: experiments.{key}.options: expected {expected}, got {spec.options}")
    variant = spec.variant or (EXPERIMENTS[key].rendering if key in EXPERIMENTS else RENDERINGS[0])
    return Experiment(key, kind.name, tuple(expected), spec.question or kind.question, variant, kind,
                      tuple(kind.choices(classes)))


def inside(folder: Path, relative: str) -> Path | None:
    """The image file `relative` names under `folder`, or None when it resolves anywhere else.

    Resolving first follows `..` and symbolic links, so neither can step out of the folder.
    """
    root = Path(folder).resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(root) or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        return None
    return path


def stimulus_key(secret: bytes, stimulus_id: str) -> str:
    """The opaque name a stimulus is served under.

    File names say which model is drawn on which side (`0_nonpruned_0-disk_2pruned.png`); serving
    them under their names would unblind experiment 1 to anyone who reads the image URL. A keyed
    hash cannot be recomputed from a guessed file name without the study's secret.
    """
    return hmac.new(secret, stimulus_id.encode(), hashlib.sha256).hexdigest()[:24]
