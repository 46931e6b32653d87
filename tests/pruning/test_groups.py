"""Structured (channel) pruning on any architecture: the groups Torch-Pruning finds, the share each
keeps, the layers it never touches, and why LayerNorm-coupled channels stay whole."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import LayerNorm2d

from prunexplain.config import UserError
from prunexplain.pruning.groups import SlicesKept, channel_groups, dependency_graph
from prunexplain.pruning.masks import apply_masks
from prunexplain.pruning.methods import METHODS, prunable_groups, prunable_weights, structured_masks
from prunexplain.pruning.remove import remove_pruned
from tests.pruning.nets import structurally_pruned, torchvision_model


@pytest.mark.parametrize(("arch", "scope"), [("resnet50", "conv"), ("efficientnet_b0", "conv"),
                                             ("densenet121", "conv"), ("convnext_tiny", "conv_linear"),
                                             ("resnext50_32x4d", "conv")])
def test_masked_model_computes_what_the_smaller_one_computes(arch, scope):
    """Residual sums, squeeze-excitation products, depthwise convolutions, concatenations; grouped
    convolutions (ResNeXt) keep their channels, the residual streams around them are pruned."""
    model = torchvision_model(arch)
    masks = structurally_pruned(model, (2, 4), scope=scope)
    small = remove_pruned(model, masks, 32)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), small(x)
    assert (got - expected).abs().max() < 1e-5 * max(1.0, expected.abs().max().item())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters()) / 3


def _scope_rate(masks, weights) -> float:
    return sum(w.numel() for w in weights.values()) / sum(int(masks[name].sum()) for name in weights)


def test_groups_keep_the_same_share_and_land_on_the_weight_rate():
    model = torchvision_model("resnet18")
    groups, weights = prunable_groups(model, 32, "conv"), prunable_weights(model, "conv")
    params = dict(model.named_parameters())
    masks_2 = structurally_pruned(model, (2,))
    masks_8 = structured_masks(METHODS["local_l1_structured"], model, weights, masks_2, 8, torch.Generator(), groups)
    assert _scope_rate(masks_2, weights) == pytest.approx(2, rel=0.02)  # rows and columns counted as they go
    assert _scope_rate(masks_8, weights) == pytest.approx(8, rel=0.02)
    for masks in (masks_2, masks_8):  # one share for all: a group is at most one channel off it
        shares = [float(g.alive(SlicesKept(masks, params)).sum()) / g.size for g in groups]
        assert max(shares) - min(shares) <= 1 / min(g.size for g in groups) + 1e-9
    for group in groups:
        alive_2, alive_8 = group.alive(SlicesKept(masks_2, params)), group.alive(SlicesKept(masks_8, params))
        assert not (alive_8 & ~alive_2).any()  # removed channels stay removed; 8x ranks the ones 2x kept
    assert masks_8["fc.weight"].any(1).all() and "fc.bias" not in masks_8  # inputs go, the 10 classes stay
    assert all(not (masks_8[k] & ~masks_2[k]).any() for k in masks_2)
    # the stem, both blocks of layer1 and their batch norms leave together: one residual stream
    stem = next(g for g in groups if g.root == "conv1")
    assert {"conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.1.conv2", "layer1.0.conv1"} <= stem.layers


def test_convnext_keeps_its_layernorm_coupled_channels_whole():
    model = torchvision.models.convnext_tiny(num_classes=10)
    with pytest.raises(UserError, match=r"prune.scope='conv': no channel of this model can be removed"):
        prunable_groups(model, 32, "conv")
    groups = prunable_groups(model, 32, "conv_linear")
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    assert len(groups) == 18  # one hidden MLP layer per block: pwconv1's outputs, pwconv2's inputs
    assert all(g.producers == (g.root,) and g.root.endswith("block.3") for g in groups)
    assert not any(g.layers & norms for g in groups)


class _ChannelNorm(nn.Module):
    def __init__(self, norm: nn.Module, channels: int = 8) -> None:
        super().__init__()
        self.conv1, self.norm, self.conv2 = nn.Conv2d(3, channels, 3), norm, nn.Conv2d(channels, 4, 1)

    def forward(self, x):
        return self.conv2(self.norm(self.conv1(x))).mean((2, 3))


def test_why_normalisation_over_channels_is_never_masked():
    """Zeroing half the channels before a LayerNorm over channels is not removing them: the zeros
    still enter the mean and variance of the others. So such a group gets no masks at all."""
    torch.manual_seed(0)
    model = _ChannelNorm(LayerNorm2d(8)).eval()
    small = _ChannelNorm(LayerNorm2d(4), channels=4).eval()
    keep = torch.arange(4)
    with torch.no_grad():
        small.conv1.weight.copy_(model.conv1.weight[keep])
        small.conv1.bias.copy_(model.conv1.bias[keep])
        small.norm.weight.copy_(model.norm.weight[keep])
        small.norm.bias.copy_(model.norm.bias[keep])
        small.conv2.weight.copy_(model.conv2.weight[:, keep])
        small.conv2.bias.copy_(model.conv2.bias)
        for param in (model.conv1.weight, model.conv1.bias, model.norm.weight, model.norm.bias):
            param[4:] = 0
        model.conv2.weight[:, 4:] = 0
        x = torch.rand(2, 3, 8, 8)
        assert (model(x) - small(x)).abs().max() > 1e-2
    assert channel_groups(dependency_graph(model, 32), model) == []
    grouped = _ChannelNorm(nn.BatchNorm2d(8)).eval()
    grouped.conv2 = nn.Conv2d(8, 4, 1, groups=2)  # a removal would shift channels between its groups
    assert channel_groups(dependency_graph(grouped, 32), grouped) == []


def test_tracing_leaves_the_model_as_it_was():
    """Torch-Pruning traces autograd in eval mode: a frozen part and training mode come back."""
    model = torchvision_model("resnet18").train()
    model.conv1.requires_grad_(False)
    prunable_groups(model, 32, "conv")
    assert model.training and not model.conv1.weight.requires_grad and model.fc.weight.requires_grad


def test_random_structured_draws_one_score_per_channel_from_the_generator():
    model = torchvision_model("mobilenet_v3_small")
    groups, weights = prunable_groups(model, 32, "conv"), prunable_weights(model, "conv")
    a, b, again = (structured_masks(METHODS["local_random_structured"], model, weights, {}, 4,
                                    torch.Generator().manual_seed(seed), groups) for seed in (0, 1, 0))
    assert all(torch.equal(a[k], again[k]) for k in a) and any(not torch.equal(a[k], b[k]) for k in a)
    assert _scope_rate(a, weights) == pytest.approx(4, rel=0.02) == _scope_rate(b, weights)
    apply_masks(model, a)
    depthwise = model.features[1].block[0][0].weight.flatten(1).any(1).sum()
    assert depthwise == a["features.1.block.0.0.weight"].flatten(1).any(1).sum() < 16  # its channels left with it
