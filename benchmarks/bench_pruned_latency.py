"""CPU latency, parameters and MACs of dense, unstructured-pruned (masked) and structurally pruned
(channels physically removed through Torch-Pruning) VGG-16 and ResNet-50 at 224 px, batch 1, at each
compression rate of the study.

Masks zero weights but keep every tensor's shape, so a masked model costs what the dense one costs;
removing whole channels shrinks the tensors themselves. Each rate prunes the dense model in one step
(local magnitude, local L1 channels). Latencies are medians, measured in one run, the dense model's
again beside each rate as the machine's speed drifts; MACs from Torch-Pruning's counter. On CUDA it
first times 2:4 semi-structured masks on PyTorch's sparse kernels against the dense matmul.
"""

from __future__ import annotations

import copy

import torch
import torchvision

from prunexplain.config import ModelSettings
from prunexplain.models import build_model
from prunexplain.pruning.cost import cpu_latency_ms, macs_and_params
from prunexplain.pruning.masks import apply_masks
from prunexplain.pruning.methods import METHODS, compute_masks, prunable_groups, prunable_weights, structured_masks
from prunexplain.pruning.remove import remove_pruned

RATES, REPEATS, SIZE = (2, 4, 8, 16, 32, 64), 5, 224


def _latency(model: torch.nn.Module) -> float:
    return cpu_latency_ms(model, SIZE, repeats=REPEATS)


def _unstructured(dense: torch.nn.Module, rate: float) -> torch.nn.Module:
    model = copy.deepcopy(dense)
    weights = prunable_weights(model, "conv")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    apply_masks(model, compute_masks(METHODS["local_magnitude_unstructured"], weights, ones, rate, torch.Generator()))
    return model


def _structured(dense: torch.nn.Module, groups, rate: float) -> torch.nn.Module:
    weights = prunable_weights(dense, "conv")
    masks = structured_masks(METHODS["local_l1_structured"], dense, weights, {}, rate, torch.Generator(), groups)
    return remove_pruned(dense, masks, SIZE)


def _nonzero(model: torch.nn.Module) -> int:
    return sum(int(p.count_nonzero()) for p in model.parameters())


def _line(rate, label: str, model: torch.nn.Module, latency: float, dense: float) -> str:
    macs, params = macs_and_params(model, SIZE)
    return (f"{rate:>5} {label:<30} {params:>13,} {_nonzero(model):>13,} {macs / 1e9:>8.3f} {latency:>10.1f} "
            f"{dense:>9.1f} {dense / latency:>8.2f}x")


def _architecture(name: str, dense: torch.nn.Module) -> None:
    dense.eval()
    groups = prunable_groups(dense, SIZE, "conv")
    print(f"\n{name}, {SIZE} px, batch 1, {torch.get_num_threads()} threads, median of {REPEATS}")
    print(f"{'rate':>5} {'model':<30} {'params':>13} {'non-zero':>13} {'GMACs':>8} {'latency ms':>10} "
          f"{'dense ms':>9} {'speed-up':>9}")
    base = _latency(dense)
    print(_line(1, "dense", dense, base, base))
    for rate in RATES:
        base = _latency(dense)
        masked = _unstructured(dense, rate)
        print(_line(rate, "unstructured (masked)", masked, _latency(masked), base))
        del masked
        small = _structured(dense, groups, rate)
        print(_line(rate, "structured (channels removed)", small, _latency(small), base), flush=True)


def _semistructured_kernels() -> None:
    """2:4 masks (ours) on PyTorch's semi-structured sparse kernels against the dense matmul of the same
    fp16 Linear, on CUDA only: the CPU has no such kernels, and masked weights alone run as dense."""
    if not torch.cuda.is_available():
        print("\n2:4 semi-structured sparse kernels: skipped (no CUDA device; PyTorch's kernels need an NVIDIA "
              "GPU from Ampere on)")
        return
    from torch.sparse import to_sparse_semi_structured
    from torch.utils.benchmark import Timer

    torch.manual_seed(0)
    linear = torch.nn.Linear(10240, 3072).half().cuda().eval()
    weights = {"weight": linear.weight}
    ones = {"weight": torch.ones_like(linear.weight, dtype=torch.bool)}
    mask = compute_masks(METHODS["local_magnitude_nm_semistructured"], weights, ones, 2, torch.Generator())["weight"]
    x = torch.rand(3072, 10240, device="cuda").half()
    with torch.inference_mode():
        linear.weight = torch.nn.Parameter(linear.weight * mask.cuda())
        dense_output = linear(x)
        dense = Timer("linear(x)", globals={"linear": linear, "x": x}).blocked_autorange().median * 1e3
        linear.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight))
        difference = (linear(x) - dense_output).abs().max().item()
        sparse = Timer("linear(x)", globals={"linear": linear, "x": x}).blocked_autorange().median * 1e3
    print(f"\n2:4 semi-structured Linear 10240 -> 3072, batch 3072, fp16 on {torch.cuda.get_device_name()}: "
          f"dense {dense:.3f} ms, sparse {sparse:.3f} ms, {dense / sparse:.2f}x (max difference {difference:.2g})")


def main() -> None:
    _semistructured_kernels()
    torch.set_num_threads(1)  # a shared 2-core machine: two threads wait on each other when one core is busy
    torch.manual_seed(0)
    _architecture("VGG-16", build_model(10, ModelSettings(width=1, pool_size=7, batch_norm=False)))
    _architecture("ResNet-50", torchvision.models.resnet50(num_classes=10))


if __name__ == "__main__":
    main()
