"""Batched Grad-CAM, and the other CAM methods of the `grad-cam` library behind the same interface.

`GradCAM` runs one forward pass per batch. Inside its context the model's parameters stop
requiring gradients, so the layers before the target build no autograd graph at all; a hook makes
the target activation the one tensor that does, and `torch.autograd.grad` of the chosen logits with
respect to it crosses only the layers after it (at the default layer, the classifier). A map then
costs about one plain forward pass. Hooks, flags and the train/eval mode are restored on exit, also
after an exception.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunexplain.config import UserError


def default_target_layer(model: nn.Module) -> str:
    """The study's choice: the last layer of `model.features` (after VGG's last ReLU and pooling)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise UserError("explain.target_layer: the model has no `features` block; name a layer")
    return f"features.{len(features) - 1}"


def find_layer(model: nn.Module, name: str) -> nn.Module:
    layers = dict(model.named_modules())
    if name not in layers:
        known = ", ".join(n for n in layers if n.startswith("features."))
        raise UserError(f"explain.target_layer: no layer {name!r} (e.g. {known})")
    return layers[name]


class GradCAM:
    """`with GradCAM(model) as cam: maps = cam(images, classes)` -> raw maps `[B, h, w]`.

    Raw map: ReLU of the channel sum of the target activations weighted by the spatial mean of the
    gradients of each image's class logit (default: the predicted class). `upsample` brings the maps
    to the image size (bicubic, as the study).
    """

    def __init__(self, model: nn.Module, target_layer: str | None = None) -> None:
        self.model = model
        self.layer = find_layer(model, target_layer or default_target_layer(model))
        self._activation: torch.Tensor | None = None
        self._restore: list[Callable[[], None]] = []

    def __enter__(self) -> GradCAM:
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        training = self.model.training
        handle = self.layer.register_forward_hook(self._keep_activation)
        self._restore = [
            handle.remove,
            lambda: [p.requires_grad_(flag) for p, flag in flags],
            lambda: self.model.train(training),
        ]
        self.model.requires_grad_(False)
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        for restore in self._restore:
            restore()
        self._restore, self._activation = [], None

    def _keep_activation(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        self._activation = output.detach().requires_grad_(True)
        # the rest of the forward pass builds its graph from here; a clone, so that an in-place
        # ReLU after a conv target cannot overwrite the activation the map is made of
        return self._activation.clone()

    def __call__(self, images: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        if not self._restore:
            raise RuntimeError("use GradCAM as a context manager: `with GradCAM(model) as cam: ...`")
        with torch.enable_grad():
            logits = self.model(images)
            if classes is None:
                classes = logits.argmax(1)
            chosen = logits.gather(1, classes.to(logits.device).view(-1, 1)).sum()
            (gradients,) = torch.autograd.grad(chosen, self._activation)
        activation, self._activation = self._activation.detach(), None
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        return F.relu((weights * activation).sum(1))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Raw maps `[B, h, w]` to `[B, H, W]` by bicubic interpolation, clipped at 0 (bicubic overshoots)."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bicubic", align_corners=False)[:, 0].clamp_(min=0)


def _library_cam(name: str):
    import pytorch_grad_cam as library

    return getattr(library, name)


# Methods by name: ours for Grad-CAM, the grad-cam library's classes for the others.
LIBRARY_METHODS = {
    "gradcam++": "GradCAMPlusPlus",
    "scorecam": "ScoreCAM",
    "layercam": "LayerCAM",
    "xgradcam": "XGradCAM",
    "eigencam": "EigenCAM",
    "hirescam": "HiResCAM",
}
METHODS = ("gradcam", *LIBRARY_METHODS)


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    classes: torch.Tensor | None = None,
    target_layer: str | None = None,
) -> torch.Tensor:
    """Maps `[B, H, W]` at the images' size, each scaled to 0..1, for any method of `METHODS`."""
    size = tuple(images.shape[-2:])
    if method == "gradcam":
        with GradCAM(model, target_layer) as cam:
            maps = upsample(cam(images, classes), size)
        peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
        return maps / peak
    if method not in LIBRARY_METHODS:
        raise UserError(f"explain.method: unknown CAM method {method!r} (known: {', '.join(METHODS)})")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = find_layer(model, target_layer or default_target_layer(model))
    training = model.training
    model.eval()
    try:
        with _library_cam(LIBRARY_METHODS[method])(model=model, target_layers=[layer]) as cam:
            targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
            maps = cam(input_tensor=images, targets=targets)
    finally:
        model.train(training)
    return torch.from_numpy(maps).to(images.device)
