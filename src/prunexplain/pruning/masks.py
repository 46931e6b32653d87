"""Applying masks and measuring compression: kept apart from how methods choose the masks.

Masks are keyed by parameter name (`features.0.weight`), so one function applies any of them.
"""

from __future__ import annotations

import torch
from torch import nn

from prunexplain.pruning.methods import Masks


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero every masked-out entry of the model's parameters, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))


def channel_masks(model: nn.Module, masks: Masks) -> Masks:
    """Masks for the rest of each removed filter's channel: the layer's bias and the affine parameters
    of the batch norm right after it. With them a removed channel outputs exactly zero, so the
    filter can also be taken out of the network (`shrink.py`) without changing what it computes."""
    modules = list(model.named_modules())
    extra: Masks = {}
    for (name, module), (next_name, following) in zip(modules, modules[1:] + [("", None)]):
        key = f"{name}.weight"
        if key not in masks or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        alive = masks[key].flatten(1).any(1)
        if module.bias is not None:
            extra[f"{name}.bias"] = alive
        if isinstance(following, nn.BatchNorm2d):
            extra[f"{next_name}.weight"] = extra[f"{next_name}.bias"] = alive
    return extra


def count_nonzero(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """Compression measured from the tensors, never assumed: all / non-zero, in scope and overall."""
    scope_all = sum(w.numel() for w in weights.values())
    scope_nonzero = sum(int(w.count_nonzero()) for w in weights.values())
    model_all = sum(p.numel() for p in model.parameters())
    model_nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    return {
        "measured_rate_scope": scope_all / max(scope_nonzero, 1),
        "measured_rate_model": model_all / max(model_nonzero, 1),
        "nonzero_params": model_nonzero,
    }
