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
