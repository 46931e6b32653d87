"""`study build`: from a run's models to everything a crowd study needs, traceable to its sources.

Writes into `study/`: `selection.csv`, one folder of PNGs per experiment (`exp1`, `exp1_heatmap`,
`exp2`), `<experiment>_input.csv` for MTurk, `layouts/<experiment>.html`, and `manifest.json`:
every stimulus with its SHA-256, the SHA-256 of each model's checkpoint, the seed, the complete
settings and the software versions, so `rebuild_study` can make the same files again and prove it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from prunexplain.config import Settings, UserError, read_json
from prunexplain.data import class_names, dataset_root
from prunexplain.data.loaders import image_dataset, load_splits
from prunexplain.explain.stage import maps_and_predictions, run_models, stacked
from prunexplain.models import file_digest, load_checkpoint, select_device
from prunexplain.runs import Run, write_json
from prunexplain.study.mturk import EXP1_QUESTION, EXP2_QUESTION, write_input, write_layout
from prunexplain.study.select import select, study_name
from prunexplain.study.stimuli import (
    EXPERIMENTS, Stimulus, draw_maps, draw_sides, exp1_stimuli, exp2_stimuli, study_pairs,
)

log = logging.getLogger(__name__)

_SOFTWARE = ("prunexplain", "torch", "numpy", "matplotlib", "pillow", "grad-cam")


@dataclass
class StudyResult:
    folder: Path
    images: int
    stimuli: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        counts = ", ".join(f"{key} {count}" for key, count in self.stimuli.items())
        return f"{self.images} images; stimuli: {counts}; manifest {self.folder / 'manifest.json'}"


def study_models(settings: Settings, run: Run) -> dict[str, tuple[str, Path]]:
    """Study name (nonpruned, 2pruned, ...) -> (the run's model key, its checkpoint)."""
    available = run_models(run)
    models: dict[str, tuple[str, Path]] = {}
    for key in settings.study.models:
        if key not in available:
            raise UserError(
                f"study.models: {key!r} is not in this run (it has: {', '.join(available) or 'no models'}); "
                "train and prune first, or name other models"
            )
        name = study_name(key)
        if name in models:
            raise UserError(f"study.models: {models[name][0]!r} and {key!r} would both be shown as {name!r}")
        models[name] = (key, available[key])
    return models


def _pairs(settings: Settings, names: list[str]) -> list[tuple[str, str]]:
    pairs = study_pairs(names, settings.study.pairs)
    for a, b in pairs:
        unknown = [n for n in (a, b) if n not in names]
        if unknown or a == b:
            raise UserError(f"study.pairs: [{a!r}, {b!r}] must name two of {', '.join(names)}")
    return pairs


def _maps(settings: Settings, models, checkpoints, images, device) -> dict[str, np.ndarray]:
    """Each model's maps of the selected images `[N, H, W]`, 0..1, of their (correctly) predicted class."""
    maps = {}
    for name, model in models.items():
        data = settings.data.model_copy(update={"normalize": checkpoints[name]["meta"]["data"]["normalize"]})
        explain = settings.explain.model_copy(update={"batch_size": settings.study.batch_size})
        maps[name], _ = maps_and_predictions(model, images, data, explain, device)
    return maps


def _experiments(settings: Settings, classes: list[str]) -> dict[str, dict]:
    described = {}
    for key in settings.study.experiments:
        kind, variant = EXPERIMENTS[key]
        options = ["alg1", "alg2", "none"] if kind == "exp1" else [*classes, "none"]
        described[key] = {
            "kind": kind, "variant": variant, "folder": key, "input": f"{key}_input.csv",
            "layout": f"layouts/{key}.html", "options": options,
            "question": EXP1_QUESTION if kind == "exp1" else EXP2_QUESTION,
        }
    return described


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _remove_stale(out: Path, experiments: list[str], stimuli: list[Stimulus]) -> None:
    """Files of an earlier build that this one did not make would be served and published: remove them."""
    keep = {out / s.file for s in stimuli}
    for key in EXPERIMENTS:
        for path in (out / key).glob("*.png"):
            if path not in keep:
                path.unlink()
        if key not in experiments:
            (out / f"{key}_input.csv").unlink(missing_ok=True)
            (out / "layouts" / f"{key}.html").unlink(missing_ok=True)


def build_study(settings: Settings, run: Run, out: Path | None = None) -> StudyResult:
    """Select the images, render both experiments, write the MTurk files and the manifest."""
    out = Path(out or run.path("study"))
    study = settings.study
    chosen = study_models(settings, run)
    pairs = _pairs(settings, list(chosen))
    device = select_device(settings.train.device)
    loaded = {name: load_checkpoint(path, device) for name, (_, path) in chosen.items()}
    models = {name: model for name, (model, _) in loaded.items()}
    checkpoints = {name: checkpoint for name, (_, checkpoint) in loaded.items()}
    first = next(iter(checkpoints.values()))["meta"]["data"]
    data = settings.data.model_copy(update={"normalize": first["normalize"], "image_size": first["image_size"]})
    root = dataset_root(settings.data, run.root, progress=False)
    test = load_splits(root, settings.data.split_seed, class_names(settings.data)).test
    dataset = image_dataset(test, data, root, "test", settings.train.progress)
    selection = select(models, test, dataset, data, study.per_class, study.seed, study.batch_size, device,
                       settings.train.progress)
    selection.write(out / "selection.csv")
    images = stacked(selection.images, data.image_size)
    maps = _maps(settings, models, checkpoints, images, device)
    classes = list(test.classes)
    labels = [classes[label] for label in selection.images.labels]
    stimuli = _render(settings, images.permute(0, 2, 3, 1).numpy(), maps, labels, pairs, classes, out)
    _remove_stale(out, study.experiments, stimuli)
    _write_manifest(out, settings, run, chosen, classes, stimuli)
    counts = {key: sum(s.experiment == key for s in stimuli) for key in study.experiments}
    log.info("study: %d images, %s in %s", len(labels), counts, out)
    return StudyResult(out, len(labels), counts)


def _render(settings: Settings, pictures: np.ndarray, maps: dict[str, np.ndarray], labels: list[str],
            pairs: list[tuple[str, str]], classes: list[str], out: Path) -> list[Stimulus]:
    """Every experiment's stimuli, input CSV and layout; the sides of experiment 1 drawn once for both variants."""
    study, progress = settings.study, settings.train.progress
    sides = draw_sides(len(labels), len(pairs), study.seed)
    drawn: dict[str, dict[str, np.ndarray]] = {}
    stimuli: list[Stimulus] = []
    for key in study.experiments:
        kind, variant = EXPERIMENTS[key]
        if variant not in drawn:
            drawn[variant] = {n: draw_maps(variant, pictures, maps[n], study.occlusion, study.heatmap_alpha)
                              for n in maps}
        made = (exp1_stimuli(key, pictures, drawn[variant], labels, pairs, sides, out, progress)
                if kind == "exp1" else exp2_stimuli(key, drawn[variant], labels, out, progress))
        write_input(out / f"{key}_input.csv", [s.file for s in made], study.url_prefix, study.seed)
        write_layout(out / "layouts" / f"{key}.html", kind, variant, classes)
        stimuli += made
    return stimuli


def _write_manifest(out: Path, settings: Settings, run: Run, chosen, classes, stimuli: list[Stimulus]) -> Path:
    experiments = _experiments(settings, classes)
    files = ["selection.csv", *(e["input"] for e in experiments.values()), *(e["layout"] for e in experiments.values())]
    manifest = {
        "software": {name: _version(name) for name in _SOFTWARE},
        "settings": settings.model_dump(mode="json"),
        "seed": settings.study.seed,
        "classes": classes,
        "models": {
            name: {"key": key, "checkpoint": path.relative_to(run.root).as_posix(), "sha256": file_digest(path)}
            for name, (key, path) in chosen.items()
        },
        "experiments": experiments,
        "files": {name: _sha256(out / name) for name in files},
        "stimuli": [{**s.record(), "sha256": _sha256(out / s.file)} for s in stimuli],
    }
    return write_json(out / "manifest.json", manifest)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def read_manifest(path: Path) -> dict:
    if not Path(path).is_file():
        raise UserError(f"{path}: no such manifest; run `prunexplain study build` first")
    manifest = read_json(path)
    missing = [key for key in ("settings", "models", "stimuli", "files") if key not in manifest]
    if missing:
        raise UserError(f"{path}: not a study manifest (missing {', '.join(missing)})")
    return manifest


@dataclass
class RebuildResult:
    folder: Path
    checked: int
    different: list[str]

    def summary(self) -> str:
        if not self.different:
            return f"all {self.checked} files rebuilt byte for byte identical in {self.folder}"
        return f"{len(self.different)} of {self.checked} files differ: {', '.join(self.different[:10])}"


def rebuild_study(manifest_path: Path, run: Run, out: Path) -> RebuildResult:
    """Build again from a manifest's settings into `out` and compare every file's SHA-256.

    The run's checkpoints must be the ones the manifest names (same SHA-256), else the study
    cannot be the same and this stops before any work.
    """
    manifest = read_manifest(manifest_path)
    settings = Settings.model_validate(manifest["settings"])
    for name, model in manifest["models"].items():
        path = run.path(model["checkpoint"])
        if not path.is_file() or file_digest(path) != model["sha256"]:
            raise UserError(f"{manifest_path}: model {name} ({path}) is missing or not the checkpoint it was built from")
    build_study(settings, run, out)
    expected = {**manifest["files"], **{s["file"]: s["sha256"] for s in manifest["stimuli"]}}
    different = [name for name, digest in expected.items()
                 if not (Path(out) / name).is_file() or _sha256(Path(out) / name) != digest]
    return RebuildResult(Path(out), len(expected), different)
