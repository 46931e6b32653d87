"""`study build`: from a run's models to everything a crowd study needs, traceable to its sources.

Writes into `study/` (the files `runs.StudyFolder` names): `selection.csv`, one folder of PNGs per
experiment of `study.experiments` (keys of the experiment spec), its MTurk input CSV and HIT layout,
`key.csv` where the stimuli have opaque names (`study.stimulus_names`), and `manifest.json`:
every stimulus with its SHA-256, the SHA-256 of each model's checkpoint, the seed, the complete
settings, the naming key, the verified counterbalancing (`study.balance`) and the software versions,
so `rebuild_study` can make the same files again and prove it. A rebuild keeps the naming key and
the frozen pre-registration of the manifest it replaces.
"""

from __future__ import annotations

import csv
import logging
import secrets
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from prunexplain.config import DataSettings, Settings, StudySettings, UserError, read_json
from prunexplain.data import dataset_root, splits_of
from prunexplain.data.loaders import ImageSet, as_trained, image_dataset, stacked
from prunexplain.experiments import EXPERIMENTS, RENDERINGS, study_model_name
from prunexplain.explain import maps_and_predictions
from prunexplain.models import load_checkpoint, select_device
from prunexplain.runs import ModelKey, Run, StudyFolder, file_digest, write_csv, write_json
from prunexplain.study.balance import check_balance
from prunexplain.study.mturk import write_input, write_layout
from prunexplain.study.select import Selection, from_csv, read_selection, select, study_key
from prunexplain.study.stimuli import (
    Naming,
    Stimulus,
    draw_maps,
    exp1_stimuli,
    exp2_stimuli,
    shared_sides,
    study_pairs,
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
        return f"{self.images} images; stimuli: {counts}; manifest {StudyFolder(self.folder).manifest}"


@dataclass
class Shown:
    """What a study's stimuli are drawn from: the selected images, each model's maps of them, their
    labels and the ids their file names carry. `study build` renders it, and the model-based
    observers (`study.observers`) read the same arrays through `drawn`, so they judge exactly the
    pictures the PNGs show."""

    pictures: np.ndarray  # [N, H, W, 3] uint8
    maps: dict[str, np.ndarray]  # study model name -> [N, H, W], 0..1
    labels: list[str]
    ids: list[int]
    classes: list[str]

    def drawn(self, study: StudySettings, rendering: str) -> dict[str, np.ndarray]:
        """Each model's pictures `[N, H, W, 3]` as `rendering` shows them to people."""
        return {name: draw_maps(rendering, self.pictures, maps, study.occlusion, study.heatmap_alpha,
                                study.occlusion_count, study.heatmap_exponent)
                for name, maps in self.maps.items()}


def study_models(settings: Settings, run: Run) -> dict[str, tuple[ModelKey, Path]]:
    """Study name (nonpruned, 2pruned, ...) -> (the run's model, its checkpoint)."""
    available = run.models()
    models: dict[str, tuple[ModelKey, Path]] = {}
    for text in settings.study.models:
        key = study_key(text)
        if key not in available:
            listing = ", ".join(map(str, available)) or "no models"
            raise UserError(
                f"study.models: {text!r} is not in this run (it has: {listing}); train and prune first, or name "
                "other models"
            )
        name = study_model_name(key)
        if name in models:
            raise UserError(f"study.models: {str(models[name][0])!r} and {text!r} would both be shown as {name!r}")
        models[name] = (key, available[key])
    return models


def _pairs(settings: Settings, names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """The pairs each rendering of experiment 1 compares: `study.pairs`, and for heatmaps
    `study.heatmap_pairs` where set (the original's heatmap batch had only the two pairs with the
    non-pruned model)."""
    study = settings.study
    pairs = {}
    for rendering in RENDERINGS:  # occlusion first: its sides are drawn first, as before heatmap_pairs
        own = rendering == "heatmap" and study.heatmap_pairs is not None
        key, asked = ("study.heatmap_pairs", study.heatmap_pairs) if own else ("study.pairs", study.pairs)
        pairs[rendering] = study_pairs(names, asked)
        for a, b in pairs[rendering]:
            if a not in names or b not in names or a == b:
                raise UserError(f"{key}: [{a!r}, {b!r}] must name two of {', '.join(names)}")
    return pairs


def _maps(settings: Settings, models, checkpoints, images, labels: list[int], device) -> dict[str, np.ndarray]:
    """Each model's maps of the selected images `[N, H, W]`, 0..1, of their predicted class; a model
    that predicts another class than an image's label is logged (its map explains that class, and
    experiment 1's title would name the label: possible with `study.images_csv`)."""
    maps = {}
    for name, model in models.items():
        data = as_trained(settings.data, checkpoints[name]["meta"]["data"])
        explain = settings.explain.model_copy(update={"batch_size": settings.study.batch_size})
        maps[name], predicted = maps_and_predictions(model, images, data, explain, device, settings.study.explainer)
        wrong = int((predicted != np.asarray(labels)).sum())
        if wrong:
            log.warning("study: %s predicts another class than the label for %d of %d images", name, wrong,
                        len(labels))
    return maps


def _experiments(settings: Settings, classes: list[str], folder: StudyFolder) -> dict[str, dict]:
    """The manifest's description of each experiment: what the server and the analysis read back."""
    described = {}
    for key in settings.study.experiments:
        kind, rendering = EXPERIMENTS[key].kind, EXPERIMENTS[key].rendering
        described[key] = {
            "kind": kind.name, "variant": rendering, "folder": folder.relative(folder.stimuli(key)),
            "input": folder.relative(folder.input_csv(key)), "layout": folder.relative(folder.layout(key)),
            "options": kind.options(classes), "question": kind.question,
        }
    return described


def _remove_stale(folder: StudyFolder, experiments: list[str], stimuli: list[Stimulus]) -> None:
    """Files of an earlier build that this one did not make would be served and published: remove them."""
    keep = {folder.stimulus(s.file) for s in stimuli}
    if not any(s.name for s in stimuli):
        folder.key.unlink(missing_ok=True)
    for key in EXPERIMENTS:
        for path in folder.stimuli(key).glob("*.png"):
            if path not in keep:
                path.unlink()
        if key not in experiments:
            folder.input_csv(key).unlink(missing_ok=True)
            folder.layout(key).unlink(missing_ok=True)


@dataclass
class _Models:
    """The study's models loaded on the device, with what their checkpoints say about the data."""

    models: dict[str, torch.nn.Module]
    checkpoints: dict[str, dict]
    data: DataSettings  # the run's, with the image size and normalisation the models were trained with
    device: torch.device


def _load_models(settings: Settings, chosen: dict[str, tuple[ModelKey, Path]]) -> _Models:
    device = select_device(settings.runtime.device)
    loaded = {name: load_checkpoint(path, device) for name, (_, path) in chosen.items()}
    checkpoints = {name: checkpoint for name, (_, checkpoint) in loaded.items()}
    first = next(iter(checkpoints.values()))["meta"]["data"]
    data = as_trained(settings.data, first).model_copy(update={"image_size": first["image_size"]})
    return _Models({name: model for name, (model, _) in loaded.items()}, checkpoints, data, device)


def _test_split(settings: Settings, run: Run) -> tuple[Path, ImageSet]:
    root = dataset_root(settings.data, run, progress=False)
    return root, splits_of(settings.data, root).test


def _shown(settings: Settings, loaded: _Models, selection: Selection, classes: list[str]) -> Shown:
    """The selected images and every model's maps of them (the arrays the stimuli are drawn from)."""
    images = stacked(selection.images, loaded.data.image_size)
    maps = _maps(settings, loaded.models, loaded.checkpoints, images, list(selection.images.labels), loaded.device)
    labels = [classes[label] for label in selection.images.labels]
    return Shown(images.permute(0, 2, 3, 1).numpy(), maps, labels, selection.ids, classes)


def build_study(settings: Settings, run: Run, out: Path | None = None, naming_key: bytes | None = None) -> StudyResult:
    """Select the images, render both experiments, write the MTurk files and the manifest; opaque
    names are keyed with `naming_key`, else the key of the manifest already there, else a new one."""
    folder = StudyFolder(out) if out is not None else run.study
    study = settings.study
    earlier = read_json(folder.manifest) if folder.manifest.is_file() else {}
    naming = _naming(study, earlier, naming_key)
    chosen = study_models(settings, run)
    pairs = _pairs(settings, list(chosen))
    loaded = _load_models(settings, chosen)
    root, test = _test_split(settings, run)
    selection = _selection(settings, run, loaded.models, test, root, loaded.data, loaded.device)
    selection.write(folder.selection)
    shown = _shown(settings, loaded, selection, list(test.classes))
    stimuli = _render(settings, shown, pairs, folder, naming)
    balance = check_balance(stimuli, {key: _input_files(folder, key, study.url_prefix) for key in study.experiments})
    _remove_stale(folder, study.experiments, stimuli)
    _write_key(folder, stimuli)
    extra = {"names": {"scheme": naming.scheme, "key": naming.key.hex() or None}, "counterbalancing": balance}
    if "preregistration" in earlier:
        extra["preregistration"] = earlier["preregistration"]
    _write_manifest(folder, settings, run, chosen, shown.classes, stimuli, extra)
    counts = {key: sum(s.experiment == key for s in stimuli) for key in study.experiments}
    log.info("study: %d images, %s in %s", len(shown.labels), counts, folder.root)
    return StudyResult(folder.root, len(shown.labels), counts)


def _naming(study: StudySettings, earlier: dict, key: bytes | None) -> Naming:
    if study.stimulus_names == "study":
        return Naming("study")
    kept = (earlier.get("names") or {}).get("key")
    return Naming("opaque", key or (bytes.fromhex(kept) if kept else secrets.token_bytes(16)))


def _input_files(folder: StudyFolder, key: str, url_prefix: str) -> list[str]:
    """The stimulus files an experiment's input CSV lists, read back as MTurk will read them."""
    with folder.input_csv(key).open(newline="") as handle:
        return [row["image_url"].removeprefix(url_prefix) for row in csv.DictReader(handle)]


def _write_key(folder: StudyFolder, stimuli: list[Stimulus]) -> None:
    """`key.csv`: each opaque file name (as answer files carry it, without folders) and what it shows."""
    named = [s for s in stimuli if s.name]
    if named:
        write_csv(folder.key, [{"file": Path(s.file).name, "experiment": s.experiment, "name": s.name,
                                "image": s.image, "label": s.label, "left": s.left or "", "right": s.right or "",
                                "model": s.model or ""} for s in named])


def shown_again(settings: Settings, run: Run) -> Shown:
    """The arrays the run's built study was drawn from, computed again from its models and its
    `selection.csv` the way `build_study` computed them: for readers of the stimuli that need the
    pictures as arrays (the model-based observers), not as PNGs.

    The study must have been built from the checkpoints the run holds now (the manifest's SHA-256),
    else its PNGs show other maps and this stops, asking for a new build.
    """
    manifest = read_manifest(run.study.manifest)
    chosen = study_models(settings, run)
    built = manifest.get("models", {})
    if list(built) != list(chosen) or any(file_digest(path) != built[name].get("sha256")
                                          for name, (_, path) in chosen.items()):
        raise UserError(f"{run.study.manifest}: the study was built from other models than study.models names "
                        f"now ({', '.join(built)}); run `prunexplain study build` again")
    loaded = _load_models(settings, chosen)
    _, test = _test_split(settings, run)
    if list(test.classes) != list(manifest.get("classes", [])):
        raise UserError(f"{run.study.manifest}: built for other classes than the run's dataset has; run "
                        "`prunexplain study build` again")
    return _shown(settings, loaded, read_selection(run.study.selection, test), list(test.classes))


def _selection(settings: Settings, run: Run, models, test, root: Path, data, device) -> Selection:
    """The images to show: those `study.images_csv` lists, else chosen as `study.selection` says."""
    study = settings.study
    if study.images_csv is not None:
        return from_csv(study.images_csv, test, root)
    dataset = image_dataset(test, data, run.cache_dir, "test", settings.runtime)
    return select(models, test, dataset, data, study.per_class, study.seed, study.batch_size, device,
                  settings.runtime.progress, study.selection)


def _render(settings: Settings, shown: Shown, pairs: dict[str, list[tuple[str, str]]],
            folder: StudyFolder, naming: Naming) -> list[Stimulus]:
    """Every experiment's stimuli, input CSV and layout; the sides of the pairs drawn once for every
    experiment that compares (the same model on the same side of an image in both renderings)."""
    study, progress = settings.study, settings.runtime.progress
    renderings, labels, ids = list(pairs), shown.labels, shown.ids
    sides = dict(zip(renderings, shared_sides(len(labels), [pairs[r] for r in renderings], study.seed)))
    drawn: dict[str, dict[str, np.ndarray]] = {}
    stimuli: list[Stimulus] = []
    for key in study.experiments:
        experiment = EXPERIMENTS[key]
        rendering = experiment.rendering
        if rendering not in drawn:
            drawn[rendering] = shown.drawn(study, rendering)
        if experiment.kind.compares:
            made = exp1_stimuli(experiment, shown.pictures, drawn[rendering], labels, pairs[rendering],
                                sides[rendering], folder, progress, ids, study.layout, naming)
        else:
            made = exp2_stimuli(experiment, drawn[rendering], labels, folder, progress, ids, study.layout, naming)
        write_input(folder.input_csv(key), [s.file for s in made], study.url_prefix, study.seed)
        write_layout(folder.layout(key), experiment, shown.classes)
        stimuli += made
    return stimuli


def _write_manifest(folder: StudyFolder, settings: Settings, run: Run, chosen, classes,
                    stimuli: list[Stimulus], extra: dict) -> Path:
    experiments = _experiments(settings, classes, folder)
    files = [folder.relative(folder.selection), *(e["input"] for e in experiments.values()),
             *(e["layout"] for e in experiments.values())]
    files += [folder.relative(folder.key)] if folder.key.is_file() else []
    manifest = {
        "software": {name: _version(name) for name in _SOFTWARE},
        "settings": settings.model_dump(mode="json"),
        "seed": settings.study.seed,
        "classes": classes,
        "models": {
            name: {"key": str(key), "checkpoint": path.relative_to(run.root).as_posix(), "sha256": file_digest(path)}
            for name, (key, path) in chosen.items()
        },
        "experiments": experiments,
        "files": {name: file_digest(folder.stimulus(name)) for name in files},
        "stimuli": [{**s.record(), "sha256": file_digest(folder.stimulus(s.file))} for s in stimuli],
        **extra,
    }
    return write_json(folder.manifest, manifest)


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
    key = (manifest.get("names") or {}).get("key")
    for name, model in manifest["models"].items():
        path = run.checkpoint(_manifest_key(manifest_path, name, model))
        if not path.is_file() or file_digest(path) != model["sha256"]:
            raise UserError(
                f"{manifest_path}: model {name} ({path}) is missing or not the checkpoint it was built from")
    build_study(settings, run, out, bytes.fromhex(key) if key else None)
    folder = StudyFolder(out)
    expected = {**manifest["files"], **{s["file"]: s["sha256"] for s in manifest["stimuli"]}}
    different = [name for name, digest in expected.items()
                 if not folder.stimulus(name).is_file() or file_digest(folder.stimulus(name)) != digest]
    return RebuildResult(folder.root, len(expected), different)


def _manifest_key(manifest_path: Path, name: str, model: dict) -> ModelKey:
    """The run's model a manifest's study model was made from (its `key`)."""
    try:
        return ModelKey.parse(model.get("key", ""))
    except UserError as error:
        raise UserError(f"{manifest_path}: models.{name}.key: {error}") from None
