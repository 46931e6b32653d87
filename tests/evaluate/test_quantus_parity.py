"""Our metrics against Quantus's on the same maps and masks (Quantus is a test dependency only).

Differences of definition, each undone here as the README documents it: our entropy is divided by
its maximum log(H*W), Quantus's Complexity is not; our top-10 % overlap with the object is an IoU,
Quantus's TopKIntersection the share of the top k pixels on the object; our pointing game takes the
first maximum in pixel order, Quantus's any of tied maxima (the maps here have one maximum each).

The metrics that ask a model (deletion, insertion, ROAD, faithfulness correlation, the randomisation
cascade) run on a small random CNN built here; each test's docstring names the differences it undoes.
"""

import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from prunexplain.evaluate.faithfulness import deletion_insertion, faithfulness_correlation, randomisation_similarity
from prunexplain.evaluate.metrics import MetricInputs, energy_pointing, entropy, gini, pointing_hit, top_iou_mask
from prunexplain.evaluate.road import road

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


# --- Metrics that ask the model ---------------------------------------------------------------------------------

SIZE = 30  # 900 pixels: every step below removes a whole number of pixels in both libraries
IDENTITY = lambda x: x  # noqa: E731  the model reads the 0..1 image: a removed pixel is 0 in both libraries


@dataclass
class ModelCase:
    model: nn.Module
    images: torch.Tensor  # [N, C, SIZE, SIZE], values in 0.05..0.95 (no pixel is black before it is removed)
    maps: np.ndarray  # [N, SIZE, SIZE], a permutation of k / SIZE² per map: no ties, 1/900 apart
    classes: torch.Tensor  # the model's prediction on each whole image
    probabilities: np.ndarray  # and its softmax probability

    def quantus(self, metric, a_batch, images=slice(None), **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(model=self.model, x_batch=self.images[images].numpy(),
                          y_batch=self.classes[images].numpy(), a_batch=a_batch, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: one thread runs it many times faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def model_case(channels: int = 3) -> ModelCase:
    """8 images of coloured waves with noise, blob-shaped maps, and a random CNN (He-initialised, its last
    layer scaled up) whose predictions differ between the images and change as pixels go."""
    rng = np.random.default_rng(0)
    n = 8
    rows, cols = np.mgrid[:SIZE, :SIZE] / SIZE
    images = np.stack([
        rng.random((3, 1, 1)) * (1 + np.sin(rng.uniform(2, 9) * rows + rng.uniform(0, 6))
                                 * np.cos(rng.uniform(2, 9) * cols)) / 2 + 0.2 * rng.random((3, SIZE, SIZE))
        for _ in range(n)])
    images = torch.from_numpy(0.05 + 0.9 * images.clip(0, 1)[:, :channels]).float()
    blobs = np.stack([np.exp(-((rows - rng.random()) ** 2 + (cols - rng.random()) ** 2) / rng.uniform(0.02, 0.2))
                      + 0.3 * rng.random((SIZE, SIZE)) for _ in range(n)])
    maps = (blobs.reshape(n, -1).argsort(1).argsort(1) / SIZE**2).reshape(n, SIZE, SIZE).astype(np.float32)
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leaves the global seed to the other tests
        torch.manual_seed(4)
        model = nn.Sequential(nn.Conv2d(channels, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(144, 10)).eval()
        for layer in (model[0], model[2], model[6]):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            layer.bias.normal_(0, 0.1)
        model[0].bias.copy_(-0.5 * model[0].weight.sum((1, 2, 3)))  # centres the 0..1 input
        model[6].weight *= 4
        probabilities = model(images).softmax(1)
    classes = probabilities.argmax(1)
    return ModelCase(model, images, maps, classes, probabilities.gather(1, classes[:, None])[:, 0].numpy())


def test_deletion_is_quantus_pixel_flipping():
    """Deletion against PixelFlipping with the same steps. Differences undone: Quantus's curve starts after
    the first step, without the whole image, and its AUC (`return_auc_per_sample`) integrates that curve
    with dx=1 (through np.trapz, gone in NumPy 2.4); ours has the whole image's probability first and
    dx=1/steps, so the test completes Quantus's curve and integrates it as ours. Quantus flips channel
    values, the map broadcast over the three channels and sorted by value (argsort of -map: no abs, the
    three copies of a pixel next to one another as the maps have no ties), so `features_in_step` is
    3·H·W/steps; its "black" is each image's minimum value, ours 0: `perturb_baseline=0.0`."""
    case, steps = model_case(), 12
    features = 3 * SIZE**2 // steps
    curve = np.array(case.quantus(quantus.PixelFlipping(features_in_step=features, perturb_baseline=0.0,
                                                        normalise=False, disable_warnings=True), case.maps[:, None]))
    expected = np.trapezoid(np.column_stack([case.probabilities, curve]), dx=1 / steps, axis=1)
    deletion, _ = deletion_insertion(case.model, case.images, case.maps, case.classes, IDENTITY, steps=steps)
    assert curve.shape == (len(deletion), steps) and np.ptp(curve) > 0.1
    assert np.allclose(deletion, expected, atol=1e-3)


def test_insertion_follows_from_quantus_region_perturbation_lerf():
    """Quantus has no insertion metric, but RegionPerturbation(order="lerf") removes the least relevant
    pixels first: once the H·W − t least relevant are gone only the top t are left, insertion's image at
    t. Differences undone: RegionPerturbation returns the fall of the probability from the whole image's
    (AOPC's terms), removes one region per model call (1-pixel patches here: H·W calls) and its curve has
    no point for the whole image, so the test reads it at t = k·H·W/steps and takes the whole image's
    probability for t = H·W; "black" as for deletion."""
    case, steps, pixels = model_case(), 12, SIZE**2
    falls = np.array(case.quantus(quantus.RegionPerturbation(patch_size=1, order="lerf", regions_evaluation=pixels,
                                                             perturb_baseline=0.0, normalise=False,
                                                             disable_warnings=True), case.maps[:, None]))
    inserted = np.arange(steps) * pixels // steps  # the top pixels left after falls[:, pixels - inserted - 1]
    curve = np.column_stack([case.probabilities[:, None] - falls[:, pixels - inserted - 1], case.probabilities])
    _, insertion = deletion_insertion(case.model, case.images, case.maps, case.classes, IDENTITY, steps=steps)
    assert np.allclose(insertion, np.trapezoid(curve, dx=1 / steps, axis=1), atol=1e-3) and np.ptp(curve) > 0.1


@pytest.mark.parametrize("channels", [1, 3])
def test_road_is_quantus_road_without_noise(channels):
    """MoRF and LeRF against Quantus's ROAD, noise off: our conjugate gradients (tolerance 1e-4, float32)
    and Quantus's sparse solve impute the same values to a few 1e-3, the same predictions on these images
    (a prediction on the edge could still flip; none does here).
    Differences undone: Quantus returns the accuracy per percentage averaged over the images (of its
    first batch only: road.py:280 keeps `evaluation_scores[0]`), so it is asked one image at a time,
    and our score is the mean of that image's curve; the percentages are ours, 100·k/(steps+1), and
    Quantus's int(H·W·p/100) pixels are our round(k/(steps+1)·H·W) at 30 px; Quantus has MoRF only, so
    LeRF is its MoRF of the negated map. With three channels Quantus fails (IndexError): road.py:318-329
    sorts the map broadcast over the channels, C·H·W indices, and passes them to
    `noisy_linear_imputation`, which indexes a mask of H·W pixels (perturb_func.py:750-753); its own
    tests run ROAD on MNIST only. There the test hands Quantus the map repeated over the channels (so
    it removes int(3·H·W·p/100) channel values, the three copies of each pixel together) and turns the
    channel-value indices into pixel indices before imputing."""
    case, steps, pixels = model_case(channels), 9, SIZE**2
    percentages = [100 * k // (steps + 1) for k in range(1, steps + 1)]
    assert all(pixels * p % 100 == 0 for p in percentages)
    impute = quantus.functions.perturb_func.noisy_linear_imputation

    def impute_pixels(arr, indices, **kwargs):  # Quantus's channel-value indices -> the pixels they lie on
        return impute(arr, np.unique(indices % pixels), **kwargs)

    perturb = impute_pixels if channels == 3 else None  # None: Quantus's own
    morf, lerf = road(case.model, case.images, case.maps, case.classes, IDENTITY, noise=0.0, steps=steps)
    for sign, ours in ((1, morf), (-1, lerf)):
        expected = [np.mean(list(case.quantus(
            quantus.ROAD(percentages=percentages, noise=0.0, perturb_func=perturb, normalise=False,
                         disable_warnings=True),
            sign * case.maps[i : i + 1, None].repeat(channels, 1), images=slice(i, i + 1)).values()))
            for i in range(len(ours))]
        assert np.allclose(ours, expected, atol=1e-3)
    assert 0 < morf.mean() < 1 and 0 < lerf.mean() < 1  # the predictions do change as pixels go


def test_faithfulness_correlation_is_quantus_with_our_subsets(monkeypatch):
    """Against FaithfulnessCorrelation given the same random subsets. Ours draws `share` of the pixels from
    a torch.Generator, Quantus `subset_size` of the C·H·W channel values from np.random.choice: the test
    reads the subsets ours used off the inputs its model received (the pixels turned 0) and has
    np.random.choice return each of them, as its three channels' values, in the same order. Then
    Quantus's map sums are 3 times ours, which Pearson ignores. Also undone: Quantus reads the logit by
    default (`softmax=False`), ours the probability; Quantus's default mean over the images
    (`return_aggregate`) and its "black" = each image's minimum (`perturb_baseline=0.0`)."""
    case, runs, share = model_case(), 16, 0.1
    pixels, count = SIZE**2, round(share * SIZE**2)
    seen = []

    class Recording(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return case.model(x)

    ours = faithfulness_correlation(Recording(), case.images, case.maps, case.classes, IDENTITY, runs=runs,
                                    share=share, seed=1)
    subsets = [np.flatnonzero(image) for batch in seen if (batch == 0).any()
               for image in (batch == 0).all(1).flatten(1).numpy()]
    assert len(subsets) == runs * len(ours) and all(len(s) == count for s in subsets)
    draws = iter(subsets)

    def choice(features, size, replace=True):
        assert (features, size, replace) == (3 * pixels, 3 * count, False)
        subset = next(draws)
        return np.concatenate([subset + channel * pixels for channel in range(3)])

    monkeypatch.setattr(np.random, "choice", choice)
    expected = case.quantus(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=3 * count,
                                                            perturb_baseline=0.0, normalise=False,
                                                            return_aggregate=False, disable_warnings=True),
                            case.maps[:, None], softmax=True)
    assert np.allclose(ours, expected, atol=1e-3) and next(draws, None) is None and np.ptp(ours) > 0.1


def test_randomisation_similarity_is_quantus_mprt_with_our_weights(monkeypatch):
    """The cascade against MPRT (layer_order="top_down", Spearman) given the same random weights. Quantus
    re-initialises every module with a `reset_parameters` (BatchNorm too; this model has none) by that
    method, PyTorch's default init, after torch.manual_seed(seed + 1); ours draws convolution and linear
    weights normal × the layer's std, bias 0, from one seeded torch.Generator. The test records the
    weights of our fully randomised copy (the explainer sees it after the last step) and has Quantus's
    `reset_parameters` load them, top layer first. Also undone: Quantus takes |map| and divides by the
    maximum by default (abs=True, normalise=True), ours ranks the signed maps; Quantus hands the explainer
    the classes (`targets`), ours gives it none, so both explain the same fixed classes; Quantus's extra
    "original" entry compares the maps with themselves."""
    case = model_case()
    last = {}

    def explain(model, inputs, targets=case.classes, **_):  # gradient × input of the fixed classes
        last.update({k: v.clone() for k, v in model.state_dict().items()})
        x = torch.as_tensor(inputs).clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(model(x).gather(1, torch.as_tensor(targets).view(-1, 1)).sum(), x)
        return (gradient * x).sum(1).detach().numpy()

    ours = randomisation_similarity(case.model, case.images, explain, seed=3)
    randomised = [(last[f"{name}.weight"], last[f"{name}.bias"]) for name, _ in ours]
    replay = iter(randomised)

    def reset_parameters(layer):
        weight, bias = next(replay)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)

    for kind in (nn.Conv2d, nn.Linear):
        monkeypatch.setattr(kind, "reset_parameters", reset_parameters)
    metric = quantus.MPRT(layer_order="top_down", similarity_func=quantus.similarity_func.correlation_spearman,
                          abs=False, normalise=False, disable_warnings=True)
    with torch.random.fork_rng(devices=[]):  # Quantus seeds the global generator
        expected = case.quantus(metric, None, explain_func=explain)
    assert list(expected) == ["original"] + [name for name, _ in ours] and next(replay, None) is None
    assert np.allclose(expected["original"], 1)
    for name, similarity in ours:
        assert np.allclose(similarity, expected[name], atol=1e-3)
    assert max(similarity.max() for _, similarity in ours) < 0.9  # the random weights do change the maps
