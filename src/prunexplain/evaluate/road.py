"""ROAD, RemOve And Debias (Rong et al. 2022): remove pixels in the map's order and fill them by noisy
linear imputation, so that the model sees no tell-tale black holes, then ask whether it still
predicts its class.

Imputation: each removed pixel is the weighted mean of its 8 neighbours (1/6 along the axes, 1/12 on
the diagonals; at the border only the neighbours inside the image, their weights renormalised), all
removed pixels at once: the sparse linear system of ROAD's reference code (Quantus's
`noisy_linear_imputation`), plus Gaussian noise of deviation `noise` on the filled pixels. That code
solves one sparse system per image on the CPU. Here the same system is solved for the whole batch and
every channel together on the device by conjugate gradients, whose matrix-vector product is one 3x3
stencil of shifted sums (the system is symmetric positive definite wherever the removed pixels touch a
kept one), started from a pyramid fill of the hole, or from the step before's solution: ROAD's holes
grow step by step.

MoRF removes the most relevant pixels first (a faithful map makes the accuracy fall fast: lower is
better), LeRF the least relevant first (higher is better); each score is the mean over the removal
shares of whether the model still predicts the class it predicted on the whole image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunexplain.evaluate.faithfulness import ToInput, _ranks


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ of each pixel's 8 neighbours times their weights (1/6 along the axes, 1/12 on the diagonals),
    zero outside the image: the separable [1 2 1] x [1 2 1] / 12 kernel without its centre, as sums of
    shifted slices (ten times a grouped 3x3 convolution's speed on the CPU)."""
    padded = F.pad(x, (1, 1, 1, 1))
    rows = padded[..., :-2, :] + 2 * padded[..., 1:-1, :] + padded[..., 2:, :]
    return (rows[..., :-2] + 2 * rows[..., 1:-1] + rows[..., 2:] - 4 * x) / 12


def _coarse_fill(x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """A smooth first guess of the removed pixels: the kept pixels averaged down a pyramid of halved
    images until every coarse pixel has some, then brought back up (bilinear) into the holes. It
    starts conjugate gradients near the solution, where a zero start needs as many iterations as a
    hole is wide."""
    if bool(kept.all()) or min(x.shape[-2:]) <= 2:
        mean = (x * kept).sum((2, 3), keepdim=True) / kept.sum((2, 3), keepdim=True).clamp(min=1)
        return x * kept + mean * (1 - kept)
    total, count = F.avg_pool2d(x * kept, 2, ceil_mode=True), F.avg_pool2d(kept, 2, ceil_mode=True)
    coarse = _coarse_fill(total / count.clamp(min=1e-12), (count > 0).to(x.dtype))
    return x * kept + F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False) * (1 - kept)


def impute(images: torch.Tensor, removed: torch.Tensor, noise: float = 0.0, generator: torch.Generator | None = None,
           tolerance: float = 1e-4, max_iterations: int = 1000, guess: torch.Tensor | None = None) -> torch.Tensor:
    """`images` `[N, C, H, W]` with the pixels where `removed` `[N, 1, H, W]` is True filled by noisy
    linear imputation (see the module's docstring), to `tolerance` of the residual's norm relative to
    the right-hand side's; kept pixels are returned unchanged. Computes in the images' dtype.
    `guess`: a noise-free imputation of a smaller hole (`solve`), where conjugate gradients start."""
    x = images
    hole = removed.to(x.dtype).expand_as(x)
    v = solve(x, hole, tolerance, max_iterations, guess)
    if noise:
        v = v + noise * hole * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x * (1 - hole) + v * hole


def solve(x: torch.Tensor, hole: torch.Tensor, tolerance: float = 1e-4, max_iterations: int = 1000,
          guess: torch.Tensor | None = None) -> torch.Tensor:
    """The noise-free imputation of the pixels where `hole` (`[N, C, H, W]`, 0 or 1) is 1, zero
    elsewhere: conjugate gradients from `guess` where it has values (a smaller hole's solution: ROAD's
    holes grow step by step) and from a pyramid fill elsewhere."""
    kept = 1 - hole
    weights = _neighbour_sum(torch.ones_like(x[:, :1])).expand_as(x)  # the valid neighbours' weight sum

    def system(v: torch.Tensor) -> torch.Tensor:  # A v on the removed pixels: (sum of weights) v - W v
        return hole * (weights * v - _neighbour_sum(v * hole))

    b = hole * _neighbour_sum(x * kept)
    start = _coarse_fill(x, kept[:, :1])
    v = hole * (start if guess is None else torch.where(guess != 0, guess, start))
    residual = b - system(v)
    direction = residual.clone()
    norm = (residual * residual).sum((2, 3), keepdim=True)
    target = tolerance**2 * (b * b).sum((2, 3), keepdim=True)
    for _ in range(max_iterations):
        if bool((norm <= target).all()):
            break
        product = system(direction)
        curvature = (direction * product).sum((2, 3), keepdim=True)
        step = torch.where(curvature > 0, norm / curvature.clamp(min=1e-30), torch.zeros_like(norm))
        v = v + step * direction
        residual = residual - step * product
        new_norm = (residual * residual).sum((2, 3), keepdim=True)
        ratio = torch.where(norm > 0, new_norm / norm.clamp(min=1e-30), torch.zeros_like(norm))
        direction, norm = residual + ratio * direction, new_norm
    return v


@torch.no_grad()
def road(
    model: nn.Module, images: torch.Tensor, maps: np.ndarray, classes: torch.Tensor, to_input: ToInput,
    noise: float = 0.01, seed: int = 0, steps: int = 9, batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the share of removal steps after which the model still predicts `classes`: MoRF
    (most relevant removed first) and LeRF (least relevant first), step k of `steps` removing
    k / (steps + 1) of the pixels (9: 10 % to 90 %). `images` are 0..1 `[N, 3, H, W]`; the noise is drawn
    from `seed`."""
    model.eval()
    n, _, h, w = images.shape
    ranks = _ranks(maps).view(n, 1, h, w).to(images.device)
    generator = torch.Generator().manual_seed(seed)
    kept, solved = {"morf": [], "lerf": []}, {"morf": None, "lerf": None}
    for step in range(1, steps + 1):
        count = round(step / (steps + 1) * h * w)
        for order, removed in (("morf", ranks < count), ("lerf", ranks >= h * w - count)):
            hole = removed.to(images.dtype).expand_as(images)
            solved[order] = solve(images, hole, guess=solved[order])  # each hole holds the step before's
            filled = images * (1 - hole) + hole * (solved[order] + noise * torch.randn(
                images.shape, generator=generator, dtype=images.dtype).to(images.device))
            predicted = torch.cat([model(to_input(filled[i : i + batch_size])).argmax(1)
                                   for i in range(0, n, batch_size)])
            kept[order].append((predicted == classes).cpu().numpy())
    return np.mean(kept["morf"], 0), np.mean(kept["lerf"], 0)
