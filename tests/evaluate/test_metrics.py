import numpy as np
import pytest
import torch
from torch import nn

from prunexplain.config import ModelSettings
from prunexplain.evaluate.faithfulness import deletion_insertion, randomisation_similarity
from prunexplain.evaluate.metrics import METRICS, MetricInputs, bootstrap_mean
from prunexplain.explain.cam import explain
from prunexplain.models import build_model


def _masks(n=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        y, x = rng.integers(0, size - 5, 2)
        masks[i, y : y + 5, x : x + 5] = True
    return masks


def _run(name, **inputs):
    return METRICS[name].function(MetricInputs(**inputs))


def test_a_map_equal_to_the_mask_scores_one_on_localisation():
    masks = _masks()
    maps = masks.astype(np.float32)
    assert np.allclose(_run("energy_pointing_game", maps=maps, masks=masks), 1)
    assert np.allclose(_run("pointing_game_hit", maps=maps, masks=masks), 1)
    inverse = 1 - maps
    assert np.allclose(_run("energy_pointing_game", maps=inverse, masks=masks), 0)
    assert np.allclose(_run("pointing_game_hit", maps=inverse, masks=masks), 0)


def test_top_iou_with_the_mask_is_exact_on_a_known_case():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, :2] = True  # 20 pixels
    maps = np.zeros((1, 10, 10), np.float32)
    maps[0, 0] = 1  # the top 10 % = the first row: 10 pixels inside the mask
    assert _run("top10_iou_mask", maps=maps, masks=masks) == pytest.approx([0.5])


def test_agreement_with_the_dense_map():
    rng = np.random.default_rng(1)
    maps = rng.random((6, 12, 12)).astype(np.float32)
    for name in ("spearman_to_dense", "top10_iou_dense", "ssim_to_dense"):
        assert np.allclose(_run(name, maps=maps, reference=maps), 1)
    other = rng.random((6, 12, 12)).astype(np.float32)
    assert np.abs(_run("spearman_to_dense", maps=maps, reference=other)).max() < 0.3
    assert np.allclose(_run("spearman_to_dense", maps=maps, reference=1 - maps), -1)
    from scipy.stats import spearmanr

    assert _run("spearman_to_dense", maps=maps[:1], reference=other[:1])[0] == pytest.approx(
        spearmanr(maps[0].ravel(), other[0].ravel()).statistic
    )


def test_complexity_of_flat_and_single_pixel_maps():
    flat = np.ones((1, 8, 8))
    point = np.zeros((1, 8, 8))
    point[0, 3, 4] = 1
    assert _run("entropy", maps=flat) == pytest.approx([1]) and _run("entropy", maps=point) == pytest.approx([0])
    assert _run("gini", maps=flat) == pytest.approx([0]) and _run("gini", maps=point) == pytest.approx([63 / 64])


def test_small_negatives_of_the_pil_resize_count_as_no_evidence():
    """PIL's bicubic keeps its overshoot below 0: mass metrics read the positive part, so a ring of
    -0.05 around the object changes nothing, while rank metrics place those pixels last."""
    masks = _masks(n=4)
    maps = masks.astype(np.float32)
    ringed = np.where(masks, maps, -0.05).astype(np.float32)
    for name in ("energy_pointing_game", "entropy", "gini", "pointing_game_hit"):
        assert np.allclose(_run(name, maps=ringed, masks=masks), _run(name, maps=maps, masks=masks)), name
    assert np.allclose(_run("energy_pointing_game", maps=ringed, masks=masks), 1)
    assert (_run("gini", maps=ringed) <= 1).all()
    for name in ("spearman_to_dense", "top10_iou_dense", "ssim_to_dense"):
        assert np.allclose(_run(name, maps=ringed, reference=maps), 1, atol=1e-6), name
    assert np.allclose(_run("top10_iou_mask", maps=ringed, masks=masks), _run("top10_iou_mask", maps=maps, masks=masks))


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    mean, low, high = bootstrap_mean(small)
    assert low < mean < high
    _, low_l, high_l = bootstrap_mean(large)
    assert high_l - low_l < (high - low) / 5
    assert bootstrap_mean(small) == bootstrap_mean(small)


class _ReadsTheSquare(nn.Module):
    """Class 0's logit is the brightness inside a fixed square; class 1's is constant."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())

    def forward(self, x):
        inside = (x.mean(1) * self.mask).sum((1, 2)) / self.mask.sum()
        return torch.stack([8 * inside, torch.full_like(inside, 2.0)], 1)


def test_deletion_auc_of_a_perfect_map_is_lower_than_of_a_random_map():
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:9, 6:11] = True
    model = _ReadsTheSquare(mask)
    images = torch.rand(8, 3, 16, 16) * 0.5 + 0.5
    classes = torch.zeros(8, dtype=torch.long)
    perfect = np.repeat(mask.numpy()[None].astype(np.float32), 8, 0)
    random = np.random.default_rng(0).random((8, 16, 16)).astype(np.float32)
    deletion_p, insertion_p = deletion_insertion(model, images, perfect, classes, lambda x: x, steps=16)
    deletion_r, insertion_r = deletion_insertion(model, images, random, classes, lambda x: x, steps=16)
    assert (deletion_p < deletion_r).all() and (insertion_p > insertion_r).all()


def test_the_sanity_check_flags_maps_that_ignore_the_model():
    torch.manual_seed(0)
    model = build_model(10, ModelSettings(width=0.125, pool_size=2)).eval()
    inputs = torch.rand(6, 3, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradcam = lambda m, x: explain(m, x, "gradcam", target_layer="features.42").numpy()  # noqa: E731
    edges = lambda m, x: x.mean(1).diff(dim=-1, prepend=x[..., :1].mean(1)).abs().numpy()  # noqa: E731
    survived = randomisation_similarity(model, inputs, edges)
    changed = randomisation_similarity(model, inputs, gradcam)
    assert len(changed) == 16 and changed[0][0] == "classifier.6"
    assert np.allclose(survived[-1][1], 1)  # a model-blind map: identical after full randomisation
    assert changed[-1][1].mean() < 0.5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    ends = randomisation_similarity(model, inputs, gradcam, steps={0, -1})  # explains twice, not 16 times
    assert [name for name, _ in ends] == ["classifier.6", changed[-1][0]]
    assert np.array_equal(ends[0][1], changed[0][1]) and np.array_equal(ends[1][1], changed[-1][1])
