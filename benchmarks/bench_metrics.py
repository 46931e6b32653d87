"""Explanation metrics, prunexplain's against Quantus's on the same maps: images per second (median).

The compact VGG-16 at 64 px, 32 images, Gaussian-blob maps. Side by side in one run:
- deletion curve: ours (`deletion_insertion`, both curves, 8 steps, every step of the batch in one
  model batch) against Quantus's PixelFlipping (deletion only, the same 8 steps);
- ROAD's noisy linear imputation at 50 % removed in the map's order: ours (the batch solved at once
  by conjugate gradients) against Quantus's `noisy_linear_imputation` per image;
- the whole ROAD metric at 9 removal shares (10-90 %): ours (`road`, MoRF and LeRF) against Quantus's
  MoRF loop as its `ROAD.evaluate_batch` runs it (per share, a per-image imputation, then one model
  batch): Quantus 0.6.0's `ROAD` itself cannot run on images (its pixel count is taken over the
  channels of the expanded maps, so its indices overrun the imputation's pixel mask: IndexError);
- the randomisation check with saliency (Grad-CAM's maps of a randomised model can be all zero, which
  Quantus refuses): the fully randomised model only (ours: `steps={-1}`, Quantus's
  MPRT with `skip_layers=True`), and the whole cascade layer by layer (ours: every Conv2d and Linear;
  Quantus's: every module with `reset_parameters`, batch norms too, so it explains more models);
- Gini (Sparseness), entropy (Complexity) and energy on the object (AttributionLocalisation).
"""

from __future__ import annotations

import statistics
import time
import warnings

import numpy as np
import torch

from prunexplain.config import ModelSettings
from prunexplain.evaluate.faithfulness import _ranks, deletion_insertion, randomisation_similarity
from prunexplain.evaluate.metrics import MetricInputs, energy_pointing, entropy, gini
from prunexplain.evaluate.road import impute, road
from prunexplain.explain.cam import explain
from prunexplain.models import build_model

IMAGES, SIZE, STEPS, REPEATS = 32, 64, 8, 3  # Quantus needs steps that divide the pixels
SHARES = [10 * k for k in range(1, 10)]  # ROAD's removal shares, %


def _median_s(function) -> float:
    function()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _case():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(10, ModelSettings(width=0.125, pool_size=1)).eval()
    images = torch.rand(IMAGES, 3, SIZE, SIZE, generator=generator)
    rows, cols = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                                indexing="ij")
    centres = torch.rand(IMAGES, 2, generator=generator) * SIZE
    maps = torch.exp(-((rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2) / 200)
    masks = (maps > 0.5).numpy()
    with torch.no_grad():
        classes = model(images).argmax(1)
    return model, images, maps.numpy().astype(np.float32), masks, classes


def _quantus_road_morf(model, x: np.ndarray, a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Quantus's ROAD MoRF curve by its own steps: per share, its imputation of each image, one batch."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    order = np.argsort(-a.reshape(len(a), -1), axis=1)
    kept = []
    for share in SHARES:
        top = order[:, : SIZE * SIZE * share // 100]
        perturbed = np.stack([noisy_linear_imputation(x[i], top[i], noise=0.01) for i in range(len(x))])
        with torch.no_grad():
            kept.append(model(torch.from_numpy(perturbed).float()).argmax(1).numpy() == y)
    return np.mean(kept, 0)


def _saliency(model, inputs, targets=None, **_) -> np.ndarray:
    """Our batched saliency as an explainer for both: `[N, H, W]` (ours) or `[N, 1, H, W]` (Quantus)."""
    maps = explain(model, torch.as_tensor(inputs), "saliency").detach().numpy()
    return maps if targets is None else maps[:, None]


def main() -> None:
    import quantus
    from quantus.functions.perturb_func import noisy_linear_imputation

    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    model, images, maps, masks, classes = _case()
    x, a, s, y = images.numpy(), maps[:, None], masks[:, None].astype(float), classes.numpy()
    removed = (_ranks(maps) < SIZE * SIZE // 2).view(IMAGES, 1, SIZE, SIZE)
    chosen = [np.flatnonzero(r) for r in removed.view(IMAGES, -1).numpy()]
    inputs = MetricInputs(maps=maps, masks=masks)
    flipping = quantus.PixelFlipping(features_in_step=SIZE * SIZE // STEPS, perturb_baseline="black",
                                     disable_warnings=True)
    cascade = lambda **settings: quantus.MPRT(layer_order="top_down", disable_warnings=True, **settings)(  # noqa: E731
        model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=_saliency, device="cpu")
    pairs = {
        "deletion curve (ours: + insertion)": (
            lambda: deletion_insertion(model, images, maps, classes, lambda t: t, STEPS),
            lambda: flipping(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")),
        "ROAD imputation, 50 % removed": (
            lambda: impute(images, removed),
            lambda: [noisy_linear_imputation(x[i], chosen[i], noise=0.0) for i in range(IMAGES)]),
        "ROAD, 9 shares (ours: + LeRF)": (
            lambda: road(model, images, maps, classes, lambda t: t, steps=len(SHARES)),
            lambda: _quantus_road_morf(model, x, a, y)),
        "randomisation, full model": (
            lambda: randomisation_similarity(model, images, _saliency, steps={-1}),
            lambda: cascade(skip_layers=True, return_last_correlation=True)),
        "randomisation, layer by layer": (
            lambda: randomisation_similarity(model, images, _saliency),
            lambda: cascade()),
        "Gini / Sparseness": (
            lambda: gini(inputs),
            lambda: quantus.Sparseness(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=a)),
        "entropy / Complexity": (
            lambda: entropy(inputs),
            lambda: quantus.Complexity(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=a)),
        "energy / AttributionLocalisation": (
            lambda: energy_pointing(inputs),
            lambda: quantus.AttributionLocalisation(disable_warnings=True)(
                model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)),
    }
    print(f"{IMAGES} images {SIZE}x{SIZE}, compact VGG-16, cpu ({torch.get_num_threads()} threads), median of "
          f"{REPEATS}; images per second")
    print(f"{'metric':<36} {'ours':>10} {'Quantus':>10} {'ratio':>8}")
    for name, (ours, theirs) in pairs.items():
        mine, other = _median_s(ours), _median_s(theirs)
        print(f"{name:<36} {IMAGES / mine:10.1f} {IMAGES / other:10.1f} {other / mine:7.1f}x")


if __name__ == "__main__":
    main()
