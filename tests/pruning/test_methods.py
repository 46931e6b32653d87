import pytest
import torch
from torch.nn.utils import prune

from prunexplain.config import ModelSettings, UserError
from prunexplain.models import build_model
from prunexplain.pruning.masks import apply_masks, count_nonzero
from prunexplain.pruning.methods import METHODS, compute_masks, get_method, prunable_weights


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(10, ModelSettings(width=0.125, pool_size=1))


def _run_schedule(name: str, rates, seed: int = 0, scope: str = "conv"):
    model = _model()
    weights = prunable_weights(model, scope)
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    measured = []
    for step, rate in enumerate(rates):
        masks = compute_masks(METHODS[name], weights, masks, rate, torch.Generator().manual_seed(seed * 100 + step))
        apply_masks(model, masks)
        measured.append(count_nonzero(model, weights)["measured_rate_scope"])
    return model, masks, measured


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("rates", [(2, 4, 8, 16, 32, 64), (2, 8, 32), (3.5,)])
def test_every_method_lands_on_every_rate(name, rates):
    _, masks, measured = _run_schedule(name, rates)
    # to rounding: one unit (a weight, or a filter of the smallest layer) per layer at most
    tolerance = 0.002 if METHODS[name].unit == "weight" else 0.2
    for rate, got in zip(rates, measured):
        assert got == pytest.approx(rate, rel=tolerance)


def test_masks_only_shrink_and_structured_masks_remove_whole_filters():
    _, masks_a, _ = _run_schedule("local_l1_structured", (2,))
    _, masks_b, _ = _run_schedule("local_l1_structured", (2, 4))
    for name, mask in masks_b.items():
        assert not (mask & ~masks_a[name]).any()
        per_filter = mask.flatten(1)
        assert (per_filter.all(1) | ~per_filter.any(1)).all()


def test_local_methods_prune_every_layer_by_the_same_share():
    model, _, _ = _run_schedule("local_magnitude_unstructured", (2, 8))
    for weight in prunable_weights(model, "conv").values():
        assert weight.numel() / weight.count_nonzero() == pytest.approx(8, rel=0.05)


def test_linear_layers_join_the_scope_on_request():
    model, masks, measured = _run_schedule("local_magnitude_unstructured", (4,), scope="conv_linear")
    assert "classifier.0.weight" in masks and measured[0] == pytest.approx(4, rel=1e-3)
    assert model.classifier[0].weight.count_nonzero() == round(model.classifier[0].weight.numel() / 4)


def test_random_methods_are_reproducible_from_their_seed():
    for name in ("local_random_unstructured", "local_random_structured"):
        _, a, _ = _run_schedule(name, (2, 4), seed=3)
        _, b, _ = _run_schedule(name, (2, 4), seed=3)
        _, c, _ = _run_schedule(name, (2, 4), seed=4)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_magnitude_masks_match_torch_prune():
    """One step of our magnitude and L1-filter methods equals torch.nn.utils.prune's masks."""
    model = _model()
    weights = prunable_weights(model, "conv")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    generator = torch.Generator().manual_seed(0)
    ours = compute_masks(METHODS["local_magnitude_unstructured"], weights, ones, 4, generator)
    filters = compute_masks(METHODS["local_l1_structured"], weights, ones, 4, generator)
    conv = model.features[0]
    reference = _model()
    prune.l1_unstructured(reference.features[0], "weight", amount=conv.weight.numel() - round(conv.weight.numel() / 4))
    assert torch.equal(ours["features.0.weight"], reference.features[0].weight_mask.bool())
    reference = _model()
    layer = reference.features[3]  # 8 filters: 6 pruned
    prune.ln_structured(layer, "weight", amount=6, n=1, dim=0)
    assert torch.equal(filters["features.3.weight"], layer.weight_mask.bool())


def test_global_magnitude_ranks_all_layers_together():
    model = _model()
    weights = prunable_weights(model, "conv")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    masks = compute_masks(METHODS["global_magnitude_unstructured"], weights, ones, 8, torch.Generator())
    kept = torch.cat([w.detach().abs()[masks[k]] for k, w in weights.items()])
    dropped = torch.cat([w.detach().abs()[~masks[k]] for k, w in weights.items()])
    assert kept.min() >= dropped.max()
    shares = [m.float().mean().item() for m in masks.values()]
    assert max(shares) - min(shares) > 0.05  # layers differ, unlike local pruning


def test_unknown_method_is_named():
    with pytest.raises(UserError, match=r"unknown method 'l0' \(known: local_magnitude_unstructured"):
        get_method("l0")
