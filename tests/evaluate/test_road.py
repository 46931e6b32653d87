import warnings

import numpy as np
import pytest
import torch
from torch import nn

from prunexplain.evaluate.faithfulness import faithfulness_correlation
from prunexplain.evaluate.road import impute, road, solve

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


def test_a_smaller_holes_solution_only_speeds_the_solve():
    """ROAD starts each step's solve from the step before's: the answer is the same system's."""
    images = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0)).double()
    ranks = torch.randperm(24 * 24, generator=torch.Generator().manual_seed(1)).view(1, 1, 24, 24).expand(2, 1, 24, 24)
    small, large = ((ranks < share * 24 * 24).double().expand_as(images) for share in (0.3, 0.6))
    cold = solve(images, large, tolerance=1e-10)
    warm = solve(images, large, tolerance=1e-10, guess=solve(images, small, tolerance=1e-10))
    assert torch.allclose(cold, warm, atol=1e-8) and (cold[large == 0] == 0).all()
