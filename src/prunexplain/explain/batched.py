"""Maps and predictions of one model over a batch of uint8 images: what explain, evaluate and the
study's stimuli all compute, in batches of `settings.batch_size` on the model's device."""

from __future__ import annotations

import numpy as np
import torch

from prunexplain.config import DataSettings, ExplainSettings
from prunexplain.data.loaders import prepare
from prunexplain.explain.cam import explain, target_layer


def maps_and_predictions(
    model, images: torch.Tensor, data: DataSettings, settings: ExplainSettings, device
) -> tuple[np.ndarray, np.ndarray]:
    """Maps of the predicted classes and the predictions, batch by batch (uint8 images in); the
    default target layer is traced once here, not once per batch."""
    layer = target_layer(model, settings.target_layer, images.shape[-1])
    maps, predictions = [], []
    for start in range(0, len(images), settings.batch_size):
        x = prepare(images[start : start + settings.batch_size].to(device), data)
        with torch.no_grad():
            classes = model(x).argmax(1)
        maps.append(explain(model, x, settings.method, classes, layer, settings.upsample).cpu())
        predictions.append(classes.cpu())
    return torch.cat(maps).numpy().astype(np.float32), torch.cat(predictions).numpy()
