import pytest
import torch

from prunexplain.config import ModelSettings
from prunexplain.models import build_model
from prunexplain.pruning.masks import apply_masks, channel_masks
from prunexplain.pruning.methods import METHODS, compute_masks, prunable_weights
from prunexplain.pruning.shrink import shrink_vgg


def _structured(scope: str, rate: float, batch_norm: bool = True):
    torch.manual_seed(0)
    model = build_model(10, ModelSettings(width=0.125, pool_size=2, batch_norm=batch_norm))
    with torch.no_grad():  # trained-looking BN statistics, so a wrong channel would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.bias.uniform_(-1, 1)
    weights = prunable_weights(model, scope)
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    masks = compute_masks(METHODS["local_l1_structured"], weights, ones, rate, torch.Generator())
    masks.update(channel_masks(model, masks))
    apply_masks(model, masks)
    return model.eval(), masks


@pytest.mark.parametrize(("scope", "batch_norm"), [("conv", True), ("conv", False), ("conv_linear", True)])
def test_shrunk_model_computes_the_same_function_with_fewer_parameters(scope, batch_norm):
    model, masks = _structured(scope, 4, batch_norm)
    small = shrink_vgg(model, masks).eval()
    x = torch.rand(4, 3, 64, 64)
    assert torch.allclose(small(x), model(x), atol=1e-5)
    dense_conv = sum(p.numel() for p in model.features.parameters())
    small_conv = sum(p.numel() for p in small.features.parameters())
    assert small_conv < dense_conv / 3  # about 1/4 of the filters, and of their inputs
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert [m.out_channels for m in small.features if isinstance(m, torch.nn.Conv2d)][:2] == [2, 2]


def test_channel_masks_cover_bias_and_batch_norm_of_removed_filters():
    model, masks = _structured("conv", 8)
    dead = ~masks["features.0.weight"].flatten(1).any(1)
    assert dead.sum() == 7
    assert (model.features[0].bias[dead] == 0).all() and (model.features[1].weight[dead] == 0).all()
    assert (model.features[1].bias[dead] == 0).all() and (model.features[1].bias[~dead] != 0).all()
