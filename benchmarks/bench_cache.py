"""Data-loading share of a training epoch with and without the decoded-image cache.

Imagenette-like input: JPEG files of 160 px (as imagenette2-160) resized to the compact model's 64
px. Each epoch is timed in two parts: waiting for the next batch (data) and the training step
(compute). Prints medians over epochs and the ratio of data times, measured in one run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from prunexplain.config import DataSettings, ModelSettings, RuntimeSettings, TrainSettings
from prunexplain.data.loaders import image_dataset, prepare, scan_split
from prunexplain.data.synthetic import CLASSES, render
from prunexplain.models import build_model
from prunexplain.train import make_loader

IMAGES_PER_CLASS, SOURCE_SIZE, EPOCHS = 64, 160, 4


def _write_jpegs(root: Path) -> None:
    for label, name in enumerate(CLASSES):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            image, _ = render(0, 0, label * IMAGES_PER_CLASS + i, label, SOURCE_SIZE, 5)
            Image.fromarray(image).save(folder / f"{i:04d}.JPEG", quality=90)


def _epoch_times(loader, model, optimizer, data) -> tuple[float, float]:
    """(seconds waiting for batches, seconds in training steps) of one epoch."""
    data_time = compute_time = 0.0
    iterator, generator = iter(loader), torch.Generator().manual_seed(0)
    while True:
        start = time.perf_counter()
        try:
            images, labels = next(iterator)
        except StopIteration:
            return data_time, compute_time
        middle = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(prepare(images, data, generator)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        data_time += middle - start
        compute_time += time.perf_counter() - middle


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_jpegs(root)
        images = scan_split(root, "train")
        rows = {}
        for cache in (False, True):
            data = DataSettings(image_size=64)
            runtime = RuntimeSettings(cache=cache, cache_dir=root / "cache", progress=False)
            start = time.perf_counter()
            dataset = image_dataset(images, data, root, "train", runtime)
            setup = time.perf_counter() - start
            model = build_model(len(CLASSES), ModelSettings())
            optimizer = torch.optim.Adam(model.parameters(), 1e-3)
            loader = make_loader(dataset, TrainSettings().batch_size, torch.device("cpu"), shuffle_seed=0)
            times = [_epoch_times(loader, model, optimizer, data) for _ in range(EPOCHS)]
            data_s = statistics.median(t[0] for t in times)
            compute_s = statistics.median(t[1] for t in times)
            rows[cache] = (setup, data_s, compute_s)
    print(f"{len(images)} JPEGs of {SOURCE_SIZE} px -> 64 px, compact VGG-16, batch 64, median of {EPOCHS} epochs")
    print(f"{'':12} {'one-time s':>10} {'data s/epoch':>13} {'compute s/epoch':>16} {'data share':>11}")
    for cache, (setup, data_s, compute_s) in rows.items():
        label = "cache" if cache else "no cache"
        print(f"{label:12} {setup:10.2f} {data_s:13.3f} {compute_s:16.3f} {data_s / (data_s + compute_s):11.1%}")
    (_, plain, _), (_, cached, _) = rows[False], rows[True]
    print(f"data time ratio (no cache / cache): {plain / cached:.1f}x")


if __name__ == "__main__":
    main()
