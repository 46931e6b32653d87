import contextlib
import copy
import functools

import pytest
import torch
import torchvision
from torch.nn.utils import prune

from prunexplain.config import ModelSettings, UserError
from prunexplain.models import build_model
from prunexplain.pruning.calibration import calibration_gradients
from prunexplain.pruning.masks import apply_masks, count_nonzero
from prunexplain.pruning.methods import (
    METHODS,
    compute_masks,
    get_method,
    prunable_groups,
    prunable_weights,
    structured_masks,
)

SIZE = 32


@functools.cache
def _built(seed: int, batch_norm: bool):
    torch.manual_seed(seed)
    return build_model(10, ModelSettings(width=0.125, pool_size=1, batch_norm=batch_norm))


def _model(seed: int = 0, batch_norm: bool = False):
    """A fresh copy of the compact VGG-16 (built once: torchvision draws the full VGG head first)."""
    return copy.deepcopy(_built(seed, batch_norm))


def _step(model, name, masks, rate, seed, scope="conv", exclude=()):
    """One pruning step of any method, as the schedule takes it (gradients of a random batch for the
    criteria that read them)."""
    generator, method = torch.Generator().manual_seed(seed), METHODS[name]
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    with calibration_gradients(model, images, torch.arange(4)) if method.gradients else contextlib.nullcontext():
        weights = prunable_weights(model, scope, exclude)
        if method.unit == "filter":
            return structured_masks(method, model, weights, masks, rate, generator,
                                    prunable_groups(model, SIZE, scope, exclude))
        return compute_masks(method, weights, masks, rate, generator)


def _run_schedule(name: str, rates, seed: int = 0, scope: str = "conv", model=None, exclude=()):
    model = model if model is not None else _model()
    weights = prunable_weights(model, scope, exclude)
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    measured = []
    for step, rate in enumerate(rates):
        masks = _step(model, name, masks, rate, seed * 100 + step, scope, exclude)
        apply_masks(model, masks)
        measured.append(count_nonzero(model, weights)["measured_rate_scope"])
    return model, masks, measured


def _alive_filters(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(1).any(1)


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.unit == "weight" and m.ranking != "blocks"])
@pytest.mark.parametrize("rates", [(2, 4, 8, 16, 32, 64), (2, 8, 32), (3.5,)])
def test_every_weight_method_lands_on_every_rate(name, rates):
    _, _, measured = _run_schedule(name, rates)
    for rate, got in zip(rates, measured):
        assert got == pytest.approx(rate, rel=0.002)  # to rounding: one weight per layer at most


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.unit == "filter"])
@pytest.mark.parametrize("rates", [(2, 4, 8, 16, 32, 64), (2, 8, 32), (3.5,)])
def test_every_filter_method_lands_on_every_rate_with_one_share_of_each_layers_filters(name, rates):
    """The weight rate of DESIGN.md, rows and input columns counted: 2 % at most (one channel's weights).
    Local methods keep one share of each layer's filters; global ones adapt it per layer."""
    model = _model(batch_norm=True)
    convs = {f"features.{i}.weight": m.out_channels
             for i, m in enumerate(model.features) if isinstance(m, torch.nn.Conv2d)}
    _, masks, measured = _run_schedule(name, rates, model=model)
    for rate, got in zip(rates, measured):
        assert got == pytest.approx(rate, rel=0.02)
    shares = [float(_alive_filters(masks[key]).sum()) / size for key, size in convs.items()]
    if METHODS[name].ranking == "local":
        assert max(shares) - min(shares) <= 1 / min(convs.values()) + 1e-9 and len(convs) == 13
    else:
        assert min(shares) > 0


def test_masks_only_shrink_and_structured_masks_remove_whole_filters():
    _, masks_a, _ = _run_schedule("local_l1_structured", (2,))
    _, masks_b, _ = _run_schedule("local_l1_structured", (2, 4))
    for name, mask in masks_b.items():
        assert not (mask & ~masks_a[name]).any()
        if mask.dim() == 4:  # a filter is whole or gone, and so is each input channel of the kept ones
            rows, columns = mask.flatten(1).any(1), mask.transpose(0, 1).flatten(1).any(1)
            assert torch.equal(mask, (rows[:, None] & columns[None, :])[..., None, None].expand_as(mask))


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("rate", [2, 8])
def test_l1_structured_chooses_the_filters_of_per_layer_ln_structured(rate, batch_norm):
    """Which filters local_l1_structured keeps in each conv of the VGG-16: those that
    torch.nn.utils.prune.ln_structured (n=1, dim 0) keeps when asked to keep as many."""
    ours = _run_schedule("local_l1_structured", (rate,), model=_model(batch_norm=batch_norm))[1]
    reference = _model(batch_norm=batch_norm)
    for index, layer in enumerate(reference.features):
        if isinstance(layer, torch.nn.Conv2d):
            alive = _alive_filters(ours[f"features.{index}.weight"])  # how many: the rate's share (above)
            prune.ln_structured(layer, "weight", amount=layer.out_channels - int(alive.sum()), n=1, dim=0)
            assert torch.equal(alive, _alive_filters(layer.weight_mask))


def test_local_methods_prune_every_layer_by_the_same_share():
    model, _, _ = _run_schedule("local_magnitude_unstructured", (2, 8))
    for weight in prunable_weights(model, "conv").values():
        assert weight.numel() / weight.count_nonzero() == pytest.approx(8, rel=0.05)


def test_linear_layers_join_the_scope_on_request():
    model, masks, measured = _run_schedule("local_magnitude_unstructured", (4,), scope="conv_linear")
    assert "classifier.0.weight" in masks and measured[0] == pytest.approx(4, rel=1e-3)
    assert model.classifier[0].weight.count_nonzero() == round(model.classifier[0].weight.numel() / 4)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("name", ["local_magnitude_unstructured", "global_magnitude_unstructured"])
def test_weight_methods_land_exactly_on_any_architecture(arch, name):
    """Every Conv2d counts, depthwise and 1x1 included: the measured rate is the scheduled one."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=10)
    weights = prunable_weights(model, "conv")
    assert len(weights) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    _, _, measured = _run_schedule(name, (2, 8), model=model)
    assert measured == pytest.approx([2, 8], rel=1e-3)


def test_excluded_layers_keep_every_weight_and_the_rest_lands_on_the_rate():
    model, masks, measured = _run_schedule("local_magnitude_unstructured", (4,), exclude=["features.0", "features.2*"])
    assert "features.0.weight" not in masks and "features.21.weight" not in masks
    assert model.features[0].weight.count_nonzero() == model.features[0].weight.numel()
    assert measured[0] == pytest.approx(4, rel=1e-3)
    _, masks, _ = _run_schedule("local_l1_structured", (4,), exclude=["features.2"])
    # features.0 feeds features.2 (its input columns) and features.2's own filters stay: both groups whole
    assert masks["features.0.weight"].all() and "features.2.weight" not in masks
    assert not masks["features.5.weight"].all()


def test_exclusion_that_names_no_layer_is_a_user_error():
    with pytest.raises(UserError, match=r"prune.exclude: 'feature.0' matches no layer of the model "
                                        r"\(layers: features.0, features.2, features.5, \.\.\., classifier.6\)"):
        prunable_weights(_model(), "conv", ["feature.0"])


def test_random_methods_are_reproducible_from_their_seed():
    for name in ("local_random_unstructured", "local_random_structured"):
        _, a, _ = _run_schedule(name, (2, 4), seed=3)
        _, b, _ = _run_schedule(name, (2, 4), seed=3)
        _, c, _ = _run_schedule(name, (2, 4), seed=4)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_magnitude_masks_match_torch_prune():
    """One step of our magnitude method equals torch.nn.utils.prune's masks."""
    model = _model()
    weights = prunable_weights(model, "conv")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    ours = compute_masks(METHODS["local_magnitude_unstructured"], weights, ones, 4, torch.Generator())
    conv = model.features[0]
    reference = _model()
    prune.l1_unstructured(reference.features[0], "weight", amount=conv.weight.numel() - round(conv.weight.numel() / 4))
    assert torch.equal(ours["features.0.weight"], reference.features[0].weight_mask.bool())


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
