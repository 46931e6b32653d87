"""Training throughput of VGG-16 at 224 px through `prunexplain.train.fit`, images per second.

The study's model and input size, trained by the project's own loop (batched augmentation on the
device, the optimiser step, early-stopping bookkeeping), on random uint8 images held in memory so
the figure is the model's and not the disk's. On CUDA it compares float32 with the pipeline's
default, mixed precision (float16 autocast) with channels_last; on a CPU it measures float32 on a
few images only (about 1 image/s: the full model is for GPUs). The device is printed.
"""

from __future__ import annotations

import statistics

import torch
from torch.utils.data import DataLoader, TensorDataset

from prunexplain.config import DataSettings, ModelSettings, RuntimeSettings, TrainSettings
from prunexplain.models import build_model
from prunexplain.train import fit

SIZE, REPEATS = 224, 3


def _images_per_second(settings: TrainSettings, runtime: RuntimeSettings, images: int, device: torch.device) -> float:
    torch.manual_seed(0)
    data = DataSettings(image_size=SIZE, normalize=True)
    model = build_model(10, ModelSettings(width=1, pool_size=7, batch_norm=False)).to(device)
    if device.type == "cuda" and runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pixels = torch.randint(0, 256, (images, 3, SIZE, SIZE), dtype=torch.uint8)
    train = DataLoader(TensorDataset(pixels, torch.randint(0, 10, (images,))), settings.batch_size, shuffle=True,
                       pin_memory=device.type == "cuda")
    valid = DataLoader(TensorDataset(pixels[: settings.batch_size], torch.zeros(settings.batch_size, dtype=torch.long)),
                       settings.batch_size)
    fit(model, train, valid, settings, data, device, runtime)  # warm-up: kernels chosen, memory allocated
    seconds = [fit(model, train, valid, settings, data, device, runtime).seconds for _ in range(REPEATS)]
    return (images + settings.batch_size) / statistics.median(seconds)  # the valid pass counts too


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
        batch, images = 2, 4
    else:
        batch, images = 64, 64 * 12
    base = TrainSettings(batch_size=batch, epochs=1, optimizer="SGD")
    runtime = RuntimeSettings(progress=False, device=str(device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"VGG-16 training, {SIZE} px, batch {batch}, {images} images per epoch, {name}, median of {REPEATS} epochs")
    fp32 = _images_per_second(base, runtime.model_copy(update={"amp": False, "channels_last": False}), images, device)
    print(f"{'float32':<40} {fp32:9.1f} img/s")
    if device.type == "cuda":
        mixed = _images_per_second(base, runtime, images, device)
        print(f"{'mixed precision + channels_last':<40} {mixed:9.1f} img/s")
        print(f"mixed precision vs float32: {mixed / fp32:.2f}x")


if __name__ == "__main__":
    main()
