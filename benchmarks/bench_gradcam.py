"""Grad-CAM throughput on the CPU: VGG-16 at 224 px, batch 16, images per second (median of runs).

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
from prunexplain.models import build_model

BATCH, SIZE, REPEATS = 16, 224, 3


def _plain_forward(model, images):
    with torch.no_grad():
        model(images)


def _ours(model, images):
    with GradCAM(model) as cam:
        cam(images)


def _library(model, images):
    with LibraryGradCAM(model=model, target_layers=[model.features[-1]]) as cam:
        cam(input_tensor=images, targets=None)


def _per_image_loop(model, images):
    """One image at a time, hooks registered and removed around each, full backward."""
    for image in images:
        store = {}
        layer = model.features[-1]
        forward = layer.register_forward_hook(lambda m, i, out: store.update(activation=out))
        backward = layer.register_full_backward_hook(lambda m, gi, go: store.update(gradient=go[0]))
        logits = model(image[None])
        model.zero_grad()
        logits[0, logits.argmax()].backward()
        weights = store["gradient"].mean(dim=(2, 3), keepdim=True)
        F.relu((weights * store["activation"]).sum(1)).detach()
        forward.remove()
        backward.remove()


def _images_per_second(function, model, images) -> float:
    function(model, images)  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        function(model, images)
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
    model = build_model(10, ModelSettings(width=1, pool_size=7, batch_norm=False)).to(device).eval()
    images = torch.rand(BATCH, 3, SIZE, SIZE, device=device)
    print(f"VGG-16, {SIZE} px, batch {BATCH}, {device} ({torch.get_num_threads()} threads), median of {REPEATS}")
    rates = {
        "plain forward (floor)": _images_per_second(_plain_forward, model, images),
        "prunexplain GradCAM": _images_per_second(_ours, model, images),
        "grad-cam library GradCAM": _images_per_second(_library, model, images),
        "per-image loop (as the study)": _images_per_second(_per_image_loop, model, images),
    }
    for name, rate in rates.items():
        print(f"{name:<34} {rate:8.2f} img/s")
    ours = rates["prunexplain GradCAM"]
    print(f"prunexplain time / plain forward time: {rates['plain forward (floor)'] / ours:.2f}x (goal <= 1.15x)")
    print(f"prunexplain vs library: {ours / rates['grad-cam library GradCAM']:.2f}x faster (goal >= 2.5x)")
    print(f"prunexplain vs per-image loop: {ours / rates['per-image loop (as the study)']:.2f}x faster (goal >= 3x)")


if __name__ == "__main__":
    main()
