"""The calibration batch of gradient-based criteria (Taylor, SNIP): a seeded draw of training images
and the gradients of the loss on it, left in `.grad` while a method scores and cleared afterwards.

The model runs in eval mode, so batch norm uses its running statistics and the gradients do not
depend on which other images share the batch; every parameter gets a gradient, frozen ones too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from prunexplain.config import DataSettings
from prunexplain.data.loaders import FolderImages, ImageSet, prepare


def calibration_batch(
    train: ImageSet, data: DataSettings, count: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` training images (all, if fewer) drawn without replacement from `generator`, decoded and
    prepared as the model sees them, never augmented (the training dataset may augment as it reads),
    and their labels."""
    indices = torch.randperm(len(train), generator=generator)[:count].tolist()
    images, labels = zip(*(FolderImages(train, data.image_size)[i] for i in indices))
    return prepare(torch.stack(images).to(device), data), torch.tensor(labels, device=device)


@contextmanager
def calibration_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Iterator[None]:
    """Every parameter's `.grad` is the gradient of the mean cross-entropy on the batch inside the
    block; afterwards `.grad` is None again and the model in its former mode."""
    params, training = dict(model.named_parameters()), model.training
    model.eval()
    try:
        with torch.enable_grad():
            inputs = {name: param.detach().requires_grad_(True) for name, param in params.items()}
            loss = F.cross_entropy(torch.func.functional_call(model, inputs, (images,)), labels)
            grads = torch.autograd.grad(loss, list(inputs.values()), allow_unused=True)
            for param, grad in zip(params.values(), grads):
                param.grad = torch.zeros_like(param) if grad is None else grad
        yield
    finally:
        for param in params.values():
            param.grad = None
        model.train(training)
