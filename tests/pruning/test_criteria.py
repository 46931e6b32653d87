"""The criteria beyond magnitude and random, each against a reference computation: first-order Taylor
and SNIP against a plain backward pass, LAMP against the paper's formula on a hand-sized layer, and the
Torch-Pruning importances against Torch-Pruning's own pruner."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from PIL import Image
from torch.ao.pruning import WeightNormSparsifier

from prunexplain.config import DataSettings, ModelSettings, UserError
from prunexplain.data.loaders import ImageSet
from prunexplain.models import build_model
from prunexplain.pruning.calibration import calibration_batch, calibration_gradients
from prunexplain.pruning.masks import apply_masks
from prunexplain.pruning.methods import (
    METHODS,
    compute_masks,
    lamp,
    prunable_groups,
    prunable_weights,
    structured_masks,
)
from prunexplain.pruning.remove import remove_pruned
from tests.pruning.nets import trained_looking

SIZE = 32


def _vgg(seed: int = 0):
    """The compact VGG-16 with batch-norm scales of their own (1 at initialisation: all tied)."""
    torch.manual_seed(seed)
    model = trained_looking(build_model(10, ModelSettings(width=0.125, pool_size=1, batch_norm=True)))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.2, 1.5)
    return model


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(8, 3, SIZE, SIZE, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def _reference_gradients(model, images, labels) -> dict[str, torch.Tensor]:
    reference = copy.deepcopy(model).eval().requires_grad_(True)
    F.cross_entropy(reference(images), labels).backward()
    return {name: param.grad for name, param in reference.named_parameters()}


def test_calibration_gradients_are_a_backward_pass_and_leave_nothing_behind():
    model = _vgg().train()
    model.features[0].requires_grad_(False)  # a frozen part gets its gradient too
    images, labels = _batch()
    expected = _reference_gradients(model, images, labels)
    with calibration_gradients(model, images, labels):
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.grad, expected[name])
    assert model.training and all(p.grad is None for p in model.parameters())
    assert not model.features[0].weight.requires_grad


def test_calibration_batch_is_a_seeded_draw_of_prepared_training_images(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    paths = []
    for index, image in enumerate(pixels):  # 32 px files at data.image_size 32: decoding keeps the pixels
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    train = ImageSet(tuple(paths), tuple(range(20)), tuple(str(i) for i in range(20)))
    data = DataSettings(normalize=False, image_size=32)
    x, y = calibration_batch(train, data, 6, torch.Generator().manual_seed(3), torch.device("cpu"))
    again, _ = calibration_batch(train, data, 6, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.equal(x, again) and len(set(y.tolist())) == 6
    assert torch.equal(x, torch.from_numpy(pixels[y.numpy()]).permute(0, 3, 1, 2).float() / 255)


@pytest.mark.parametrize(("name", "local"), [("local_taylor_unstructured", True), ("global_snip_unstructured", False)])
def test_taylor_and_snip_keep_the_largest_weight_times_gradient(name, local):
    model = _vgg()
    images, labels = _batch()
    grads = _reference_gradients(model, images, labels)
    weights = prunable_weights(model, "conv")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    with calibration_gradients(model, images, labels):
        masks = compute_masks(METHODS[name], weights, ones, 4, torch.Generator())
    saliency = {k: (w.detach() * grads[k]).abs() for k, w in weights.items()}
    if local:  # each layer keeps its own top quarter
        for k, s in saliency.items():
            assert int(masks[k].sum()) == round(s.numel() / 4)
            assert s[masks[k]].min() >= s[~masks[k]].max()
    else:  # SNIP: connection sensitivity |g w| / sum |g w|, one ranking over all layers
        flat = torch.cat([s.flatten() for s in saliency.values()])
        normalised = flat / flat.sum()
        kept = torch.cat([masks[k].flatten() for k in saliency])
        assert int(kept.sum()) == round(flat.numel() / 4)
        assert normalised[kept].min() >= normalised[~kept].max()
    by_magnitude = compute_masks(METHODS["local_magnitude_unstructured"], weights, ones, 4, torch.Generator())
    assert any(not torch.equal(masks[k], by_magnitude[k]) for k in weights)  # the gradients count


def test_lamp_is_the_papers_score_on_a_hand_sized_layer():
    weight = torch.tensor([[0.5, -1.0], [2.0, 0.1]])
    # squares 0.25, 1, 4, 0.01; ascending 0.01, 0.25, 1, 4 with suffix sums 5.26, 5.25, 5, 4
    expected = torch.tensor([[0.25 / 5.25, 1 / 5], [4 / 4, 0.01 / 5.26]], dtype=torch.float64)
    torch.testing.assert_close(lamp(weight, torch.Generator()), expected)


def test_global_lamp_lands_on_the_rate_and_keeps_every_layers_largest_weight():
    model = _vgg()
    weights = prunable_weights(model, "conv")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    masks = compute_masks(METHODS["global_lamp_unstructured"], weights, ones, 64, torch.Generator())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(sum(w.numel() for w in weights.values()) / 64)
    shares = [float(masks[k].float().mean()) for k in weights]
    assert max(shares) > 2 * min(shares)  # the rate adapts per layer, unlike local magnitude
    for k, w in weights.items():  # its score is 1, the highest a weight can get
        assert masks[k].flatten()[w.detach().abs().flatten().argmax()]


def _torch_pruning_reference(model, method: str, kept: dict[str, int], images, labels):
    """The same model pruned by Torch-Pruning's own MetaPruner with the same importance, each conv keeping
    the number of channels ours kept."""
    reference = copy.deepcopy(model)
    if METHODS[method].gradients:
        reference.zero_grad()
        F.cross_entropy(reference(images), labels).backward()
    importance = {
        "local_l1_group_structured": tp.importance.GroupMagnitudeImportance(p=1),
        "local_l2_group_structured": tp.importance.GroupMagnitudeImportance(p=2),
        "local_fpgm_structured": tp.importance.FPGMImportance(),
        "local_bn_scale_structured": tp.importance.BNScaleImportance(),
        "local_taylor_structured": tp.importance.GroupTaylorImportance(),
    }[method]
    convs = {name: m for name, m in reference.named_modules() if isinstance(m, torch.nn.Conv2d)}
    ratios = {convs[name]: 1 - (count + 0.5) / convs[name].out_channels for name, count in kept.items()}
    pruner = tp.pruner.MetaPruner(reference, torch.zeros(1, 3, SIZE, SIZE), importance, pruning_ratio_dict=ratios,
                                  pruning_ratio=0.0, ignored_layers=[reference.classifier[-1]])
    pruner.step()
    return reference


@pytest.mark.parametrize("method", ["local_l1_group_structured", "local_l2_group_structured", "local_fpgm_structured",
                                    "local_bn_scale_structured", "local_taylor_structured"])
def test_torch_pruning_criteria_remove_the_channels_torch_pruning_removes(method):
    model = _vgg()
    images, labels = _batch()
    groups, weights = prunable_groups(model, SIZE, "conv"), prunable_weights(model, "conv")
    with calibration_gradients(model, images, labels):
        masks = structured_masks(METHODS[method], model, weights, {}, 4, torch.Generator(), groups)
    kept = {k.removesuffix(".weight"): int(m.flatten(1).any(1).sum()) for k, m in masks.items()
            if k in weights}
    reference = _torch_pruning_reference(model, method, kept, images, labels)
    pruned = copy.deepcopy(model)
    apply_masks(pruned, masks)
    ours = remove_pruned(pruned, masks, SIZE)
    for (name, a), (_, b) in zip(ours.named_parameters(), reference.named_parameters()):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, msg=name)  # the same channels kept, in the same order


def test_global_criteria_rank_across_groups_and_keep_a_channel_in_each():
    model = _vgg()
    groups, weights = prunable_groups(model, SIZE, "conv"), prunable_weights(model, "conv")
    local, global_ = (structured_masks(METHODS[f"{kind}_l2_group_structured"], model, weights, {}, 16,
                                       torch.Generator(), groups) for kind in ("local", "global"))
    shares = {kind: [float(m[k].flatten(1).any(1).float().mean()) for k in weights]
              for kind, m in (("local", local), ("global", global_))}
    assert max(shares["global"]) - min(shares["global"]) > max(shares["local"]) - min(shares["local"])
    assert min(min(s) for s in shares.values()) > 0
    for masks in (local, global_):
        rate = sum(w.numel() for w in weights.values()) / sum(int(masks[k].sum()) for k in weights)
        assert rate == pytest.approx(16, rel=0.02)


def test_batch_norm_scales_without_a_batch_norm_say_so():
    torch.manual_seed(0)
    model = build_model(10, ModelSettings(width=0.125, pool_size=1, batch_norm=False))
    groups, weights = prunable_groups(model, SIZE, "conv"), prunable_weights(model, "conv")
    with pytest.raises(UserError, match="needs batch norms after the convolutions"):
        structured_masks(METHODS["local_bn_scale_structured"], model, weights, {}, 2, torch.Generator(), groups)


def test_two_of_four_are_the_masks_of_pytorchs_own_sparsifier():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    weights = prunable_weights(model, "conv_linear")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    ours = compute_masks(METHODS["local_magnitude_nm_semistructured"], weights, ones, 2, torch.Generator())
    reference = copy.deepcopy(model)
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(reference, config=[{"tensor_fqn": name} for name in weights])
    sparsifier.step()
    for name in weights:
        layer = reference.get_submodule(name.removesuffix(".weight"))
        assert torch.equal(ours[name], layer.parametrizations.weight[0].mask.bool()), name


def test_n_of_four_along_the_input_channels_of_a_convolution():
    conv = torch.nn.Conv2d(8, 2, 3)
    weights = {"0.weight": conv.weight}
    ones = {"0.weight": torch.ones_like(conv.weight, dtype=torch.bool)}
    two = compute_masks(METHODS["local_magnitude_nm_semistructured"], weights, ones, 2, torch.Generator())["0.weight"]
    one = compute_masks(METHODS["local_magnitude_nm_semistructured"], weights, {"0.weight": two}, 4,
                        torch.Generator())["0.weight"]
    magnitude = conv.weight.detach().abs()
    for out in range(2):
        for y in range(3):
            for x in range(3):
                for start in (0, 4):  # each block: 4 consecutive input channels at one kernel position
                    block = slice(start, start + 4)
                    expected = magnitude[out, block, y, x].topk(2).indices.sort().values
                    assert torch.equal(two[out, block, y, x].nonzero().flatten(), expected)
                    kept = one[out, block, y, x]
                    assert kept.nonzero().flatten().tolist() == [int(magnitude[out, block, y, x].argmax())]
