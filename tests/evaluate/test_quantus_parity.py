"""Our metrics against Quantus's on the same maps and masks (Quantus is a test dependency only).

Differences of definition, each undone here as the README documents it: our entropy is divided by
its maximum log(H*W), Quantus's Complexity is not; our top-10 % overlap with the object is an IoU,
Quantus's TopKIntersection the share of the top k pixels on the object; our pointing game takes the
first maximum in pixel order, Quantus's any of tied maxima (the maps here have one maximum each).
"""

import warnings

import numpy as np
import pytest

from prunexplain.evaluate.metrics import MetricInputs, energy_pointing, entropy, gini, pointing_hit, top_iou_mask

quantus = pytest.importorskip("quantus")  # in the dev extra: installed by `make test`, so CI runs these


@pytest.fixture(scope="module")
def case():
    """Blob-shaped maps with noise, peak 1, each with one maximum, and rectangular object masks."""
    rng = np.random.default_rng(0)
    n, size = 8, 24
    rows, cols = np.mgrid[:size, :size]
    maps = np.stack([
        np.exp(-((rows - rng.uniform(0, size)) ** 2 + (cols - rng.uniform(0, size)) ** 2) / rng.uniform(4, 60))
        + 0.05 * rng.random((size, size)) for _ in range(n)]).astype(np.float32)
    maps /= maps.reshape(n, -1).max(1)[:, None, None]
    masks = np.zeros((n, size, size), bool)
    for i in range(n):  # every other object around the map's peak, so that some maps point at it
        top, left = np.unravel_index(maps[i].argmax(), maps[i].shape) if i % 2 else rng.integers(0, size - 8, 2)
        top, left = max(top - 3, 0), max(left - 3, 0)
        masks[i, top : top + rng.integers(3, 8), left : left + rng.integers(3, 8)] = True
    assert ((maps.reshape(n, -1) == 1).sum(1) == 1).all()
    images = rng.random((n, 3, size, size)).astype(np.float32)
    return MetricInputs(maps=maps, masks=masks, share=0.1), images


def _quantus(metric, case, masks=True):
    inputs, images = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extra = {"s_batch": inputs.masks[:, None].astype(float)} if masks else {}
        return np.array(metric(model=None, x_batch=images, y_batch=np.zeros(len(images), int),
                               a_batch=inputs.maps[:, None], **extra))


def test_energy_pointing_game_is_quantus_attribution_localisation(case):
    expected = _quantus(quantus.AttributionLocalisation(disable_warnings=True), case)
    assert np.allclose(energy_pointing(case[0]), expected, atol=1e-6)


def test_pointing_game_is_quantus_pointing_game(case):
    expected = _quantus(quantus.PointingGame(disable_warnings=True), case)
    assert np.array_equal(pointing_hit(case[0]), expected) and 0 < expected.mean() < 1


def test_gini_is_quantus_sparseness(case):
    expected = _quantus(quantus.Sparseness(disable_warnings=True), case, masks=False)
    assert np.allclose(gini(case[0]), expected, atol=1e-5)  # Quantus adds 1e-7 to every value first


def test_entropy_times_its_maximum_is_quantus_complexity(case):
    inputs = case[0]
    expected = _quantus(quantus.Complexity(disable_warnings=True), case, masks=False)
    assert np.allclose(entropy(inputs) * np.log(inputs.maps[0].size), expected, atol=1e-5)


def test_top10_iou_follows_from_quantus_top_k_intersection(case):
    inputs = case[0]
    k = round(inputs.share * inputs.maps[0].size)
    hits = _quantus(quantus.TopKIntersection(k=k, disable_warnings=True), case) * k  # top pixels on the object
    expected = hits / (k + inputs.masks.reshape(len(hits), -1).sum(1) - hits)
    assert np.allclose(top_iou_mask(inputs), expected, atol=1e-9) and expected.max() > 0
