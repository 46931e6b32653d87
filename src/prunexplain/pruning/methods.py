"""The registry of pruning methods. A method scores weights (or whole channels) and returns masks;
the schedule applies them. Adding a method is one entry in `METHODS`.

A method only says *what* to score and over which set it ranks (each layer or channel group on its
own, or all layers together). Already-pruned units score -inf so they stay pruned: masks only ever
shrink. The number kept is given by the caller, so any compression schedule lands exactly on its rates.

Weight methods prune the weights of every layer in `prune.scope` (every Conv2d, depthwise and 1x1
included; Linear too with `conv_linear`) except those `prune.exclude` names. Channel ("filter") methods
remove whole channels of any architecture through the groups of coupled layers Torch-Pruning finds
(`groups.py`), ranked within each group by a score of every filter that computes the channel; on a VGG
a group is one convolution, so that is the per-layer L1 filter ranking
(torch.nn.utils.prune.ln_structured, n=1, dim 0). Their masks cover every parameter the removal
touches, so the masked model computes what the physically smaller one computes. Their rate is the
weight rate of DESIGN.md like every method's (all / non-zero weights in scope): a removed channel takes
its filter and the input columns of its readers, so the channels removed are counted as they go.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from prunexplain.config import UserError
from prunexplain.pruning.groups import (
    ChannelGroup,
    SlicesKept,
    channel_groups,
    dependency_graph,
    drop,
    live_entries,
)

log = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]  # state-dict parameter name -> bool tensor of the parameter's shape
Score = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # a weight (its .grad too) -> per entry
ChannelScore = Callable[[ChannelGroup, dict[str, torch.Tensor], torch.Generator], torch.Tensor | None]

LAYER_TYPES = {"conv": (nn.Conv2d,), "conv_linear": (nn.Conv2d, nn.Linear)}


def excluded_layers(model: nn.Module, patterns: Sequence[str]) -> set[str]:
    """Names of the modules `prune.exclude` names (fnmatch patterns) and of every module inside them.
    A pattern that names nothing is a typo that would silently prune a layer meant to stay whole."""
    names = [name for name, _ in model.named_modules() if name]
    excluded = set()
    for pattern in patterns:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            layers = [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES["conv_linear"])]
            examples = ", ".join(layers[:3] + ["...", layers[-1]] if len(layers) > 4 else layers)
            raise UserError(f"prune.exclude: {pattern!r} matches no layer of the model (layers: {examples})")
        excluded.update(n for n in names if any(n == m or n.startswith(f"{m}.") for m in matched))
    return excluded


def prunable_weights(model: nn.Module, scope: str, exclude: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The weights in scope, keyed like the state dict: every Conv2d (the study), optionally every
    Linear, whatever the architecture, minus the layers `exclude` names."""
    types, excluded = LAYER_TYPES[scope], excluded_layers(model, exclude)
    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, types) and name not in excluded}


def magnitude(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return weight.detach().abs()


def uniform(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(weight.shape, generator=generator)


def taylor(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """|w * dL/dw| on the calibration batch (`calibration_gradients` sets `.grad`): the first-order
    estimate of the loss change when the weight is removed (Molchanov et al. 2019). Ranked over all
    layers it is SNIP's connection sensitivity (Lee et al. 2019), whose normalisation by the sum
    leaves the ranking as it is."""
    if weight.grad is None:
        raise RuntimeError("a gradient-based score needs the calibration batch's gradients (calibration_gradients)")
    return (weight.detach() * weight.grad).abs()


def lamp(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """LAMP (Lee et al. 2021): a weight's square over the sum of the squares of the weights of its
    layer at least as large, so that one global ranking adapts each layer's rate (ties: the earlier
    index counts as the smaller)."""
    squares = weight.detach().flatten().double().square()
    order = torch.argsort(squares, stable=True)
    ascending = squares[order]
    scores = torch.empty_like(squares)
    scores[order] = ascending / ascending.flip(0).cumsum(0).flip(0)
    return scores.view(weight.shape)


def filter_l1(group: ChannelGroup, params: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """The L1 norm of every filter weight computing each channel (`ChannelGroup.filters`)."""
    return group.filters(params).abs().sum(1)


def filter_uniform(group: ChannelGroup, params: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    return torch.rand(group.size, generator=generator)


def torch_pruning(importance: tp.importance.Importance) -> ChannelScore:
    """A channel score by one of Torch-Pruning's importance criteria, computed over its whole group
    (every layer the removal touches, reduced by its mean and normalised by its mean, its defaults);
    None where the criterion has nothing to read in the group (batch-norm scales without a batch norm)."""

    def score(group: ChannelGroup, params: dict[str, torch.Tensor], generator: torch.Generator):
        with torch.no_grad():
            value = importance(group.source)
        return None if value is None else value.detach().float().cpu()

    return score


def group_magnitude(p: int) -> ChannelScore:
    """The Lp norm of every weight the channel's removal takes, over the whole group (Li et al. 2017's
    filter norm, extended to the coupled layers; Torch-Pruning's GroupMagnitudeImportance)."""
    return torch_pruning(tp.importance.GroupMagnitudeImportance(p=p))


@dataclass(frozen=True)
class Method:
    """How a pruning method ranks: per weight or per channel ("filter"), per layer (per channel group),
    over all of them, or in blocks of `BLOCK` consecutive input weights (N:M semi-structured);
    `gradients`: its score reads `.grad` of a calibration batch."""

    unit: Literal["weight", "filter"]
    ranking: Literal["local", "global", "blocks"]
    score: Score | ChannelScore
    gradients: bool = False


METHODS: dict[str, Method] = {
    "local_magnitude_unstructured": Method("weight", "local", magnitude),
    "local_random_unstructured": Method("weight", "local", uniform),
    "global_magnitude_unstructured": Method("weight", "global", magnitude),
    "local_taylor_unstructured": Method("weight", "local", taylor, gradients=True),
    "global_snip_unstructured": Method("weight", "global", taylor, gradients=True),
    "global_lamp_unstructured": Method("weight", "global", lamp),
    "local_magnitude_nm_semistructured": Method("weight", "blocks", magnitude),
    "local_l1_structured": Method("filter", "local", filter_l1),
    "local_random_structured": Method("filter", "local", filter_uniform),
    "local_l1_group_structured": Method("filter", "local", group_magnitude(1)),
    "global_l1_group_structured": Method("filter", "global", group_magnitude(1)),
    "local_l2_group_structured": Method("filter", "local", group_magnitude(2)),
    "global_l2_group_structured": Method("filter", "global", group_magnitude(2)),
    "local_fpgm_structured": Method("filter", "local", torch_pruning(tp.importance.FPGMImportance())),
    "local_bn_scale_structured": Method("filter", "local", torch_pruning(tp.importance.BNScaleImportance())),
    "local_taylor_structured": Method(
        "filter", "local", torch_pruning(tp.importance.GroupTaylorImportance()), gradients=True
    ),
}


def get_method(name: str, rates: Sequence[float] = ()) -> Method:
    """The method of a name, checked against the rates it will be asked for."""
    if name not in METHODS:
        raise UserError(f"prune.methods: unknown method {name!r} (known: {', '.join(METHODS)})")
    method = METHODS[name]
    if method.ranking == "blocks":
        for rate in rates:
            _kept_per_block(name, rate)
    return method


BLOCK = 4  # N:M semi-structured sparsity keeps N of every M = 4 consecutive weights (2:4 on sparse kernels)


def _kept_per_block(name: str, rate: float) -> int:
    kept = BLOCK / rate
    if abs(kept - round(kept)) > 1e-9 or not 1 <= round(kept) < BLOCK:
        raise UserError(f"prune.rates: {name} keeps N of every {BLOCK} weights, so its rates are 4/3, 2 (2:4, the "
                        f"rate of sparse tensor-core kernels) or 4 (1:4), not {rate:g}; give it a run of its own "
                        "with prune.rates = [2]")
    return round(kept)


def _block_masks(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor | None:
    """Keep the `keep` best alive weights of every `BLOCK` consecutive input channels of each output
    row (and kernel position, as NVIDIA's ASP lays out convolutions for sparse kernels); None where the
    input channels are not a multiple of `BLOCK`."""
    if scores.shape[1] % BLOCK:
        return None
    laid_out = scores.movedim(1, -1).shape
    blocks = scores.float().movedim(1, -1).reshape(-1, BLOCK).masked_fill(~alive.movedim(1, -1).reshape(-1, BLOCK),
                                                                         float("-inf"))
    best = torch.argsort(blocks, dim=1, descending=True, stable=True)[:, :keep]
    chosen = torch.zeros_like(blocks, dtype=torch.bool).scatter_(1, best, True) & (blocks > float("-inf"))
    return chosen.view(laid_out).movedim(-1, 1)


def _keep_top(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the `keep` best-scoring alive units (ties: the earlier index wins)."""
    scores = scores.flatten().float().masked_fill(~alive.flatten(), float("-inf"))
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[torch.argsort(scores, descending=True, stable=True)[:keep]] = True
    return chosen.view(alive.shape)


def compute_masks(
    method: Method, weights: dict[str, torch.Tensor], masks: Masks, rate: float, generator: torch.Generator
) -> Masks:
    """New masks of a weight method that keep 1/rate of the weights of the layer set (at least one
    per layer)."""
    scores = {name: method.score(w, generator).cpu() for name, w in weights.items()}
    alive = {name: masks[name].cpu() for name in weights}
    if method.ranking == "blocks":
        return _semistructured(scores, alive, _kept_per_block("N:M", rate))
    if method.ranking == "local":
        return {name: _keep_top(scores[name], alive[name], max(1, round(w.numel() / rate)))
                for name, w in weights.items()}
    names = list(weights)
    total = sum(weights[n].numel() for n in names)
    flat = _keep_top(torch.cat([scores[n].flatten() for n in names]),
                     torch.cat([alive[n].flatten() for n in names]), max(1, round(total / rate)))
    return {n: part.view(scores[n].shape) for n, part in zip(names, flat.split([scores[n].numel() for n in names]))}


def _semistructured(scores: dict[str, torch.Tensor], alive: Masks, keep: int) -> Masks:
    masks, whole = {}, []
    for name, score in scores.items():
        chosen = _block_masks(score, alive[name], keep)
        masks[name] = alive[name].clone() if chosen is None else chosen
        if chosen is None:
            whole.append(f"{name} ({score.shape[1]} inputs)")
    if whole:
        log.warning("N:M pruning keeps layers whose input channels are not a multiple of %d whole: %s",
                    BLOCK, ", ".join(whole))
    return masks


def prunable_groups(model: nn.Module, image_size: int, scope: str, exclude: Sequence[str] = ()) -> list[ChannelGroup]:
    """The channel groups a filter method prunes: those whose channels are computed by layers in scope
    only and that touch no excluded layer (its weights stay whole, its input columns too)."""
    types, excluded = LAYER_TYPES[scope], excluded_layers(model, exclude)
    groups = [g for g in channel_groups(dependency_graph(model, image_size), model)
              if not g.layers & excluded and all(isinstance(model.get_submodule(p), types) for p in g.producers)]
    if not groups:
        raise UserError(
            f"prune.scope={scope!r}: no channel of this model can be removed by a structured method (every "
            "group of coupled channels passes a LayerNorm or GroupNorm, a grouped convolution or an excluded "
            "layer, or is computed by a layer out of scope; ConvNeXt: try prune.scope='conv_linear')"
        )
    return groups


def structured_masks(
    method: Method, model: nn.Module, weights: dict[str, torch.Tensor], masks: Masks, rate: float,
    generator: torch.Generator, groups: list[ChannelGroup],
) -> Masks:
    """New masks of a filter method that leave 1/rate of the `weights` in scope, to one channel's
    weights: channels leave lowest score first within each group and every group keeps one at least;
    near the target a channel that would overshoot further than stopping is skipped (with the rest of
    its group) for a smaller one.
    A local method's groups take turns by the share of their channels gone, so all keep about the same
    share; a global one removes the lowest scores of all groups first (Torch-Pruning's scores are
    normalised within each group, so they compare across groups). Every cut of a removed channel is
    masked (`masks` plus the biases, norms and input columns), and each removal is counted by the
    weights in scope it zeroes, rows and columns. A group the score cannot read stays whole.

    Scores read the weights as they are: after a first step a filter's L1 norm no longer counts its
    columns for the channels removed before (masked now, as they read nothing)."""
    params = dict(model.named_parameters())
    new = {name: mask.cpu().clone() for name, mask in masks.items()}
    for name, weight in weights.items():
        new.setdefault(name, torch.ones_like(weight, dtype=torch.bool, device="cpu"))
    kept = SlicesKept(new, params)
    turns, unscored = [], 0
    for index, group in enumerate(groups):
        scores = method.score(group, params, generator)
        if scores is None:
            unscored += 1
            continue
        alive = group.alive(kept)
        order = _removal_order(scores, alive)
        gone = group.size - int(alive.sum())
        turns += [((gone + i + 1) / group.size if method.ranking == "local" else float(scores[channel]), index,
                   channel) for i, channel in enumerate(order)]
    if unscored == len(groups):
        raise UserError("no channel group has what this structured criterion reads (local_bn_scale_structured "
                        "needs batch norms after the convolutions)")
    if unscored:
        log.info("%d of %d channel groups have nothing the score reads (no batch norm): kept whole",
                 unscored, len(groups))
    total = sum(w.numel() for w in weights.values())
    left, target = sum(int(new[n].sum()) for n in weights), total / rate
    closed = set()  # groups whose next channel would overshoot: their later (better) channels stay too
    for _, index, channel in sorted(turns):
        if left <= target:
            break
        if index in closed:
            continue
        slices = groups[index].slices(channel)
        freed = live_entries(new, slices, weights)
        if target - (left - freed) > left - target:  # further off than stopping here
            closed.add(index)
            continue
        drop(new, slices, params)
        left -= freed
    if left > target * 1.02:
        log.warning("structured pruning reaches %.3gx of the weights in scope, not %gx: the layers whose channels "
                    "cannot be removed keep theirs (see prunexplain.pruning.groups)", total / max(left, 1), rate)
    return new


def _removal_order(scores: torch.Tensor, alive: torch.Tensor) -> list[int]:
    """Alive channels worst first, the best one left out: removing the first m keeps what `_keep_top`
    keeps with the rest (ties: the later index leaves first)."""
    ranked = torch.argsort(scores.float().masked_fill(~alive, float("-inf")), descending=True, stable=True)
    return ranked[: int(alive.sum())][1:].flip(0).tolist()
