import dataclasses

import pytest
import torch
from torch import nn

from prunexplain.config import ModelSettings, UserError
from prunexplain.explain.attribution import ATTRIBUTIONS, AttributionOptions, attribute
from prunexplain.explain.cam import explain
from prunexplain.models import build_model


def _model(arch="vgg16", seed=0):
    torch.manual_seed(seed)
    settings = ModelSettings(width=0.125, pool_size=2) if arch == "vgg16" else ModelSettings(arch=arch)
    model = build_model(10, settings).eval()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # statistics of a trained model
        norm.running_mean.uniform_(-0.2, 0.2)
        norm.running_var.uniform_(0.5, 2)
    return model


def _images(n=3, size=32, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", list(ATTRIBUTIONS))
def test_every_attribution_is_one_map_per_image_and_leaves_the_model_as_it_was(method):
    model, x = _model(), _images()
    model.train()
    before, flags = _state(model), [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    maps = explain(model, x, method)
    assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all() and maps.min() >= 0
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(3))
    assert model.training and [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == flags
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # canonizers undone
    if method != "smoothgrad":  # its noise is drawn per call: the same seed, other images, other noise
        single = torch.cat([explain(model.eval(), x[i : i + 1], method) for i in range(3)])
        assert torch.allclose(maps, single, atol=1e-3), "a map depends on the other images of its batch"


def test_saliency_is_the_largest_absolute_gradient_over_the_channels():
    model, x = _model(), _images()
    classes = torch.tensor([1, 4, 7])
    inputs = x.clone().requires_grad_(True)
    model(inputs).gather(1, classes[:, None]).sum().backward()
    expected = inputs.grad.abs().amax(1)
    assert torch.allclose(attribute(model, x, "saliency", classes, None), expected, atol=1e-7)


def test_integrated_gradients_are_complete_from_the_given_baseline():
    """Captum's integrated gradients sum to f(x) - f(baseline) (completeness): the baseline given in
    the settings is the one the path starts from."""
    model, x = _model(), _images(2)
    classes = torch.tensor([2, 5])
    baseline = torch.full((1, 3, 32, 32), -0.5)
    options = AttributionOptions(ig_steps=256, baseline=baseline)
    integrate, _ = ATTRIBUTIONS["integrated_gradients"]
    raw = integrate(model, x.requires_grad_(True), classes, None, options)
    with torch.no_grad():
        logit = lambda images: model(images).gather(1, classes[:, None])[:, 0]  # noqa: E731
        logits = logit(x) - logit(baseline.expand_as(x))
    assert torch.allclose(raw.sum((1, 2, 3)), logits, rtol=0.02, atol=0.02)


def test_smoothgrad_noise_comes_from_its_seed():
    model, x = _model(), _images()
    same = [explain(model, x, "smoothgrad", options=AttributionOptions(seed=3)) for _ in range(2)]
    other = explain(model, x, "smoothgrad", options=AttributionOptions(seed=4))
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], other)
    # without noise it is the gradient (its channels' absolute values summed), with noise another map
    inputs = x.clone().requires_grad_(True)
    logits = model(inputs)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    gradient = inputs.grad.abs().sum(1)
    gradient /= gradient.flatten(1).amax(1).view(-1, 1, 1)
    quiet = explain(model, x, "smoothgrad", options=dataclasses.replace(AttributionOptions(), smoothgrad_noise=1e-7))
    assert torch.allclose(quiet, gradient, atol=1e-3) and not torch.allclose(same[0], gradient, atol=1e-2)


def test_lrp_is_zennits_epsilon_plus_flat_with_batch_norm_merged():
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    for arch, canonizer in (("vgg16", VGGCanonizer), ("resnet18", ResNetCanonizer)):
        model, x = _model(arch), _images(2, 64 if arch == "resnet18" else 32)
        classes = torch.tensor([3, 8])
        with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=[canonizer()])) as attributor:
            _, relevance = attributor(x, torch.eye(10)[classes])
        expected = relevance.sum(1).clamp(min=0)
        assert torch.allclose(attribute(model, x, "lrp", classes, None), expected, atol=1e-6)
    with pytest.raises(UserError, match="lrp supports VGG- and ResNet-style torchvision models"):
        explain(build_model(10, ModelSettings(arch="mobilenet_v3_small")).eval(), _images(1, 64), "lrp")


def test_guided_backprop_passes_only_positive_gradients_through_relus():
    """On a two-layer ReLU net by hand: guided backpropagation zeroes negative gradients at every ReLU,
    which the plain gradient keeps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x, classes = _images(1, 8), torch.tensor([1])
    with torch.no_grad():
        before_first = model[0](x)
        after_first = before_first.clamp(min=0)
        before_second = model[2](after_first)
    # output 1 is the mean of the second ReLU's channel 1: gradient 1/n where that ReLU passed
    second = torch.zeros_like(before_second)
    second[:, 1] = (before_second[:, 1] > 0) / before_second[0, 1].numel()
    a = after_first.clone().requires_grad_(True)
    first = torch.autograd.grad(model[2](a), a, second)[0].clamp(min=0) * (before_first > 0)
    inputs = x.clone().requires_grad_(True)
    expected = torch.autograd.grad(model[0](inputs), inputs, first)[0].abs().sum(1)
    assert torch.allclose(attribute(model, x, "guided_backprop", classes, None), expected, atol=1e-7)
    assert model[1].inplace  # restored
