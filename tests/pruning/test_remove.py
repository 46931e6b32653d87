"""Physical removal through Torch-Pruning: the smaller model computes what the masked one computes,
costs less, and its checkpoint rebuilds it."""

import pytest
import torch
import torch_pruning as tp

from prunexplain.config import ModelSettings, UserError
from prunexplain.models import build_model, save_checkpoint
from prunexplain.pruning.cost import model_cost
from prunexplain.pruning.masks import apply_masks
from prunexplain.pruning.methods import METHODS, compute_masks, prunable_weights
from prunexplain.pruning.remove import load_removed, remove_pruned, save_removed
from tests.pruning.nets import structurally_pruned, torchvision_model, trained_looking

SIZE = 64


def _max_difference(model, small, size: int = SIZE) -> float:
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (model(x) - small(x)).abs().max().item()


def _macs_and_params(model, size: int = SIZE) -> tuple[float, int]:
    return tp.utils.count_ops_and_params(model, torch.zeros(1, 3, size, size))


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_removed_model_computes_what_the_masked_one_computes_with_less(arch):
    model = torchvision_model(arch)
    masks = structurally_pruned(model, (2, 8), size=SIZE)
    small = remove_pruned(model, masks, SIZE)
    assert _max_difference(model, small) < 1e-5
    (macs, params), (dense_macs, dense_params) = _macs_and_params(small), _macs_and_params(model)
    assert _in_scope(small) == _unmasked(masks, model) == pytest.approx(_in_scope(model) / 8, rel=0.02)
    assert macs < dense_macs / 4 and params < dense_params / 4
    assert sum(p.numel() for p in model.parameters()) == dense_params  # the masked model kept its shapes


def _in_scope(model, scope: str = "conv") -> int:
    return sum(w.numel() for w in prunable_weights(model, scope).values())


def _unmasked(masks, model, scope: str = "conv") -> int:
    """What the masks leave of the weights in scope: exactly what the smaller model holds."""
    return sum(int(masks[name].sum()) for name in prunable_weights(model, scope))


def _vgg(batch_norm: bool):
    torch.manual_seed(0)
    return trained_looking(build_model(10, ModelSettings(width=0.125, pool_size=2, batch_norm=batch_norm)))


@pytest.mark.parametrize(("scope", "batch_norm"), [("conv", True), ("conv", False), ("conv_linear", True)])
def test_removed_vgg_is_the_smaller_vgg(scope, batch_norm):
    model = _vgg(batch_norm)
    masks = structurally_pruned(model, (4,), size=SIZE, scope=scope)
    small = remove_pruned(model, masks, SIZE)
    assert _max_difference(model, small) < 1e-5
    assert _in_scope(small, scope) == _unmasked(masks, model, scope) == pytest.approx(_in_scope(model, scope) / 4,
                                                                                     rel=0.02)
    convs = [(name, m.out_channels) for name, m in model.features.named_children() if isinstance(m, torch.nn.Conv2d)]
    widths = [m.out_channels for m in small.features if isinstance(m, torch.nn.Conv2d)]
    assert widths == [int(masks[f"features.{name}.weight"].flatten(1).any(1).sum()) for name, _ in convs]
    assert all(width < dense for width, (_, dense) in zip(widths, convs))
    linears = [(m.in_features, m.out_features) for m in small.classifier if isinstance(m, torch.nn.Linear)]
    assert linears[0][0] == widths[-1] * 2 * 2 and linears[-1][1] == 10  # the last conv's cells; the 10 classes
    hidden = [out for _, out in linears[:-1]]
    assert hidden == [512, 512] if scope == "conv" else max(hidden) < 512


def test_unstructured_masks_remove_nothing():
    model = torchvision_model("resnet18")
    weights = prunable_weights(model, "conv")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    apply_masks(model, compute_masks(METHODS["local_magnitude_unstructured"], weights, ones, 8, torch.Generator()))
    masks = {k: w != 0 for k, w in weights.items()}
    small = remove_pruned(model, masks, SIZE)
    assert [p.shape for p in small.parameters()] == [p.shape for p in model.parameters()]


def test_the_removed_checkpoint_rebuilds_the_smaller_model(tmp_path):
    model = _vgg(batch_norm=True)
    masks = structurally_pruned(model, (2, 4), size=SIZE)
    small = remove_pruned(model, masks, SIZE)
    settings = ModelSettings(width=0.125, pool_size=2, batch_norm=True)
    path = save_removed(tmp_path / "model_removed.pt", small, settings, 10, masks, SIZE, {"note": "kept"})
    checkpoint = torch.load(path, weights_only=True)  # tensors and plain values only: no pickled module
    assert set(checkpoint) == {"arch", "num_classes", "state_dict", "masks", "meta"}
    assert checkpoint["meta"]["removed"]["image_size"] == SIZE and checkpoint["meta"]["note"] == "kept"
    loaded, _ = load_removed(path)
    assert not loaded.training and _max_difference(loaded, small) == 0
    assert _max_difference(loaded, model) < 1e-5


def test_cost_is_measured_on_the_model_as_it_runs():
    model = torchvision_model("resnet18")
    small = remove_pruned(model, structurally_pruned(model, (4,), size=SIZE), SIZE)
    dense, pruned = model_cost(model, SIZE), model_cost(small, SIZE)
    assert (dense["macs"], dense["params"]) == tuple(int(v) for v in _macs_and_params(model))
    assert (pruned["macs"], pruned["params"]) == tuple(int(v) for v in _macs_and_params(small))
    assert pruned["macs"] < dense["macs"] / 3 and pruned["params"] < dense["params"] / 3  # 4x of the conv weights
    assert 0 < pruned["latency_ms"] and 0 < dense["latency_ms"]


def test_only_a_removed_checkpoint_loads_as_one(tmp_path):
    settings = ModelSettings(width=0.125, pool_size=2, batch_norm=True)
    masked = save_checkpoint(tmp_path / "model.pt", _vgg(batch_norm=True), settings, 10)
    with pytest.raises(UserError, match="not a checkpoint of a physically pruned model"):
        load_removed(masked)
    with pytest.raises(UserError, match="no such checkpoint"):
        load_removed(tmp_path / "model_removed.pt")
