"""The explain stage: maps of every model of a run (dense and each method x rate) on the same images.

Writes `explain/images.csv` (which test images), and per model `explain/<model>/maps.npy`
(`[N, H, W]` float32 at the image size, each scaled to 0..1; `maps-<cam>.npy` for methods other
than Grad-CAM) with `predictions.npy`, and with `explain.render` occlusion and heatmap PNGs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from prunexplain.config import DataSettings, Settings, UserError
from prunexplain.data import class_names, dataset_root
from prunexplain.data.loaders import FolderImages, ImageSet, load_splits, prepare
from prunexplain.explain.cam import METHODS, explain
from prunexplain.explain.render import heatmap, occlude, save_png, top_pixels
from prunexplain.models import load_checkpoint, select_device
from prunexplain.runs import Run, write_csv, write_with

log = logging.getLogger(__name__)


@dataclass
class ExplainResult:
    models: dict[str, Path]  # model name -> its maps file
    images: int

    def summary(self) -> str:
        return f"{len(self.models)} models x {self.images} images: {', '.join(self.models)}"


def run_models(run: Run) -> dict[str, Path]:
    """The run's checkpoints by name: 'dense', then '<method>/cr_<rate>' in increasing rate."""
    models = {"dense": run.path("train", "model.pt")} if run.path("train", "model.pt").exists() else {}
    rate = lambda path: float(re.sub(r"^cr_", "", path.parent.name))  # noqa: E731
    for method in sorted(p for p in run.path("prune").glob("*") if p.is_dir()):
        for path in sorted(method.glob("cr_*/model.pt"), key=rate):
            models[f"{method.name}/{path.parent.name}"] = path
    return models


def _chosen(available: dict[str, Path], wanted: list[str]) -> dict[str, Path]:
    if not available:
        raise UserError("explain: the run has no models yet; run `prunexplain train` (and `prune`) first")
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise UserError(f"explain.models: unknown {unknown} (this run has: {', '.join(available)})")
    return {name: available[name] for name in wanted} if wanted else available


def explained_images(settings: Settings, run: Run) -> ImageSet:
    """The images every model is explained on: the first `explain.images` of the test split."""
    root = dataset_root(settings.data, run.root, progress=False)
    test = load_splits(root, settings.data.split_seed, class_names(settings.data)).test
    return test.subset(range(min(settings.explain.images, len(test))))


def stacked(images: ImageSet, size: int) -> torch.Tensor:
    """The images as one uint8 batch `[N, 3, size, size]`."""
    dataset = FolderImages(images, size)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _test_images(settings: Settings, run: Run, meta: dict) -> tuple[torch.Tensor, list[dict]]:
    """The explained images as a batch at the model's size, and a row per image."""
    test = explained_images(settings, run)
    rows = [
        {"index": i, "path": str(path), "label": label, "class": test.classes[label]}
        for i, (path, label) in enumerate(zip(test.paths, test.labels))
    ]
    return stacked(test, meta["data"]["image_size"]), rows


def maps_and_predictions(model, images, data: DataSettings, settings, device) -> tuple[np.ndarray, np.ndarray]:
    """Maps of the predicted classes and the predictions, batch by batch (uint8 images in)."""
    maps, predictions = [], []
    for start in range(0, len(images), settings.batch_size):
        x = prepare(images[start : start + settings.batch_size].to(device), data)
        with torch.no_grad():
            classes = model(x).argmax(1)
        maps.append(explain(model, x, settings.method, classes, settings.target_layer).cpu())
        predictions.append(classes.cpu())
    return torch.cat(maps).numpy().astype(np.float32), torch.cat(predictions).numpy()


def _render(folder: Path, images: torch.Tensor, maps: np.ndarray, settings) -> None:
    masks = top_pixels(torch.from_numpy(maps), settings.occlusion).numpy()
    for i, (image, cam, mask) in enumerate(zip(images.permute(0, 2, 3, 1).numpy(), maps, masks)):
        save_png(occlude(image, mask), folder / "png" / f"{i}_occlusion.png")
        save_png(heatmap(image, cam, settings.heatmap_alpha), folder / "png" / f"{i}_heatmap.png")


def explain_stage(settings: Settings, run: Run) -> ExplainResult:
    """Explain every chosen model of the run on the same first N test images."""
    if settings.explain.method not in METHODS:
        raise UserError(f"explain.method: unknown CAM method {settings.explain.method!r} (known: {', '.join(METHODS)})")
    models = _chosen(run_models(run), settings.explain.models)
    device = select_device(settings.train.device)
    _, first = load_checkpoint(next(iter(models.values())))
    images, rows = _test_images(settings, run, first["meta"])
    write_csv(run.path("explain", "images.csv"), rows)
    name = "maps.npy" if settings.explain.method == "gradcam" else f"maps-{settings.explain.method}.npy"
    written = {}
    for key, path in tqdm(models.items(), desc="explain", unit="model", disable=not settings.train.progress):
        model, checkpoint = load_checkpoint(path, device)
        data = settings.data.model_copy(update={"normalize": checkpoint["meta"]["data"]["normalize"]})
        maps, predictions = maps_and_predictions(model, images, data, settings.explain, device)
        folder = run.path("explain", key)
        written[key] = write_with(folder / name, lambda handle: np.save(handle, maps))
        write_with(folder / "predictions.npy", lambda handle: np.save(handle, predictions))
        if settings.explain.render:
            _render(folder, images, maps, settings.explain)
        log.info("explained %s: %d maps", key, len(maps))
    return ExplainResult(written, len(images))
