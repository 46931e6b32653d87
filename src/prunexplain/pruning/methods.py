"""The registry of pruning methods. A method scores weights (or whole filters) and returns masks;
the schedule applies them. Adding a method is one entry in `METHODS`.

A method only says *what* to score and over which set it ranks (each layer on its own, or all
layers together). Already-pruned weights score -inf so they stay pruned: masks only ever shrink.
The number kept is given by the caller, so any compression schedule lands exactly on its rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from prunexplain.config import UserError

Masks = dict[str, torch.Tensor]  # "<module>.weight" -> bool tensor of the weight's shape
Score = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

LAYER_TYPES = {"conv": (nn.Conv2d,), "conv_linear": (nn.Conv2d, nn.Linear)}


def prunable_weights(model: nn.Module, scope: str) -> dict[str, torch.Tensor]:
    """The weights in scope, keyed like the state dict: Conv2d layers (the study), optionally Linear."""
    types = LAYER_TYPES[scope]
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, types)}


def magnitude(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return weight.detach().abs()


def uniform(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(weight.shape, generator=generator)


def filter_l1(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return weight.detach().abs().flatten(1).sum(1)


def filter_uniform(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(weight.shape[0], generator=generator)


@dataclass(frozen=True)
class Method:
    """How a pruning method ranks: per weight or per output filter, per layer or over all layers."""

    unit: Literal["weight", "filter"]
    ranking: Literal["local", "global"]
    score: Score

    def units(self, weight: torch.Tensor) -> int:
        return weight.numel() if self.unit == "weight" else weight.shape[0]


METHODS: dict[str, Method] = {
    "local_magnitude_unstructured": Method("weight", "local", magnitude),
    "local_random_unstructured": Method("weight", "local", uniform),
    "global_magnitude_unstructured": Method("weight", "global", magnitude),
    "local_l1_structured": Method("filter", "local", filter_l1),
    "local_random_structured": Method("filter", "local", filter_uniform),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"prune.methods: unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]


def _unit_mask(mask: torch.Tensor, unit: str) -> torch.Tensor:
    """Which units are still alive: weights, or filters with any weight left."""
    return mask if unit == "weight" else mask.flatten(1).any(1)


def _keep_top(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the `keep` best-scoring alive units (ties: the earlier index wins)."""
    scores = scores.flatten().float().masked_fill(~alive.flatten(), float("-inf"))
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[torch.argsort(scores, descending=True, stable=True)[:keep]] = True
    return chosen.view(alive.shape)


def _expand(units: torch.Tensor, weight: torch.Tensor, unit: str) -> torch.Tensor:
    return units if unit == "weight" else units.view(-1, *[1] * (weight.dim() - 1)).expand_as(weight).clone()


def compute_masks(
    method: Method, weights: dict[str, torch.Tensor], masks: Masks, rate: float, generator: torch.Generator
) -> Masks:
    """New masks that keep 1/rate of the units of the layer set (at least one unit per layer)."""
    scores = {name: method.score(w.cpu(), generator) for name, w in weights.items()}
    alive = {name: _unit_mask(masks[name], method.unit) for name in weights}
    if method.ranking == "local":
        units = {
            name: _keep_top(scores[name], alive[name], max(1, round(method.units(w) / rate)))
            for name, w in weights.items()
        }
    else:
        names = list(weights)
        total = sum(method.units(weights[n]) for n in names)
        flat = _keep_top(torch.cat([scores[n].flatten() for n in names]),
                         torch.cat([alive[n].flatten() for n in names]), max(1, round(total / rate)))
        sizes = [scores[n].numel() for n in names]
        units = {n: part.view(scores[n].shape) for n, part in zip(names, flat.split(sizes))}
    return {name: _expand(units[name], weights[name], method.unit) for name in weights}
