"""What a model costs to run: multiply-accumulates and parameters (Torch-Pruning's counter) and CPU
latency at batch 1. Measured on the model as it would run, never derived from the compression rate."""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch_pruning as tp
from torch import nn


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, image_size: int, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of one forward pass of one image on the CPU, after `warmup` passes (kernel
    selection and allocation happen in the first calls)."""
    model = copy.deepcopy(model).cpu().eval()
    x = torch.rand(1, 3, image_size, image_size)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def macs_and_params(model: nn.Module, image_size: int) -> tuple[int, int]:
    """Multiply-accumulates of one `image_size` image and the number of parameters, zeros included."""
    device = next(model.parameters()).device
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, image_size, image_size, device=device))
    return int(macs), int(params)


def model_cost(model: nn.Module, image_size: int) -> dict[str, float]:
    """The results table's `macs`, `params` and `latency_ms` of the model as given."""
    macs, params = macs_and_params(model, image_size)
    return {"macs": macs, "params": params, "latency_ms": round(cpu_latency_ms(model, image_size), 3)}
