"""Physical removal: a structurally pruned model becomes a smaller dense one, through Torch-Pruning.

Masks only zero weights, so a masked model is as large and as slow as the dense one. A channel whose
every cut is masked (`groups.py`: the filters that compute it, their biases, the batch norms after them,
the input columns of every layer that reads it) contributes nothing, so Torch-Pruning can take it out of
all those layers at once (`Group.prune`) and the smaller model computes what the masked one computes.
Which channels go is read from the masks alone, never from the weights, so the same masks rebuild the
same smaller architecture: that is how `load_removed` restores a saved one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunexplain.config import ModelSettings, UserError
from prunexplain.models import build_model, model_settings, save_checkpoint
from prunexplain.pruning.groups import SlicesKept, channel_groups, dependency_graph
from prunexplain.pruning.methods import Masks


def remove_pruned(model: nn.Module, masks: Masks, image_size: int = 224) -> nn.Module:
    """A copy of `model` without the channels whose every cut `masks` removed (traced at `image_size`)."""
    return _remove_in_place(copy.deepcopy(model), masks, image_size)


def _remove_in_place(model: nn.Module, masks: Masks, image_size: int) -> nn.Module:
    graph = dependency_graph(model, image_size)
    kept = SlicesKept(masks, dict(model.named_parameters()))
    plan = []  # channels first, pruning after: a pruned group changes the shapes the others are read from
    for group in channel_groups(graph, model):
        removed = (~group.alive(kept)).nonzero().flatten().tolist()
        if 0 < len(removed) < group.size:
            plan.append((model.get_submodule(group.root), removed))
    for root, removed in plan:
        graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, removed).prune()
    return model


def save_removed(
    path: Path, removed: nn.Module, settings: ModelSettings, num_classes: int, masks: Masks, image_size: int,
    meta: dict[str, Any],
) -> Path:
    """The smaller model in the checkpoint contract: its own state dict, plus the masks and image size
    that rebuild its architecture from the dense one (no pickled module)."""
    return save_checkpoint(path, removed, settings, num_classes, masks,
                           {**meta, "removed": {**meta.get("removed", {}), "image_size": image_size}})


def load_removed(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The smaller model of a `save_removed` checkpoint (eval mode) and the checkpoint: the dense
    architecture is built from its settings, the stored masks remove the same channels again, and the
    stored weights fill the result."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "image_size" not in checkpoint.get("meta", {}).get("removed", {}):
        raise UserError(f"{path}: not a checkpoint of a physically pruned model (written by save_removed)")
    dense = build_model(checkpoint["num_classes"], model_settings(checkpoint))
    model = _remove_in_place(dense, checkpoint["masks"], checkpoint["meta"]["removed"]["image_size"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint
