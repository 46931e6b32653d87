"""Grad-CAM throughput on the CPU: VGG-16 and ResNet-50 at 224 px, batch 16, images per second
(median of runs), each at its default target layer (VGG-16: features.30, ResNet-50: layer4.2).

- plain forward: the floor, one inference pass of the batch;
- prunexplain GradCAM: one forward, gradient only down to the target activation;
- grad-cam library GradCAM: one forward and a full backward (parameter gradients included);
- per-image loop: new hooks, one image per forward and full backward, as the study's code did.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM as LibraryGradCAM

from prunexplain.config import ModelSettings
from prunexplain.explain.cam import GradCAM
from prunexplain.models import build_model, default_target_layer

BATCH, SIZE, REPEATS = 16, 224, 3


def _plain_forward(model, images, layer):
    with torch.no_grad():
        model(images)


def _ours(model, images, layer):
    with GradCAM(model, layer) as cam:
        cam(images)


def _library(model, images, layer):
    with LibraryGradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        cam(input_tensor=images, targets=None)


def _per_image_loop(model, images, layer_name):
    """One image at a time, hooks registered and removed around each, full backward."""
    for image in images:
        store = {}
        layer = model.get_submodule(layer_name)
        forward = layer.register_forward_hook(lambda m, i, out: store.update(activation=out))
        backward = layer.register_full_backward_hook(lambda m, gi, go: store.update(gradient=go[0]))
        logits = model(image[None])
        model.zero_grad()
        logits[0, logits.argmax()].backward()
        weights = store["gradient"].mean(dim=(2, 3), keepdim=True)
        F.relu((weights * store["activation"]).sum(1)).detach()
        forward.remove()
        backward.remove()


def _images_per_second(function, model, images, layer) -> float:
    function(model, images, layer)  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        function(model, images, layer)
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


MODELS = {
    "VGG-16": ModelSettings(width=1, pool_size=7, batch_norm=False),
    "ResNet-50": ModelSettings(arch="resnet50"),
}


def _compare(name: str, model, images) -> None:
    layer = default_target_layer(model, SIZE)
    print(f"{name} at {layer}, {SIZE} px, batch {BATCH}, {images.device} ({torch.get_num_threads()} threads), "
          f"median of {REPEATS}")
    rates = {
        "plain forward (floor)": _images_per_second(_plain_forward, model, images, layer),
        "prunexplain GradCAM": _images_per_second(_ours, model, images, layer),
        "grad-cam library GradCAM": _images_per_second(_library, model, images, layer),
        "per-image loop (as the study)": _images_per_second(_per_image_loop, model, images, layer),
    }
    for label, rate in rates.items():
        print(f"{label:<34} {rate:8.2f} img/s")
    ours = rates["prunexplain GradCAM"]
    print(f"prunexplain time / plain forward time: {rates['plain forward (floor)'] / ours:.2f}x (goal <= 1.15x)")
    print(f"prunexplain vs library: {ours / rates['grad-cam library GradCAM']:.2f}x faster (goal >= 2.5x)")
    print(f"prunexplain vs per-image loop: {ours / rates['per-image loop (as the study)']:.2f}x faster (goal >= 3x)")


def main() -> None:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
    images = torch.rand(BATCH, 3, SIZE, SIZE, device=device)
    for name, settings in MODELS.items():
        _compare(name, build_model(10, settings).to(device).eval(), images)


if __name__ == "__main__":
    main()
