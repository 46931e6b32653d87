"""Metrics that ask the model: deletion and insertion curves, and the randomisation sanity check.

Deletion removes the most important pixels first (they turn black) and reads the class
probability at each step; a faithful map makes it fall fast (low area under the curve). Insertion
starts from a black image and adds the most important pixels first; a faithful map makes it rise
fast (high area). All steps of a batch of images run as one batch of model inputs.

The sanity check (Adebayo et al. 2018, cascading model randomisation) re-initialises the model's
layers from the top down and compares the maps with the trained model's: maps that stay alike
although the weights no longer mean anything are not explaining the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from prunexplain.evaluate.metrics import MetricInputs, spearman_to_dense

ToInput = Callable[[torch.Tensor], torch.Tensor]  # 0..1 images -> the model's input (normalised)
Explainer = Callable[[nn.Module, torch.Tensor], np.ndarray]  # model, input -> maps [N, H, W]


def _ranks(maps: np.ndarray) -> torch.Tensor:
    """Importance rank of every pixel (0 = most important; ties by pixel order)."""
    flat = torch.from_numpy(np.ascontiguousarray(maps.reshape(len(maps), -1)))
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))


def probabilities(model: nn.Module, images: torch.Tensor, to_input: ToInput, batch_size: int) -> torch.Tensor:
    """Class probabilities `[N, classes]` of 0..1 `images`, `batch_size` at a time. The inputs go in
    channels-last: convolutions on the CPU run 1.5-1.8x faster so (the compact VGG-16 at 32-64 px),
    and these passes are most of what the model-querying metrics cost."""
    chunks = [to_input(images[i : i + batch_size]).contiguous(memory_format=torch.channels_last)
              for i in range(0, len(images), batch_size)]
    return torch.cat([model(chunk).softmax(1) for chunk in chunks])


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: np.ndarray,
    classes: torch.Tensor,
    to_input: ToInput,
    steps: int = 10,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image areas under the deletion and the insertion curve (probability of `classes`).

    `images` are 0..1 `[N, 3, H, W]`; step k of `steps` deletes (inserts) the top k/steps of pixels.
    The curves share their ends (the whole image, and a black one, the same for every image), which
    are asked for once.
    """
    model.eval()
    n, _, h, w = images.shape
    ranks = _ranks(maps).view(n, 1, h, w).to(images.device)
    thresholds = torch.linspace(0, h * w, steps + 1, device=images.device).round()[1:-1]
    probability = lambda x: probabilities(model, x, to_input, batch_size).gather(1, classes.view(-1, 1))[:, 0]  # noqa: E731
    whole = probability(images)
    black = probabilities(model, torch.zeros_like(images[:1]), to_input, 1)[0, classes]
    deleted = [probability(images * (ranks >= t)) for t in thresholds]
    inserted = [probability(images * (ranks < t)) for t in thresholds]
    area = lambda curve: np.trapezoid(torch.stack(curve, 1).cpu().numpy(), dx=1 / steps, axis=1)  # noqa: E731
    return area([whole, *deleted, black]), area([black, *inserted, whole])


def _layers_top_down(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return layers[::-1]


def randomisation_similarity(
    model: nn.Module, inputs: torch.Tensor, explainer: Explainer, seed: int = 0, steps: set[int] | None = None
) -> list[tuple[str, np.ndarray]]:
    """Spearman similarity of the maps after re-initialising the layers cumulatively from the top:
    [(layer name, per-image similarity), ...] for the cascade's `steps` (0 = the top layer alone, -1 =
    every layer; None: each step). Every layer is re-initialised in turn whichever steps are explained,
    so a step's weights do not depend on which others are asked for. The model itself is untouched.

    Explaining is the cost of the check: the evaluate stage asks for the top layer and the whole
    cascade only, two explanations instead of one per layer."""
    original = explainer(model, inputs)
    randomised = copy.deepcopy(model)
    layers = _layers_top_down(randomised)
    wanted = set(range(len(layers))) if steps is None else {s % len(layers) for s in steps}
    generator = torch.Generator().manual_seed(seed)
    results = []
    for step, (name, layer) in enumerate(layers):
        with torch.no_grad():
            scale = layer.weight.std().clamp(min=1e-3)
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * scale)
            if layer.bias is not None:
                layer.bias.zero_()
        if step in wanted:
            maps = explainer(randomised, inputs)
            results.append((name, spearman_to_dense(MetricInputs(maps=maps, reference=original))))
    return results


@torch.no_grad()
def faithfulness_correlation(
    model: nn.Module, images: torch.Tensor, maps: np.ndarray, classes: torch.Tensor, to_input: ToInput,
    runs: int = 32, share: float = 0.1, seed: int = 0, batch_size: int = 64,
) -> np.ndarray:
    """Per image, the Pearson correlation over `runs` random pixel subsets (each `share` of the pixels,
    drawn from `seed`) between the map's sum over the subset and the fall of the class probability
    when the subset turns black (Bhatt et al. 2020; Quantus's FaithfulnessCorrelation draws its subsets
    over every channel value, here over pixels)."""
    model.eval()
    n, _, h, w = images.shape
    generator = torch.Generator().manual_seed(seed)
    count = max(1, round(share * h * w))
    flat_maps = torch.from_numpy(np.ascontiguousarray(maps.reshape(n, -1))).double()

    def probability(x: torch.Tensor) -> torch.Tensor:
        return probabilities(model, x, to_input, batch_size).gather(1, classes.view(-1, 1))[:, 0].double().cpu()

    full, sums, falls = probability(images), [], []
    for _ in range(runs):
        subsets = torch.stack([torch.randperm(h * w, generator=generator)[:count] for _ in range(n)])
        chosen = torch.zeros(n, h * w, dtype=torch.bool).scatter_(1, subsets, True)
        sums.append((chosen.double() * flat_maps).sum(1))
        falls.append(full - probability(images * ~chosen.view(n, 1, h, w).to(images.device)))
    a, b = torch.stack(sums, 1), torch.stack(falls, 1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / ((a * a).sum(1) * (b * b).sum(1)).sqrt().clamp(min=1e-12)).numpy()
