"""Channel groups of any CNN, found by Torch-Pruning's dependency graph, as slices of parameters.

Removing one output channel of a convolution touches more than that convolution: its bias, the batch
norm after it, the input columns of every layer that reads it and, through residual additions,
depthwise convolutions, squeeze-excitation products and concatenations, other layers whose channel must
leave with it. Torch-Pruning traces the model once and returns these couplings as groups
(`DependencyGraph.get_all_groups`). A `ChannelGroup` records, for every parameter a group touches, which
slices belong to which of its channels (its `cuts`): zeroing every cut of a channel is the masked twin
of removing it, which `remove.py` does through the same groups.

The masked model computes exactly what the smaller one computes when a zeroed channel reaches no other
channel: true for convolutions and linear layers (the readers' input columns are zeroed too), batch
norm, element-wise activations, additions, products and concatenations. It is false for normalisation
over channels (LayerNorm, as in ConvNeXt, and GroupNorm): the zeroed channel still enters the mean and
variance the other channels are normalised with, so masks cannot stand for the removal, and such groups
are left whole. So are grouped (not depthwise) convolutions, whose groups a removal would shift, layers
Torch-Pruning cannot cut per channel, and groups that reach the model's output (the class logits).
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

PER_CHANNEL = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU)


@dataclass(frozen=True, eq=False)  # tensors inside: compared by identity
class Cut:
    """The slices of one parameter that belong to a group: index `positions[i]` along `dim` belongs to
    channel `channels[i]` (a concatenation moves a channel, a flatten repeats it once per cell)."""

    name: str
    dim: int
    positions: torch.Tensor
    channels: torch.Tensor
    filters: bool  # a conv or linear weight whose rows compute the channel: what a score ranks


Slices = list[tuple[Cut, torch.Tensor]]  # one channel's positions in each cut of its group


class SlicesKept:
    """Which slices of a parameter along a dimension have any entry left in `masks` (a parameter without
    a mask is whole). Computed once per parameter and shared by the groups that cut it: a DenseNet
    layer's input columns are cut by every group concatenated before it."""

    def __init__(self, masks: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> None:
        self.masks, self.params = masks, params
        self.cached: dict[tuple[str, int], torch.Tensor] = {}

    def __call__(self, name: str, dim: int) -> torch.Tensor:
        if (name, dim) not in self.cached:
            mask = self.masks.get(name)
            size = self.params[name].shape[dim]
            self.cached[name, dim] = (torch.ones(size, dtype=torch.bool) if mask is None
                                      else mask.cpu().movedim(dim, 0).reshape(size, -1).any(1))
        return self.cached[name, dim]


@dataclass(frozen=True, eq=False)  # tensors inside: compared by identity
class ChannelGroup:
    """Channels that leave together, named by the layer Torch-Pruning roots the group at."""

    root: str
    size: int
    cuts: tuple[Cut, ...]
    layers: frozenset[str]  # every module with a parameter the group cuts
    producers: tuple[str, ...]  # the conv and linear layers whose outputs are the channels
    source: tp.dependency.Group | None = None  # Torch-Pruning's group, which its importances score

    def filters(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[size, k]`: each channel's row holds every weight of every filter that computes it (one
        filter in a VGG; the convolutions of a residual sum, or a depthwise one, elsewhere)."""
        parts = []
        for cut in self.cuts:
            if cut.filters:
                weights = params[cut.name].detach().cpu().movedim(cut.dim, 0)[cut.positions].flatten(1)
                rows = torch.zeros(self.size, weights.shape[1], dtype=weights.dtype)
                rows[cut.channels] = weights
                parts.append(rows)
        return torch.cat(parts, 1)

    def alive(self, kept: SlicesKept) -> torch.Tensor:
        """Channels with any entry of any cut left."""
        left = torch.zeros(self.size)
        for cut in self.cuts:
            left.index_add_(0, cut.channels, kept(cut.name, cut.dim)[cut.positions].float())
        return left > 0

    def slices(self, channel: int) -> Slices:
        """Where one channel sits in each parameter the group cuts: each cut and the positions it owns."""
        return [(cut, cut.positions[cut.channels == channel]) for cut in self.cuts]


def live_entries(masks: dict[str, torch.Tensor], slices: Slices, counted: Container[str]) -> int:
    """How many entries of the `counted` parameters masking a channel's `slices` would newly mask."""
    return sum(int(masks[cut.name].movedim(cut.dim, 0)[positions].sum())
               for cut, positions in slices if cut.name in counted)


def drop(masks: dict[str, torch.Tensor], slices: Slices, params: dict[str, torch.Tensor]) -> None:
    """Mask a channel's `slices`, in place (missing masks start whole)."""
    for cut, positions in slices:
        mask = masks.setdefault(cut.name, torch.ones_like(params[cut.name], dtype=torch.bool, device="cpu"))
        mask.movedim(cut.dim, 0)[positions] = False


@contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """Torch-Pruning reads the graph from autograd: gradients on, every parameter requiring them (a
    frozen part too); its trace also switches to eval mode. All restored afterwards."""
    training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for param in frozen:
            param.requires_grad_(False)
        model.train(training)


def dependency_graph(model: nn.Module, image_size: int) -> tp.DependencyGraph:
    """Torch-Pruning's graph of the model, traced with one `image_size` image on the model's device."""
    device = next(model.parameters()).device
    with _traceable(model):
        example = torch.zeros(1, 3, image_size, image_size, device=device)
        return tp.DependencyGraph().build_dependency(model, example, verbose=False)


@dataclass(frozen=True)
class _Names:
    modules: dict[nn.Module, str]
    params: dict[int, str]  # by id: tensors compare by value


def channel_groups(graph: tp.DependencyGraph, model: nn.Module) -> list[ChannelGroup]:
    """Every group whose removal masks can stand for (see the module's docstring), ordered by their
    first producing layer in the model, so random scores draw in a fixed order."""
    order = {module: i for i, (_, module) in enumerate(model.named_modules())}
    names = _Names({m: n for n, m in model.named_modules()}, {id(p): n for n, p in model.named_parameters()})
    final = {node.module for node in graph.module2node.values() if not node.outputs}
    found = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        converted = _convert(graph, group, names, final)
        if converted is not None:
            found.append((min(order[model.get_submodule(p)] for p in converted.producers), converted))
    return [group for _, group in sorted(found, key=lambda pair: pair[0])]


def _convert(graph: tp.DependencyGraph, group, names: _Names, final: set) -> ChannelGroup | None:
    cuts: list[Cut] = []
    for item in group:
        target, outputs = item.dep.target, graph.is_out_channel_pruning_fn(item.dep.handler)
        if outputs and target.module in final:
            return None  # the class logits
        found = _cuts(target, outputs, names, torch.tensor(item.idxs), torch.tensor(item.root_idxs))
        if found is None:
            return None
        cuts.extend(found)
    root = group[0].dep.target.module
    producers = tuple(dict.fromkeys(cut.name.rpartition(".")[0] for cut in cuts if cut.filters))
    layers = frozenset(cut.name.rpartition(".")[0] for cut in cuts)
    return ChannelGroup(names.modules[root], len(group[0].idxs), tuple(cuts), layers, producers, group)


def _cuts(target, outputs: bool, names: _Names, positions: torch.Tensor, channels: torch.Tensor) -> list[Cut] | None:
    """The cuts Torch-Pruning's handler makes in one layer; None where masks cannot stand for them."""
    module = target.module
    if target.type == tp.ops.OPTYPE.PARAMETER:  # a bare parameter, e.g. ConvNeXt's layer scale
        return [Cut(names.params[id(module)], target.pruning_dim % module.dim(), positions, channels, False)]
    own = dict(module.named_parameters(recurse=False))
    if not own or (isinstance(module, nn.PReLU) and module.num_parameters == 1):
        return []  # nothing to cut: element-wise ops, concatenations, reshapes, a shared PReLU slope
    prefix = names.modules[module]
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups == module.out_channels == module.in_channels
        if module.groups > 1 and not depthwise:
            return None
        rows = 1 if module.transposed else 0
        if not (outputs or depthwise):
            return [Cut(f"{prefix}.weight", 1 - rows, positions, channels, False)]
        return [Cut(f"{prefix}.{key}", rows if key == "weight" else 0, positions, channels, key == "weight")
                for key in own]
    if isinstance(module, nn.Linear):
        if not outputs:
            return [Cut(f"{prefix}.weight", 1, positions, channels, False)]
        return [Cut(f"{prefix}.{key}", 0, positions, channels, key == "weight") for key in own]
    if isinstance(module, PER_CHANNEL):
        return [Cut(f"{prefix}.{key}", 0, positions, channels, False) for key in own]
    return None  # LayerNorm, GroupNorm and layers Torch-Pruning cuts in other ways
