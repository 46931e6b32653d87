"""Every check of a run's settings that needs no data and no weights, done before any work.

A wrong setting used to surface only where a stage first used it: an unknown architecture after the
dataset was generated, a results file that is not a JSON array after hours of training. `preflight`
finds those in a second, each as one `UserError` line naming the key and the value. The rules stay
where they live (models, data, runs, the registries); this module only calls them early.

`stages` limits the checks to what those stages use, so `prunexplain explain` on a finished run is
not refused for, say, a training setting; None checks for every stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from prunexplain.config import Settings, UserError, read_json
from prunexplain.runs import ModelKey, Run

# The pipeline's stages (pipeline.STAGES, which imports every stage); those that read the dataset, and
# those that run a model on a device.
STAGES = ("data", "train", "prune", "explain", "evaluate", "study", "crowd", "analysis", "seeds", "verdict", "report")
_DATA = frozenset({"data", "train", "prune", "explain", "evaluate", "study", "seeds"})
_TORCH = frozenset({"train", "prune", "explain", "evaluate", "study", "seeds"})


def preflight(settings: Settings, stages: Collection[str] | None = None) -> None:
    """Refuse settings that cannot work, before anything is read or written; the first problem wins."""
    wanted = None if stages is None else frozenset(stages)
    if wanted is not None and not wanted <= set(STAGES):
        raise ValueError(f"preflight: unknown stages {sorted(wanted - set(STAGES))} (stages: {', '.join(STAGES)})")
    for check in CHECKS:
        if wanted is None or check.stages & wanted:
            check.function(settings)


@dataclass(frozen=True)
class Check:
    stages: frozenset[str]  # the stages that use what it checks
    function: Callable[[Settings], None]


def check_run_folder(settings: Settings) -> None:
    _creatable_folder(settings.run_dir, "run.root/run.name")


def check_device(settings: Settings) -> None:
    from prunexplain.models import select_device

    select_device(settings.runtime.device)


def check_architecture(settings: Settings) -> None:
    from prunexplain.models import skeleton

    skeleton(10, settings.model)  # unknown names and vision transformers fail here, in milliseconds


def check_weights(settings: Settings) -> None:
    from prunexplain import models

    models.check_weights(settings.model)


def check_data(settings: Settings) -> None:
    from prunexplain.data import check_root

    _imagenette_there(settings)
    check_root(settings.data, Run(settings.run_dir))
    if settings.runtime.cache_dir is not None:
        _creatable_folder(settings.runtime.cache_dir, "runtime.cache_dir")


def _imagenette_there(settings: Settings) -> None:
    """Imagenette is downloaded by its own command, never by a stage: a folder that is not there yet
    is named with that command (`prunexplain train training_config.json run8` on a fresh checkout)."""
    data = settings.data
    if data.dataset != "imagenette" or data.root is None or data.root.exists():
        return
    from prunexplain.data.imagenette import FOLDERS

    size = {folder: size for size, folder in FOLDERS.items()}.get(data.root.name)
    if size is None:  # a folder of the user's own name: any archive, extracted there
        raise UserError(f"data.root: no Imagenette in {data.root} (no such folder); download it with `prunexplain "
                        "data imagenette --size full --dest DIR` and set data.root to DIR/imagenette2")
    raise UserError(f"data.root: no Imagenette in {data.root} (no such folder); download it with "
                    f"`prunexplain data imagenette --size {size} --dest {data.root.parent}`")


def check_outputs(settings: Settings) -> None:
    """The study's extra outputs of training: a checkpoint copy and a JSON array of results."""
    runtime = settings.runtime
    if runtime.model_path is not None:
        _writable_file(runtime.model_path, "runtime.model_path")
    if runtime.results_path is not None:
        _writable_file(runtime.results_path, "runtime.results_path")
        if runtime.results_path.exists() and not isinstance(read_json(runtime.results_path), list):
            raise UserError(f"runtime.results_path: {runtime.results_path} is not a JSON array; training results "
                            "are appended to one (give a new file or a file holding [...])")


def check_prune_methods(settings: Settings) -> None:
    from prunexplain.pruning.methods import METHODS

    unknown = [name for name in settings.prune.methods if name not in METHODS]
    if unknown:
        raise UserError(f"prune.methods: unknown {', '.join(map(repr, unknown))} (known: {', '.join(METHODS)})")


def check_prune_schedules(settings: Settings) -> None:
    from prunexplain.pruning.schedule import check_schedules

    check_schedules(settings)


def check_explain_method(settings: Settings) -> None:
    from prunexplain.explain.stage import check_methods

    check_methods(settings.explain.methods)
    if settings.study.explainer not in settings.explain.methods:
        raise UserError(f"study.explainer: {settings.study.explainer!r} is not one of explain.methods "
                        f"({', '.join(settings.explain.methods)})")


def check_explain_models(settings: Settings) -> None:
    _made_by_run(settings, settings.explain.models, "explain.models")


def check_study_models(settings: Settings) -> None:
    _made_by_run(settings, settings.study.models, "study.models")


def check_frozen_parts(settings: Settings) -> None:
    from prunexplain.models import check_parts

    check_parts(_shapes_only(settings), settings.train.frozen_parts)


def check_target_layer(settings: Settings) -> None:
    from prunexplain.explain.cam import find_layer
    from prunexplain.models import default_target_layer

    model = _shapes_only(settings)
    find_layer(model, settings.explain.target_layer or default_target_layer(model, settings.data.image_size))


def _shapes_only(settings: Settings):
    """The run's model on the meta device (shapes, no memory, no weights): the full VGG-16 in milliseconds,
    to check names of its parts and layers."""
    from prunexplain.models import skeleton

    return skeleton(10, settings.model)


CHECKS: tuple[Check, ...] = (
    Check(frozenset(STAGES), check_run_folder),
    Check(_TORCH, check_device),
    Check(frozenset({"train"}), check_architecture),
    Check(frozenset({"train"}), check_weights),
    Check(_DATA, check_data),
    Check(frozenset({"train"}), check_outputs),
    Check(frozenset({"prune"}), check_prune_methods),
    Check(frozenset({"train", "prune"}), check_prune_schedules),  # weight rewinding needs an epoch of training
    Check(frozenset({"explain", "study"}), check_explain_method),
    Check(frozenset({"explain"}), check_explain_models),
    Check(frozenset({"study"}), check_study_models),
    Check(frozenset({"train"}), check_frozen_parts),
    Check(frozenset({"explain", "evaluate", "study"}), check_target_layer),
)


def _made_by_run(settings: Settings, names: list[str], key: str) -> None:
    """Each name parses as a model, and is one this run makes: dense, or a method and rate it prunes to."""
    from prunexplain.pruning.schedule import variants

    rates, families = settings.prune.rates, variants(settings.prune)
    for name in names:
        try:
            model = ModelKey.parse(name)
        except UserError as error:
            raise UserError(f"{key}: {error}") from None
        if not model.dense and (model.method not in families or model.rate not in rates):
            raise UserError(f"{key}: {name!r} is not a model of this run (methods and schedules: "
                            f"{', '.join(families)}; prune.rates: {', '.join(f'{r:g}' for r in rates)})")


def _creatable_folder(path: Path, key: str) -> None:
    """`path` is a folder, or one can be made there: it is no file and its nearest existing ancestor
    is a folder this process may write in."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}: {path} is a file, not a folder")
    _writable_ancestor(path, key)


def _writable_file(path: Path, key: str) -> None:
    """A file can be written at `path` (atomically: a temp file beside it, then a rename)."""
    if path.is_dir():
        raise UserError(f"{key}: {path} is a folder; give a file path")
    _writable_ancestor(path.parent, key)


def _writable_ancestor(path: Path, key: str) -> None:
    existing = next(p for p in (path, *path.parents) if p.exists())  # '.' or '/' at the latest
    if not existing.is_dir():
        raise UserError(f"{key}: cannot create {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{key}: cannot create {path}: no permission to write in {existing}")
