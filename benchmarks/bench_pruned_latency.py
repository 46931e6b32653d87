"""CPU latency and parameter count of dense, unstructured-pruned (masked) and structurally pruned
(filters physically removed) VGG-16 at 224 px, batch 1, at each compression rate of the study.

Masks zero weights but keep every tensor's shape, so a masked model costs what the dense one
costs; removing whole filters shrinks the tensors themselves. All medians, measured in one run.
"""

from __future__ import annotations

import statistics
import time

import torch

from prunexplain.config import ModelSettings
from prunexplain.models import build_model
from prunexplain.pruning.masks import apply_masks, channel_masks
from prunexplain.pruning.methods import METHODS, compute_masks, prunable_weights
from prunexplain.pruning.shrink import shrink_vgg

RATES, REPEATS, SIZE = (2, 4, 8, 16, 32, 64), 5, 224


@torch.no_grad()
def _latency_ms(model: torch.nn.Module, x: torch.Tensor) -> float:
    model.eval()
    for _ in range(3):  # warm-up: kernel selection and allocation happen in the first calls
        model(x)
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _pruned(dense: torch.nn.Module, method: str, rate: float) -> tuple[torch.nn.Module, dict]:
    model = build_model(10, ModelSettings(width=1, pool_size=7, batch_norm=False))
    model.load_state_dict(dense.state_dict())
    weights = prunable_weights(model, "conv")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    masks = compute_masks(METHODS[method], weights, ones, rate, torch.Generator().manual_seed(0))
    if METHODS[method].unit == "filter":
        masks.update(channel_masks(model, masks))
    apply_masks(model, masks)
    return model, masks


def _nonzero(model: torch.nn.Module) -> int:
    return sum(int(p.count_nonzero()) for p in model.parameters())


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dense = build_model(10, ModelSettings(width=1, pool_size=7, batch_norm=False)).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    base = _latency_ms(dense, x)
    print(f"VGG-16, {SIZE} px, batch 1, {torch.get_num_threads()} threads, median of {REPEATS}")
    print(f"{'rate':>5} {'model':<28} {'params (non-zero)':>18} {'latency ms':>11} {'dense ms':>9} {'speed-up':>9}")
    print(f"{1:>5} {'dense':<28} {_nonzero(dense):>18,} {base:>11.1f} {base:>9.1f} {1:>8.2f}x")
    for rate in RATES:
        base = _latency_ms(dense, x)  # again beside each rate: the machine's speed drifts
        masked, _ = _pruned(dense, "local_magnitude_unstructured", rate)
        latency = _latency_ms(masked, x)
        label = "unstructured (masked)"
        print(f"{rate:>5} {label:<28} {_nonzero(masked):>18,} {latency:>11.1f} {base:>9.1f} {base / latency:>8.2f}x")
        structured, masks = _pruned(dense, "local_l1_structured", rate)
        small = shrink_vgg(structured, masks)
        latency = _latency_ms(small, x)
        label = "structured (filters removed)"
        print(f"{rate:>5} {label:<28} {_nonzero(small):>18,} {latency:>11.1f} {base:>9.1f} {base / latency:>8.2f}x")


if __name__ == "__main__":
    main()
