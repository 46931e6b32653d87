"""Models for the pruning tests: built directly from torchvision, made to look trained."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from prunexplain.pruning.masks import apply_masks
from prunexplain.pruning.methods import METHODS, Masks, prunable_groups, prunable_weights, structured_masks


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and shifts, and ConvNeXt's layer scales at 1 instead of 1e-6, so a
    wrongly removed channel shows in the outputs; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator) * 2 - 1)
        for name, param in model.named_parameters():
            if name.endswith("layer_scale"):
                param.fill_(1.0)
    return model.eval()


def torchvision_model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return trained_looking(torchvision.models.get_model(arch, num_classes=10))


def structurally_pruned(
    model: nn.Module, rates=(2, 4), size: int = 32, scope: str = "conv", method: str = "local_l1_structured"
) -> Masks:
    """The schedule's steps of a structured method, masks applied after each; returns the masks."""
    groups, weights = prunable_groups(model, size, scope), prunable_weights(model, scope)
    masks: Masks = {}
    for step, rate in enumerate(rates):
        generator = torch.Generator().manual_seed(step)
        masks = structured_masks(METHODS[method], model, weights, masks, rate, generator, groups)
        apply_masks(model, masks)
    return masks
