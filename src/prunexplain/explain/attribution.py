"""Pixel attributions beside the CAMs: gradients through Captum, LRP through zennit.

Each method gives an attribution per input value `[B, C, H, W]`; one map per image comes from a
documented aggregation over the colour channels (`ATTRIBUTIONS`' second entry), and, as every map of `explain`, is
scaled to its peak at 1 (a map without a positive value stays as it is):

- saliency: the largest |∂logit/∂x| over the channels (Simonyan et al. 2014);
- input_x_gradient, integrated_gradients, smoothgrad, guided_backprop, guided_gradcam: the sum of
  absolute values over the channels (the attribution's magnitude, whatever its sign);
- lrp: the positive part of the channel sum (relevance for the class; negative relevance speaks
  against it).

The model runs in eval mode with every ReLU out of place while attributing (guided backpropagation
rewrites ReLU gradients, which an in-place ReLU would break); modes and flags are restored after.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunexplain.config import UserError


@dataclass(frozen=True)
class AttributionOptions:
    """Settings of the attribution methods (from `[explain]`); `baseline` is in the model's input
    space (integrated gradients' reference image), `seed` draws SmoothGrad's noise."""

    ig_steps: int = 32
    baseline: torch.Tensor | float = 0.0
    smoothgrad_samples: int = 16
    smoothgrad_noise: float = 0.15
    seed: int = 0


Attribute = Callable[[nn.Module, torch.Tensor, torch.Tensor, nn.Module, AttributionOptions], torch.Tensor]


def _saliency(model, x, classes, layer, options) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=classes, abs=True)


def _input_x_gradient(model, x, classes, layer, options) -> torch.Tensor:
    from captum.attr import InputXGradient

    return InputXGradient(model).attribute(x, target=classes)


def _integrated_gradients(model, x, classes, layer, options) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    baseline = options.baseline
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.to(x.device, x.dtype).expand_as(x)
    return IntegratedGradients(model).attribute(x, baselines=baseline, target=classes, n_steps=options.ig_steps,
                                                internal_batch_size=len(x))


def _smoothgrad(model, x, classes, layer, options) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean saliency over noisy copies, the noise's standard
    deviation `smoothgrad_noise` times the batch's value range."""
    from captum.attr import NoiseTunnel, Saliency

    spread = options.smoothgrad_noise * float(x.detach().max() - x.detach().min())
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(options.seed)
        return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=options.smoothgrad_samples,
                                                      nt_samples_batch_size=len(x), stdevs=spread, target=classes,
                                                      abs=False)


def _guided_backprop(model, x, classes, layer, options) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    return GuidedBackprop(model).attribute(x, target=classes)


def _guided_gradcam(model, x, classes, layer, options) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation times the layer's Grad-CAM,
    upsampled (nearest) to the input."""
    from captum.attr import GuidedGradCam

    return GuidedGradCam(model, layer).attribute(x, target=classes)


def _lrp(model, x, classes, layer, options) -> torch.Tensor:
    """LRP with zennit's EpsilonPlusFlat composite (flat rule on the first layer, z+ on the other
    convolutions, epsilon on the dense layers), batch norms merged into the layers before them by the
    canonizer of the architecture."""
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    composite = EpsilonPlusFlat(canonizers=_canonizers(model))
    with Gradient(model=model, composite=composite) as attributor:  # relevance starts at the class's logit
        _, relevance = attributor(x, lambda output: F.one_hot(classes, output.shape[1]).to(output.dtype))
    return relevance


def _canonizers(model: nn.Module) -> list:
    from torchvision.models import VGG, ResNet
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if isinstance(model, ResNet):
        return [ResNetCanonizer()]
    if isinstance(model, VGG):
        return [VGGCanonizer()]
    raise UserError(f"explain.methods: lrp supports VGG- and ResNet-style torchvision models (zennit's canonizers), "
                    f"not {type(model).__name__}")


def _max_abs(a: torch.Tensor) -> torch.Tensor:
    return a.abs().amax(1)


def _sum_abs(a: torch.Tensor) -> torch.Tensor:
    return a.abs().sum(1)


def _positive_sum(a: torch.Tensor) -> torch.Tensor:
    return a.sum(1).clamp(min=0)


ATTRIBUTIONS: dict[str, tuple[Attribute, Callable[[torch.Tensor], torch.Tensor]]] = {
    "saliency": (_saliency, _max_abs),
    "input_x_gradient": (_input_x_gradient, _sum_abs),
    "integrated_gradients": (_integrated_gradients, _sum_abs),
    "smoothgrad": (_smoothgrad, _sum_abs),
    "guided_backprop": (_guided_backprop, _sum_abs),
    "guided_gradcam": (_guided_gradcam, _sum_abs),
    "lrp": (_lrp, _positive_sum),
}


@contextlib.contextmanager
def _attributing(model: nn.Module) -> Iterator[None]:
    """Eval mode and out-of-place ReLUs inside the block; both as they were afterwards."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    training = model.training
    model.eval()
    for relu in relus:
        relu.inplace = False
    try:
        with warnings.catch_warnings():  # Captum announces its (removed afterwards) ReLU hooks every batch
            warnings.filterwarnings("ignore", "Setting backward hooks on ReLU activations", UserWarning)
            yield
    finally:
        for relu in relus:
            relu.inplace = True
        model.train(training)


def attribute(model: nn.Module, x: torch.Tensor, method: str, classes: torch.Tensor | None, layer: nn.Module,
              options: AttributionOptions = AttributionOptions()) -> torch.Tensor:
    """One map `[B, H, W]` per image of `method` for `classes` (None: the predicted ones), the
    aggregation of `ATTRIBUTIONS`, not yet scaled; `layer` is the target layer of guided Grad-CAM."""
    function, aggregate = ATTRIBUTIONS[method]
    with _attributing(model):
        if classes is None:
            with torch.no_grad():
                classes = model(x).argmax(1)
        raw = function(model, x.detach().clone().requires_grad_(True), classes.to(x.device), layer, options)
    return aggregate(raw.detach())
