"""The explain stage: maps of every model of a run (dense and each method x rate) on the same images.

Writes `explain/images.csv` (which test images), and per model and method of `explain.methods`
`explain/<model>/maps.npy` (`[N, H, W]` float32 at the image size, each with its peak at 1;
`maps-<method>.npy` for methods other than Grad-CAM) with `predictions.npy`, and with
`explain.render` occlusion and heatmap PNGs (`png/`, `png-<method>/`).
Grad-CAM maps are in 0..1 with `explain.upsample = "torch"`; with "pil" (the study's resize) they
keep bicubic's small negative overshoot, which the metrics of `prunexplain.evaluate` allow for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from prunexplain.config import ExplainSettings, Settings, UserError
from prunexplain.data import dataset_root, splits_of
from prunexplain.data.loaders import ImageSet, as_trained, image_rows, stacked
from prunexplain.explain.batched import maps_and_predictions
from prunexplain.explain.cam import METHODS
from prunexplain.explain.render import heatmap, occlude, save_png, top_pixels
from prunexplain.models import check_fits, default_target_layer, load_checkpoint, select_device
from prunexplain.runs import ModelKey, Run, write_csv, write_with

log = logging.getLogger(__name__)


@dataclass
class ExplainResult:
    models: dict[str, dict[str, Path]]  # model name -> method -> its maps file
    images: int

    def summary(self) -> str:
        methods = next(iter(self.models.values()), {})
        return (f"{len(self.models)} models x {self.images} images, maps of {', '.join(methods)}: "
                f"{', '.join(self.models)}")


def _chosen(available: dict[ModelKey, Path], wanted: list[str]) -> dict[ModelKey, Path]:
    if not available:
        raise UserError("explain: the run has no models yet; run `prunexplain train` (and `prune`) first")
    keys = [ModelKey.parse(name) for name in wanted]
    unknown = [str(key) for key in keys if key not in available]
    if unknown:
        raise UserError(f"explain.models: unknown {unknown} (this run has: {', '.join(map(str, available))})")
    return {key: available[key] for key in keys} if keys else available


def explained_images(settings: Settings, run: Run) -> ImageSet:
    """The images every model is explained on: the first `explain.images` of the test split."""
    root = dataset_root(settings.data, run, progress=False)
    test = splits_of(settings.data, root).test
    if settings.explain.images > len(test):
        raise UserError(f"explain.images={settings.explain.images}: the test split has only {len(test)} images")
    return test.subset(range(settings.explain.images))


def _render(run: Run, key: ModelKey, method: str, images: torch.Tensor, maps: np.ndarray, settings) -> None:
    masks = top_pixels(torch.from_numpy(maps), settings.occlusion).numpy()
    for i, (image, cam, mask) in enumerate(zip(images.permute(0, 2, 3, 1).numpy(), maps, masks)):
        save_png(occlude(image, mask), run.render(key, i, "occlusion", method))
        save_png(heatmap(image, cam, settings.heatmap_alpha), run.render(key, i, "heatmap", method))


def _with_layer(settings: Settings, checkpoint: Path, image_size: int) -> ExplainSettings:
    """`explain` settings naming the target layer: the given one, or the default traced once on one
    model (pruning keeps every layer, so all of a run's models share it), logged."""
    if settings.explain.target_layer is not None:
        return settings.explain
    layer = default_target_layer(load_checkpoint(checkpoint)[0], image_size)
    log.info("explain.target_layer: %s (the model's last spatial feature map at %d px; set it to choose another)",
             layer, image_size)
    return settings.explain.model_copy(update={"target_layer": layer})


def explain_stage(settings: Settings, run: Run) -> ExplainResult:
    """Explain every chosen model of the run on the same first N test images."""
    check_methods(settings.explain.methods)
    if settings.explain.upsample != "torch" and settings.explain.methods != ["gradcam"]:
        log.info("explain.upsample=%s applies to gradcam only; the other methods make maps at the image size",
                 settings.explain.upsample)
    models = _chosen(run.models(), settings.explain.models)
    device = select_device(settings.runtime.device)
    test = explained_images(settings, run)
    _, first = load_checkpoint(next(iter(models.values())))
    check_fits(first, next(iter(models.values())), list(test.classes), settings.data.image_size)
    images = stacked(test, first["meta"]["data"]["image_size"])
    write_csv(run.explained_images, image_rows(test))
    explain = _with_layer(settings, next(iter(models.values())), images.shape[-1])
    written = {}
    progress = tqdm(total=len(models) * len(explain.methods), desc="explain", unit="map set",
                    disable=not settings.runtime.progress)
    with progress:
        for key, path in models.items():
            model, checkpoint = load_checkpoint(path, device)
            data = as_trained(settings.data, checkpoint["meta"]["data"])
            for method in explain.methods:
                progress.set_postfix(model=str(key), method=method)
                maps, predictions = maps_and_predictions(model, images, data, explain, device, method)
                written.setdefault(str(key), {})[method] = write_with(run.maps(key, method),
                                                                     lambda handle: np.save(handle, maps))
                if settings.explain.render:
                    _render(run, key, method, images, maps, settings.explain)
                progress.update()
            write_with(run.predictions(key), lambda handle: np.save(handle, predictions))  # the same for each
            log.info("explained %s: %d maps of %s", key, len(maps), ", ".join(explain.methods))
    return ExplainResult(written, len(images))


def check_methods(methods: list[str]) -> None:
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise UserError(f"explain.methods: unknown {', '.join(map(repr, unknown))} (known: {', '.join(METHODS)})")
