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
kept one). Plain conjugate gradients need about as many iterations as a hole is wide (on 32 blob holes
of 64 px, 62, 97 and 150 at 20, 50 and 90 % removed; on 8 of 224 px, 170, 270 and 428). Preconditioned
by a multigrid V-cycle (`_Multigrid`, all tensor ops on the batch) they need 4 to 7 at either size,
each costing about 2 plain ones after a set-up worth 6 to 8: the solve is 2.5-5x as fast at 64 px and
10-20x at 224 px. They start from the kept pixels' mean: a pyramid fill saved at most one iteration
for about what one costs, and the smaller hole's solution from ROAD's step before cost iterations (89
against 83 over ROAD's 18 solves at 64 px).

MoRF removes the most relevant pixels first (a faithful map makes the accuracy fall fast: lower is
better), LeRF the least relevant first (higher is better); each score is the mean over the removal
shares of whether the model still predicts the class it predicted on the whole image.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunexplain.evaluate.faithfulness import ToInput, _ranks, probabilities


class _Level(NamedTuple):
    """One grid of the multigrid hierarchy: where its unknowns are (0 or 1), its operator, and its
    smoother's inverse diagonal (zero off the unknowns, so the smoother never leaves them)."""

    mask: torch.Tensor
    system: Callable[[torch.Tensor], torch.Tensor]
    inverse: torch.Tensor


_TAPS = tuple((i, j) for i in range(3) for j in range(3))  # a 3x3 stencil's taps, row by row: 4 is the centre
_COARSE_DAMPING = 1.5  # l1-Jacobi smooths for any weight below 2; 1-1.9 converge alike, 1.5 keeps a margin
_DIRECT = 16  # pixels of the coarsest grid, inverted outright (inverting 64 ran no faster)
_RIDGE = 1e-4  # relative to the diagonal: keeps a singular coarse operator invertible, far below its other scales


def _kernel_sum(x: torch.Tensor) -> torch.Tensor:
    """x convolved with the separable [1 2 1] x [1 2 1] kernel, zero outside the image, as sums of
    shifted slices (ten times a grouped 3x3 convolution's speed on the CPU)."""
    padded = F.pad(x, (1, 1, 1, 1))
    rows = torch.add(padded[..., :-2, :], padded[..., 2:, :]).add_(padded[..., 1:-1, :], alpha=2)
    return torch.add(rows[..., :-2], rows[..., 2:]).add_(rows[..., 1:-1], alpha=2)


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ of each pixel's 8 neighbours times their weights (1/6 along the axes, 1/12 on the diagonals),
    zero outside the image: the [1 2 1] x [1 2 1] / 12 kernel without its centre."""
    return _kernel_sum(x).sub_(x, alpha=4).div_(12)


def _operator(hole: torch.Tensor, weights: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A v on the removed pixels, for v zero elsewhere: (sum of the valid neighbours' weights) v - W v,
    in two passes over the kernel sum (the centre's 4/12 folded into the diagonal)."""
    diagonal, scale = hole * (weights + 1 / 3), hole / -12
    return lambda v: _kernel_sum(v).mul_(scale).addcmul_(diagonal, v)


def _stencil(taps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 3x3 stencil whose taps vary per pixel (`taps` `[N, 9, H, W]`, in `_TAPS` order), zero outside."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    result = taps[:, :1] * padded[..., :h, :w]
    for k, (i, j) in enumerate(_TAPS[1:], 1):
        result.addcmul_(taps[:, k : k + 1], padded[..., i : i + h, j : j + w])
    return result


def _upsample(u: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear interpolation along `dim` onto twice the points: coarse point k is fine point 2k, fine
    point 2k + 1 the mean of coarse k and k + 1, the last odd one a copy of the last coarse (so
    constants stay constants up to an even-sized image's last row or column)."""
    n = u.shape[dim]
    following = torch.cat([u.narrow(dim, 1, n - 1), u.narrow(dim, n - 1, 1)], dim)
    return torch.stack([u, (u + following) / 2], dim + 1).flatten(dim, dim + 1)


def _downsample(r: torch.Tensor, dim: int) -> torch.Tensor:
    """The transpose of `_upsample`: halves `dim`, of even size."""
    pairs = r.unflatten(dim, (r.shape[dim] // 2, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    n = even.shape[dim]
    coarse = torch.add(even, odd, alpha=0.5)
    coarse.narrow(dim, 1, n - 1).add_(odd.narrow(dim, 0, n - 1), alpha=0.5)
    coarse.narrow(dim, n - 1, 1).add_(odd.narrow(dim, n - 1, 1), alpha=0.5)
    return coarse


def _prolong(u: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear interpolation of a coarse grid onto the `shape` grid twice as fine."""
    return _upsample(_upsample(u, 3), 2)[..., : shape[0], : shape[1]]


def _restrict(r: torch.Tensor) -> torch.Tensor:
    """The transpose of `_prolong`: full weighting onto the grid half as fine."""
    h, w = r.shape[-2:]
    even = F.pad(r, (0, w % 2, 0, h % 2)) if h % 2 or w % 2 else r
    return _downsample(_downsample(even, 3), 2)


def _galerkin(fine: _Level, shape: tuple[int, int]) -> torch.Tensor:
    """The coarse operator Pᵀ A P (P: `_prolong` onto the fine unknowns) as a 3x3 stencil of `shape`:
    bilinear P keeps it 3x3, so applying it to the 9 combs of every third coarse pixel in each axis (as
    9 channels) reads each tap off where the comb hits that tap's neighbour."""
    h, w = shape
    combs = torch.zeros(1, 9, h, w, dtype=fine.mask.dtype, device=fine.mask.device)
    for k, (i, j) in enumerate(_TAPS):
        combs[:, k, i::3, j::3] = 1
    responses = _restrict(fine.system(fine.mask * _prolong(combs, fine.mask.shape[-2:])))
    rows, cols = (torch.arange(n, device=combs.device) for n in shape)
    offsets = torch.tensor(_TAPS, device=combs.device)[:, :, None, None] - 1
    comb = 3 * ((rows[:, None] + offsets[:, 0]) % 3) + (cols + offsets[:, 1]) % 3  # holding (y + i - 1, x + j - 1)
    return responses.gather(1, comb.expand_as(responses))


def _coarsen(fine: _Level) -> _Level:
    """The next coarser grid: its unknowns are where the Galerkin operator has a diagonal (P touches a
    removed pixel), its smoother l1-Jacobi (each row's absolute sum, which bounds A, so that it
    contracts: plain Jacobi's D⁻¹A reaches 4 on these grids)."""
    taps = _galerkin(fine, tuple((n + 1) // 2 for n in fine.mask.shape[-2:]))  # pixel k of the coarse is 2k
    mask = (taps[:, 4:5] > 0).to(taps.dtype)
    scale = taps.abs().sum(1, keepdim=True) / _COARSE_DAMPING
    return _Level(mask, partial(_stencil, taps), mask / torch.where(mask > 0, scale, 1))


def _inverse(level: _Level) -> torch.Tensor:
    """A small grid's operator inverted, `[N, pixels, pixels]`: its columns are its response to each
    pixel's unit vector (as channels), plus 1 on the diagonal off the unknowns and a ridge of `_RIDGE`
    times the diagonal, for a coarse operator can be singular (P's columns on the hole can coincide, as
    where one removed pixel lies between 4 coarse ones): the residuals never point that way, so the
    ridge only keeps the factorisation finite, and it stays symmetric positive definite."""
    h, w = level.mask.shape[-2:]
    units = torch.eye(h * w, dtype=level.mask.dtype, device=level.mask.device).view(1, h * w, h, w)
    matrix = level.system(level.mask * units).flatten(2)
    diagonal = matrix.diagonal(dim1=-2, dim2=-1)
    return _sweep_inverse(matrix + torch.diag_embed(diagonal * _RIDGE + 1 - level.mask.flatten(1)))


def _sweep_inverse(matrix: torch.Tensor) -> torch.Tensor:
    """The inverses of symmetric positive definite `matrix` `[N, n, n]` by sweeping each pivot in turn
    (Gauss-Jordan, which needs no pivoting on them): n rank-one updates of tensor ops rather than LAPACK,
    whose threaded factorisations of small matrices stall for tens of ms on a busy CPU."""
    a = matrix.clone()
    for k in range(a.shape[-1]):
        column = a[:, :, k].clone()
        scaled = column / column[:, k, None]
        a -= column[:, :, None] * scaled[:, None, :]
        a[:, :, k], a[:, k, :], a[:, k, k] = scaled, scaled, -1 / column[:, k]
    return -(a + a.mT) / 2


class _Multigrid:
    """A symmetric multigrid V-cycle on the removed pixels, the preconditioner of `solve`'s conjugate
    gradients: one Jacobi sweep before and after each coarse correction, bilinear prolongation P and
    its transpose as restriction, Galerkin coarse operators Pᵀ A P halving the grid until it has at
    most `_DIRECT` pixels, which are solved exactly. `hole` `[N, 1, H, W]`: one hierarchy serves every
    channel.

    Galerkin rather than the same stencil on a coarse hole: a coarse pixel is an unknown wherever its P
    touches a removed pixel, and Pᵀ A P carries the hole's exact shape, and its border with the kept
    pixels, down every grid. A rediscretised coarse hole must guess both: on 32 blob holes of 64 px at
    20, 50 and 90 % removed, Galerkin took 5, 5 and 6 iterations; a coarse hole wherever any of the
    fine pixels around is one 10, 17 and 18; wherever all are 9, 10 and no convergence, its coarse holes
    having lost their kept border (on scattered holes: 3-4 against 29-56 and 5-10).

    Symmetric, with smoothers that contract in A's norm (Jacobi on the fine grid, whose D⁻¹A stays
    below 1.8; l1-Jacobi below), the cycle is symmetric positive definite on the holes, as conjugate
    gradients need."""

    def __init__(self, hole: torch.Tensor, weights: torch.Tensor):
        level, self.levels = _Level(hole, _operator(hole, weights), hole / weights), []
        while level.mask[0, 0].numel() > _DIRECT:
            self.levels.append(level)
            level = _coarsen(level)
        self.direct = _inverse(level)

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        """The cycle's approximation of A⁻¹ `residual` (zero off the removed pixels)."""
        return self._cycle(0, residual)

    def _cycle(self, depth: int, residual: torch.Tensor) -> torch.Tensor:
        if depth == len(self.levels):
            return (residual.flatten(2) @ self.direct).view_as(residual)
        level = self.levels[depth]
        x = level.inverse * residual
        correction = self._cycle(depth + 1, _restrict(residual - level.system(x)))
        x = torch.addcmul(x, level.mask, _prolong(correction, residual.shape[-2:]))
        return torch.addcmul(x, level.inverse, residual - level.system(x))


def _conjugate_gradients(system: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, v: torch.Tensor,
                         tolerance: float, max_iterations: int,
                         precondition: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Preconditioned conjugate gradients for every image and channel at once (each its own system),
    from `v` until every residual's norm is within `tolerance` of its right-hand side's, and the number
    of iterations that took."""
    residual = b - system(v)
    norm, target = _dot(residual, residual), tolerance**2 * _dot(b, b)
    direction, inner, iteration = torch.zeros_like(b), torch.ones_like(norm), 0  # no direction before the first
    while iteration < max_iterations and not bool((norm <= target).all()):
        preconditioned = precondition(residual)
        new_inner = _dot(residual, preconditioned)
        ratio = torch.where(inner > 0, new_inner / inner.clamp(min=1e-30), 0)
        direction, inner = torch.addcmul(preconditioned, ratio, direction), new_inner
        product = system(direction)
        curvature = _dot(direction, product)
        step = torch.where(curvature > 0, inner / curvature.clamp(min=1e-30), 0)
        v, residual = torch.addcmul(v, step, direction), torch.addcmul(residual, step, product, value=-1)
        norm = _dot(residual, residual)
        iteration += 1
    return v, iteration


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image and channel, the inner product of `a` and `b` `[N, C, H, W]`, as `[N, C, 1, 1]`."""
    return torch.linalg.vecdot(a.flatten(2), b.flatten(2))[..., None, None]


def impute(images: torch.Tensor, removed: torch.Tensor, noise: float = 0.0, generator: torch.Generator | None = None,
           tolerance: float = 1e-4, max_iterations: int = 1000) -> torch.Tensor:
    """`images` `[N, C, H, W]` with the pixels where `removed` `[N, 1, H, W]` is True filled by noisy
    linear imputation (see the module's docstring), to `tolerance` of the residual's norm relative to
    the right-hand side's; kept pixels are returned unchanged. Computes in the images' dtype."""
    x = images
    hole = removed.to(x.dtype).expand_as(x)
    v = solve(x, hole, tolerance, max_iterations)
    if noise:
        v = v + noise * hole * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x * (1 - hole) + v * hole


def solve(x: torch.Tensor, hole: torch.Tensor, tolerance: float = 1e-4, max_iterations: int = 1000) -> torch.Tensor:
    """The noise-free imputation of the pixels where `hole` (`[N, C, H, W]`, 0 or 1) is 1, zero
    elsewhere: conjugate gradients preconditioned by a multigrid cycle, from the mean of the kept
    pixels. An image with no kept pixel has nothing to impute from: its holes stay 0."""
    if not bool((hole == hole[:, :1]).all()):  # holes of their own per channel: each channel its own image
        n, c, h, w = x.shape
        return solve(x.reshape(n * c, 1, h, w), hole.reshape(n * c, 1, h, w), tolerance, max_iterations).view_as(x)
    kept = 1 - hole
    weights = _neighbour_sum(torch.ones_like(x[:, :1]))  # the valid neighbours' weight sum
    b = hole * _neighbour_sum(x * kept)
    count = kept.sum((2, 3), keepdim=True)
    start = (x * kept).sum((2, 3), keepdim=True) / count.clamp(min=1) * (count > 0)
    v = hole * start
    return _conjugate_gradients(_operator(hole, weights), b, v, tolerance, max_iterations,
                                _Multigrid(hole[:, :1], weights))[0]


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
    kept = {"morf": [], "lerf": []}
    for step in range(1, steps + 1):
        count = round(step / (steps + 1) * h * w)
        for order, removed in (("morf", ranks < count), ("lerf", ranks >= h * w - count)):
            filled = impute(images, removed, noise, generator)
            predicted = probabilities(model, filled, to_input, batch_size).argmax(1)
            kept[order].append((predicted == classes).cpu().numpy())
    return np.mean(kept["morf"], 0), np.mean(kept["lerf"], 0)
