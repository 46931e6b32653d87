"""Upsampling raw Grad-CAM maps to the image size: 256 maps of 7x7 to 224x224, milliseconds (median).

- torch kernel: `F.interpolate` bicubic, prunexplain's default (not the study's numbers);
- pil kernel, batched: PIL's bicubic coefficients as two matrices, one product for the whole batch;
- per-image PIL loop: `Image.fromarray(map, "F").resize(..., BICUBIC)` per map and a stack, as the
  study's code did it one image at a time; the batched pil kernel must give the same values.
Both sides start from a `[B, 7, 7]` tensor and end with a `[B, 224, 224]` tensor.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from PIL import Image

from prunexplain.explain.cam import upsample

BATCH, RAW, SIZE, REPEATS = 256, 7, 224, 7


def _per_image_pil(maps: torch.Tensor) -> torch.Tensor:
    resized = [Image.fromarray(m, mode="F").resize((SIZE, SIZE), Image.BICUBIC) for m in maps.numpy()]
    return torch.from_numpy(np.stack([np.asarray(m) for m in resized]))


def _median_ms(function, maps: torch.Tensor) -> float:
    sync = torch.cuda.synchronize if maps.is_cuda else lambda: None
    function(maps)  # warm-up (and the cached coefficients)
    times = []
    for _ in range(REPEATS):
        sync()
        start = time.perf_counter()
        function(maps)
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    maps = torch.nn.functional.relu(torch.randn(BATCH, RAW, RAW, generator=torch.Generator().manual_seed(0)))
    pil = lambda m: upsample(m, (SIZE, SIZE), kernel="pil")  # noqa: E731
    gap = (pil(maps) - _per_image_pil(maps)).abs().max().item()
    print(f"{BATCH} maps {RAW}x{RAW} -> {SIZE}x{SIZE}, cpu ({torch.get_num_threads()} threads), median of {REPEATS}")
    times = {
        "torch kernel (F.interpolate)": _median_ms(lambda m: upsample(m, (SIZE, SIZE)), maps),
        "pil kernel, batched": _median_ms(pil, maps),
        "per-image PIL loop (as the study)": _median_ms(_per_image_pil, maps),
    }
    if torch.cuda.is_available():
        times["pil kernel, batched, cuda"] = _median_ms(pil, maps.cuda())
    for name, ms in times.items():
        print(f"{name:<36} {ms:9.2f} ms")
    batched, loop = times["pil kernel, batched"], times["per-image PIL loop (as the study)"]
    print(f"pil kernel vs per-image PIL loop: {loop / batched:.2f}x faster, max |difference| {gap:.1e}")
    print(f"pil kernel time / torch kernel time: {batched / times['torch kernel (F.interpolate)']:.2f}x")
    if "pil kernel, batched, cuda" in times:
        print(f"pil kernel on cuda vs per-image PIL loop: {loop / times['pil kernel, batched, cuda']:.1f}x faster")


if __name__ == "__main__":
    main()
