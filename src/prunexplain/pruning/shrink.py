"""Physically removing pruned filters: a structurally pruned VGG becomes a smaller dense VGG.

Masks only zero weights, so a masked model is as large and as slow as the dense one. When a
structured method removed whole filters (and, through `channel_masks`, their bias and batch-norm
affine parameters, so the channel is exactly zero), those channels can be cut out of the
convolution, its batch norm, the next convolution's inputs and the first classifier layer's
inputs: the result computes the same function with fewer parameters and less time.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunexplain.pruning.methods import Masks


def _alive(masks: Masks, key: str, size: int) -> torch.Tensor:
    """Indices of the rows (filters, neurons) of `key` with any weight left."""
    if key not in masks:
        return torch.arange(size)
    return masks[key].flatten(1).any(1).nonzero().flatten()


def _conv(layer: nn.Conv2d, rows: torch.Tensor, cols: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(len(cols), len(rows), layer.kernel_size, layer.stride, layer.padding, bias=layer.bias is not None)
    new.weight.data = layer.weight.data[rows][:, cols].clone()
    if layer.bias is not None:
        new.bias.data = layer.bias.data[rows].clone()
    return new


def _linear(layer: nn.Linear, rows: torch.Tensor, cols: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(cols), len(rows), bias=layer.bias is not None)
    new.weight.data = layer.weight.data[rows][:, cols].clone()
    if layer.bias is not None:
        new.bias.data = layer.bias.data[rows].clone()
    return new


def _batch_norm(layer: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), layer.eps, layer.momentum)
    for name in ("weight", "bias"):
        getattr(new, name).data = getattr(layer, name).data[keep].clone()
    new.running_mean, new.running_var = layer.running_mean[keep].clone(), layer.running_var[keep].clone()
    new.num_batches_tracked = layer.num_batches_tracked.clone()
    return new


def shrink_vgg(model: nn.Module, masks: Masks) -> nn.Module:
    """A copy of a (torchvision-layout) VGG without the filters and neurons the masks removed."""
    model = copy.deepcopy(model).cpu()
    keep = torch.arange(3)  # input channels still used by the next layer
    for index, layer in enumerate(model.features):
        if isinstance(layer, nn.Conv2d):
            rows = _alive(masks, f"features.{index}.weight", layer.out_channels)
            model.features[index], keep = _conv(layer, rows, keep), rows
        elif isinstance(layer, nn.BatchNorm2d):
            model.features[index] = _batch_norm(layer, keep)
    cells = model.avgpool.output_size
    cells = cells * cells if isinstance(cells, int) else cells[0] * cells[1]
    keep = (keep[:, None] * cells + torch.arange(cells)).flatten()  # flatten() is channel-major
    linears = [i for i, layer in enumerate(model.classifier) if isinstance(layer, nn.Linear)]
    for index in linears:
        layer = model.classifier[index]
        last = index == linears[-1]
        rows = (torch.arange(layer.out_features) if last
                else _alive(masks, f"classifier.{index}.weight", layer.out_features))
        model.classifier[index], keep = _linear(layer, rows, keep), rows
    return model
