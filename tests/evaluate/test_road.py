import warnings

import numpy as np
import pytest
import torch
from torch import nn

from prunexplain.evaluate.faithfulness import faithfulness_correlation
from prunexplain.evaluate.road import _conjugate_gradients, _Multigrid, _neighbour_sum, _operator, impute, road, solve

IDENTITY = lambda x: x  # noqa: E731


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_imputation_solves_roads_linear_system_as_quantus_does(share):
    """The batched conjugate-gradient solve equals Quantus's sparse solve per image (noise off)."""
    noisy_linear_imputation = pytest.importorskip("quantus.functions.perturb_func").noisy_linear_imputation
    rng = np.random.default_rng(0)
    n, size = 3, 24
    images = rng.random((n, 3, size, size)).astype(np.float32)
    chosen = [np.sort(rng.choice(size * size, int(share * size * size), replace=False)) for _ in range(n)]
    removed = np.zeros((n, size * size), bool)
    for i, indices in enumerate(chosen):
        removed[i, indices] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.stack([noisy_linear_imputation(images[i], chosen[i], noise=0.0) for i in range(n)])
    holes = torch.from_numpy(removed.reshape(n, 1, size, size))
    filled = impute(torch.from_numpy(images).double(), holes, tolerance=1e-8).numpy()
    assert np.allclose(filled, expected, atol=2e-5)
    quick = impute(torch.from_numpy(images), holes).numpy()  # float32 to the default tolerance: ROAD's own
    assert np.allclose(quick, expected, atol=5e-3) and quick.dtype == np.float32
    kept = ~removed.reshape(n, 1, size, size).repeat(3, 1)
    assert np.array_equal(filled[kept], images[kept])


def test_imputation_noise_has_the_asked_deviation():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    removed = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) < 0.5
    plain = impute(images, removed)
    noisy = impute(images, removed, noise=0.05, generator=torch.Generator().manual_seed(2))
    difference = (noisy - plain)[removed.expand_as(images)]
    assert difference.std().item() == pytest.approx(0.05, rel=0.05) and torch.equal(noisy[~removed.expand_as(images)],
                                                                                      images[~removed.expand_as(images)])


class _Region(nn.Module):
    """Class 0 when the top-left quarter is brighter than 0.5 on average, else class 1."""

    def forward(self, x):
        brightness = x[:, :, :8, :8].mean((1, 2, 3))
        return torch.stack([brightness - 0.5, 0.5 - brightness], 1) * 50


def test_road_falls_first_for_a_map_on_what_the_model_reads():
    images = torch.full((4, 3, 16, 16), 0.1)
    images[:, :, :8, :8] = 0.9  # every image is class 0 for the model
    on_region = np.zeros((4, 16, 16), np.float32)
    on_region[:, :8, :8] = 1 + np.random.default_rng(0).random((4, 8, 8))
    elsewhere = 2 - on_region.clip(max=1)  # the region least important
    classes = torch.zeros(4, dtype=torch.long)
    morf, lerf = road(_Region(), images, on_region, classes, IDENTITY, noise=0.0)
    assert (morf < 0.5).all() and (lerf == 1).all()
    morf, lerf = road(_Region(), images, elsewhere, classes, IDENTITY, noise=0.0)
    assert (morf > 0.5).all() and (lerf < 0.5).all()


class _Linear(nn.Module):
    """Logit of class 0 = Σ w·x, class 1 = 0: the probability of class 0 rises with every weighted pixel."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def forward(self, x):
        score = (x * self.weights).sum((1, 2, 3)) * 0.05
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_faithfulness_correlation_rewards_the_map_of_what_the_model_weighs():
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(1, 3, 16, 16, generator=generator)
    images = torch.rand(3, 3, 16, 16, generator=generator)
    faithful = (weights * images).sum(1).numpy()
    classes = torch.zeros(3, dtype=torch.long)
    model = _Linear(weights)
    good = faithfulness_correlation(model, images, faithful, classes, IDENTITY, runs=40)
    bad = faithfulness_correlation(model, images, -faithful, classes, IDENTITY, runs=40)
    noise = faithfulness_correlation(model, images, np.random.default_rng(0).random((3, 16, 16)), classes, IDENTITY,
                                     runs=40)
    assert (good > 0.95).all() and (bad < -0.95).all() and (np.abs(noise) < 0.6).all()
    again = faithfulness_correlation(model, images, faithful, classes, IDENTITY, runs=40)
    assert np.array_equal(good, again)  # the subsets come from the seed


def _quantus_fill(images: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Quantus's sparse solve per image (noise off): the reference."""
    noisy_linear_imputation = pytest.importorskip("quantus.functions.perturb_func").noisy_linear_imputation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.stack([noisy_linear_imputation(image, np.flatnonzero(hole), noise=0.0)
                         for image, hole in zip(images, removed, strict=True)])


def _blob(n: int, size: int, share: float) -> torch.Tensor:
    """ROAD's holes for Gaussian-blob maps: the `share` of pixels nearest each image's centre, `[N, 1, S, S]`."""
    generator = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(n, 2, 1, 1, generator=generator) * size
    distances = ((rows - centres[:, 0]) ** 2 + (cols - centres[:, 1]) ** 2).flatten(1)
    ranks = distances.argsort(dim=1, stable=True).argsort(dim=1)
    return (ranks < share * size * size).view(n, 1, size, size)


def test_the_multigrid_preconditioner_is_symmetric_positive_definite():
    """Conjugate gradients need M⁻¹ symmetric positive definite: <M⁻¹ r1, r2> = <r1, M⁻¹ r2> on the holes."""
    generator = torch.Generator().manual_seed(0)
    scattered = torch.rand(2, 1, 37, 30, generator=generator, dtype=torch.float64) < 0.6
    for removed in (_blob(3, 40, 0.5), scattered):
        hole = removed.double()
        multigrid = _Multigrid(hole, _neighbour_sum(torch.ones_like(hole)))
        r1, r2 = (hole * torch.randn(len(hole), 4, *hole.shape[-2:], generator=generator, dtype=torch.float64)
                  for _ in range(2))
        left, right = (multigrid(r1) * r2).sum((2, 3)), (r1 * multigrid(r2)).sum((2, 3))
        scale = multigrid(r1).flatten(2).norm(dim=2) * r2.flatten(2).norm(dim=2)  # to float64's precision
        assert ((left - right).abs() <= 1e-14 * scale).all() and ((multigrid(r1) * r1).sum((2, 3)) > 0).all()


def _iterations(images: torch.Tensor, hole: torch.Tensor, precondition) -> tuple[int, torch.Tensor]:
    """Conjugate gradients from zero preconditioned by `precondition`: iterations, relative residuals."""
    kept, weights = 1 - hole, _neighbour_sum(torch.ones_like(hole[:, :1]))
    system, b = _operator(hole, weights), hole * _neighbour_sum(images * kept)
    solution, iterations = _conjugate_gradients(system, b, torch.zeros_like(images), 1e-4, 1000, precondition)
    residual = (b - system(solution)).flatten(2).norm(dim=2) / b.flatten(2).norm(dim=2)
    return iterations, residual


def test_the_multigrid_cycle_cuts_the_iterations_tenfold():
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    hole = _blob(4, 64, 0.5).float().expand_as(images)
    weights = _neighbour_sum(torch.ones_like(hole[:, :1]))
    plain, plain_residual = _iterations(images, hole, lambda r: r)
    cycled, cycled_residual = _iterations(images, hole, _Multigrid(hole[:, :1], weights))
    assert (plain_residual <= 1e-4).all() and (cycled_residual <= 1e-4).all()
    assert plain >= 50 and cycled * 10 <= plain


@pytest.mark.parametrize("shape", [(33, 47), (1, 40), (40, 1), (2, 3), (9, 130)])
def test_imputation_matches_quantus_at_odd_sizes(shape):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, *shape, generator=generator, dtype=torch.float64)
    removed = torch.rand(2, 1, *shape, generator=generator) < 0.6
    removed[:, :, 0, 0] = False  # something kept
    expected = _quantus_fill(images.numpy(), removed.numpy())
    assert np.allclose(impute(images, removed, tolerance=1e-8).numpy(), expected, atol=2e-5)


def test_imputation_matches_quantus_where_the_holes_touch_the_border():
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    removed = torch.zeros(3, 1, 48, 40, dtype=torch.bool)
    removed[0, :, :, :12] = True  # a band along the left edge
    removed[1, :, 30:, 25:] = True  # the bottom-right corner
    removed[2, :, 5:, :] = True  # all but the top rows
    expected = _quantus_fill(images.numpy(), removed.numpy())
    assert np.allclose(impute(images, removed, tolerance=1e-8).numpy(), expected, atol=2e-5)


def test_nothing_removed_leaves_the_images_as_they_are():
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    removed = torch.zeros(2, 1, 20, 20, dtype=torch.bool)
    assert torch.equal(impute(images, removed), images)
    assert torch.equal(solve(images, removed.float().expand_as(images)), torch.zeros_like(images))


def test_an_image_with_nothing_kept_stays_zero_and_leaves_the_others_alone():
    images = torch.rand(3, 3, 30, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hole = _blob(3, 30, 0.5).double().expand_as(images).clone()
    hole[1] = 1  # everything removed
    filled = solve(images, hole, 1e-10)
    alone = solve(images[[0, 2]], hole[[0, 2]], 1e-10)
    assert (filled[1] == 0).all() and torch.allclose(filled[[0, 2]], alone, atol=1e-8)


def test_holes_of_their_own_per_channel_are_solved_channel_by_channel():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 24, 24, generator=generator, dtype=torch.float64)
    hole = (torch.rand(2, 3, 24, 24, generator=generator) < 0.5).double()
    together = solve(images, hole, 1e-10)
    apart = torch.cat([solve(images[:, [c]], hole[:, [c]], 1e-10) for c in range(3)], 1)
    assert torch.allclose(together, apart, atol=1e-9)
