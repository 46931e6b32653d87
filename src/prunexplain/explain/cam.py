"""Batched Grad-CAM, the other CAM methods of the `grad-cam` library and the pixel attributions of
`attribution.py` (Captum, zennit), all behind `explain()`.

`GradCAM` runs one forward pass per batch. Inside its context the model's parameters stop
requiring gradients, so the layers before the target build no autograd graph at all; a hook makes
the target activation the one tensor that does, and `torch.autograd.grad` of the chosen logits with
respect to it crosses only the layers after it (at the default layer, the classifier). A map then
costs about one plain forward pass. Hooks, flags and the train/eval mode are restored on exit, also
after an exception.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunexplain.config import UserError
from prunexplain.explain.attribution import ATTRIBUTIONS, AttributionOptions, attribute
from prunexplain.models import default_target_layer


def find_layer(model: nn.Module, name: str) -> nn.Module:
    layers = dict(model.named_modules())
    if name not in layers:
        close = difflib.get_close_matches(name, [n for n in layers if n], n=6, cutoff=0.5)
        raise UserError(f"explain.target_layer: no layer {name!r} (close: {', '.join(close) or 'none'})")
    return layers[name]


def target_layer(model: nn.Module, name: str | None, image_size: int) -> str:
    """`name` (explain.target_layer), or the model's default traced at `image_size`."""
    return name or default_target_layer(model, image_size)


class GradCAM:
    """`with GradCAM(model) as cam: maps = cam(images, classes)` -> raw maps `[B, h, w]`.

    Raw map: ReLU of the channel sum of the target activations weighted by the spatial mean of the
    gradients of each image's class logit (default: the predicted class). `upsample` brings the maps
    to the image size (bicubic, as the study; `kernel="pil"` exactly as the study's PIL resize).
    """

    def __init__(self, model: nn.Module, target_layer: str | None = None, image_size: int = 224) -> None:
        self.model = model
        self.layer = find_layer(model, target_layer or default_target_layer(model, image_size))
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


def _pil_cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5, PIL's BICUBIC (torch's bicubic uses a = -0.75)."""
    a, x = -0.5, x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


@functools.lru_cache(maxsize=32)
def _pil_weights(size_in: int, size_out: int) -> torch.Tensor:
    """`[size_out, size_in]` float64 weights of PIL's bicubic resize along one axis.

    Follows Pillow's `precompute_coeffs` (src/libImaging/Resample.c): output pixel i samples at
    centre (i + 0.5) * scale with scale = size_in / size_out; the kernel (support 2) is stretched by
    max(scale, 1), so a reduction also antialiases; the window from int(centre - support + 0.5) to
    int(centre + support + 0.5) (truncated as C does) is cut to the image and its weights renormalised
    to sum 1, which is how PIL treats the edges instead of clamping coordinates as torch does.
    """
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    centre = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale
    low = (centre - support + 0.5).trunc().clamp(min=0)[:, None]
    high = (centre + support + 0.5).trunc().clamp(max=size_in)[:, None]
    x = torch.arange(size_in, dtype=torch.float64)[None]
    # PIL multiplies by the reciprocal rather than dividing: the same rounding, the same weights
    weights = torch.where((x >= low) & (x < high), _pil_cubic((x - centre[:, None] + 0.5) * (1.0 / stretch)), 0.0)
    total = weights.sum(1, keepdim=True)
    return torch.where(total != 0, weights / total, weights)


UPSAMPLE_KERNELS = ("torch", "pil")


def upsample(maps: torch.Tensor, size: tuple[int, int], kernel: str = "torch") -> torch.Tensor:
    """Maps `[B, h, w]` to `[B, H, W]` by bicubic interpolation, up or down, one batched operation.

    - torch: `F.interpolate` bicubic (a = -0.75, coordinates clamped at the edges), clipped at 0
      because bicubic overshoots below the ReLU'd raw map;
    - pil: the study's `Image.fromarray(map, mode="F").resize((W, H), Image.BICUBIC)` per map, as
      the matrix product `rows @ maps @ cols.T` of PIL's own coefficients on the maps' device (equal to
      PIL within float32 rounding); the overshoot's small negatives are kept, as the study kept them.
    """
    if kernel == "torch":
        return F.interpolate(maps[:, None].float(), size=size, mode="bicubic", align_corners=False)[:, 0].clamp_(min=0)
    if kernel != "pil":
        raise UserError(f"explain.upsample: unknown kernel {kernel!r} (known: {', '.join(UPSAMPLE_KERNELS)})")
    dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
    rows = _pil_weights(maps.shape[-2], size[0]).to(maps.device, dtype)
    cols = _pil_weights(maps.shape[-1], size[1]).to(maps.device, dtype)
    return rows @ maps.to(dtype) @ cols.T


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
METHODS = ("gradcam", *LIBRARY_METHODS, *ATTRIBUTIONS)


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    classes: torch.Tensor | None = None,
    target_layer: str | None = None,
    upsample_kernel: str = "torch",
    options: AttributionOptions = AttributionOptions(),
) -> torch.Tensor:
    """Maps `[B, H, W]` at the images' size, each with its peak at 1, for any method of `METHODS`.

    `upsample_kernel` (`explain.upsample`) applies to prunexplain's Grad-CAM only: the grad-cam
    library's methods min-max scale and resize their maps themselves (OpenCV bilinear), in 0..1.
    Grad-CAM maps are divided by their peak, as the study's; with the "pil" kernel they keep its small
    negative overshoot, and a map with no positive value (all zero after the ReLU) stays as it is.
    Attributions (`ATTRIBUTIONS`) are aggregated over the channels and divided by their peak too;
    `options` holds their settings.
    """
    size = tuple(images.shape[-2:])
    if method == "gradcam":
        with GradCAM(model, target_layer, images.shape[-1]) as cam:
            return _peak_scaled(upsample(cam(images, classes), size, upsample_kernel))
    if method not in METHODS:
        raise UserError(f"explain.methods: unknown method {method!r} (known: {', '.join(METHODS)})")
    layer = find_layer(model, target_layer or default_target_layer(model, images.shape[-1]))
    if method in ATTRIBUTIONS:
        return _peak_scaled(attribute(model, images, method, classes, layer, options))
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    training = model.training
    model.eval()
    try:
        with _library_cam(LIBRARY_METHODS[method])(model=model, target_layers=[layer]) as cam:
            targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
            maps = cam(input_tensor=images, targets=targets)
    finally:
        model.train(training)
    return torch.from_numpy(maps).to(images.device)


def _peak_scaled(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its peak; the clamp keeps tiny peaks from blowing up, and a map with no
    positive value stays as it is."""
    peak = maps.flatten(1).amax(1).view(-1, 1, 1)
    return maps / torch.where(peak > 0, peak.clamp(min=1e-12), torch.ones_like(peak))
