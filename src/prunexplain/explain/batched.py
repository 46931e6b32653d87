"""Maps and predictions of one model over a batch of uint8 images: what explain, evaluate and the
study's stimuli all compute, in batches of `settings.batch_size` on the model's device."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from prunexplain.config import DataSettings, ExplainSettings
from prunexplain.data.loaders import prepare
from prunexplain.explain.attribution import AttributionOptions
from prunexplain.explain.cam import explain, target_layer


def attribution_options(settings: ExplainSettings, data: DataSettings, size: int) -> AttributionOptions:
    """The attributions' settings of `[explain]`, integrated gradients' baseline in the model's input
    space: a black image normalised as the model's inputs are, or zero."""
    black = prepare(torch.zeros(1, 3, size, size, dtype=torch.uint8), data)
    return AttributionOptions(ig_steps=settings.ig_steps, baseline=black if settings.ig_baseline == "black" else 0.0,
                              smoothgrad_samples=settings.smoothgrad_samples,
                              smoothgrad_noise=settings.smoothgrad_noise, seed=settings.seed)


def maps_and_predictions(
    model, images: torch.Tensor, data: DataSettings, settings: ExplainSettings, device, method: str = "gradcam"
) -> tuple[np.ndarray, np.ndarray]:
    """Maps of `method` for the predicted classes and the predictions, batch by batch (uint8 images
    in); the default target layer is traced once here, not once per batch. SmoothGrad draws each
    batch's noise from `settings.seed` and the batch's first index."""
    layer = target_layer(model, settings.target_layer, images.shape[-1])
    options = attribution_options(settings, data, images.shape[-1])
    maps, predictions = [], []
    for start in range(0, len(images), settings.batch_size):
        x = prepare(images[start : start + settings.batch_size].to(device), data)
        with torch.no_grad():
            classes = model(x).argmax(1)
        batch = dataclasses.replace(options, seed=options.seed * 1_000_003 + start)
        maps.append(explain(model, x, method, classes, layer, settings.upsample, batch).cpu())
        predictions.append(classes.cpu())
    return torch.cat(maps).numpy().astype(np.float32), torch.cat(predictions).numpy()
