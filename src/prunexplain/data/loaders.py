"""From a dataset folder to batches: the reference split, the decoded-image cache, augmentation.

Datasets yield uint8 images `[3, H, W]` already resized to the model's square input. By default
(`data.augment_at = "image_size"`) augmentation and scaling happen per batch on the training device
(`prepare`, `augment`): one batched affine warp instead of a PIL rotation per image, and the same code
on the CPU and the GPU. `augment_at = "full_size"` is the original's pipeline instead: the train
split's dataset (`AugmentedImages`) flips and rotates each decoded image at its full size, then
resizes it, and `prepare` leaves those batches as they are.

The decoded-image cache decodes and resizes every image once into a memory-mapped uint8 array
(`<run>/cache/<split>-<size>-<key>.npy`, or `runtime.cache_dir`), so epochs never decode a JPEG again.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from prunexplain.config import DataSettings, RuntimeSettings, UserError
from prunexplain.data.folders import scan_image_folder
from prunexplain.runs import write_with

if TYPE_CHECKING:
    from torchvision.transforms import v2

log = logging.getLogger(__name__)

# The study split imagenette2's val/ folder (3925 images) into test 2800 / valid 1125.
REFERENCE_TEST, REFERENCE_VALID = 2800, 1125
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageSet:
    """Image files with their labels (and object masks where the dataset has them)."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    masks: tuple[Path, ...] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        pick = lambda items: tuple(items[i] for i in indices)  # noqa: E731
        return ImageSet(pick(self.paths), pick(self.labels), self.classes, self.masks and pick(self.masks))


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    valid: ImageSet
    test: ImageSet


def scan_split(root: Path, split: str, class_names: dict[str, str] | None = None) -> ImageSet:
    """One split folder (`train` or `val`) of an ImageFolder tree, with masks when `masks/` exists.

    `class_names` maps folder names to labels (Imagenette's WordNet ids); None: folders are labels.
    """
    folder = Path(root) / split
    samples, classes = scan_image_folder(folder, class_names, skip=("masks",) if split == "" else ())
    paths = tuple(Path(p) for p, _ in samples)
    mask_root = Path(root) / "masks" / split
    masks = tuple(_mask_of(mask_root, p.relative_to(folder)) for p in paths) if mask_root.is_dir() else None
    return ImageSet(paths, tuple(label for _, label in samples), tuple(classes), masks)


def _mask_of(mask_root: Path, relative: Path) -> Path:
    """The mask of an image: the same relative path as a PNG (`a/001.jpg` -> `a/001.png`), or the
    same file name; a masks/ tree missing one image's mask is refused, naming the file."""
    for path in (mask_root / relative.with_suffix(".png"), mask_root / relative):
        if path.is_file():
            return path
    raise UserError(f"{mask_root / relative.with_suffix('.png')}: no object mask for this image (a masks/ tree "
                    "needs one per image, or none at all)")


def stacked(images: ImageSet, size: int) -> torch.Tensor:
    """The images as one uint8 batch `[N, 3, size, size]`."""
    dataset = FolderImages(images, size)
    return torch.stack([dataset[i][0] for i in range(len(dataset))]) if len(dataset) else torch.empty(0, 3, size, size)


def image_rows(images: ImageSet) -> list[dict]:
    """One row per image (index, path, label, class, mask): how a stage records which images it used."""
    masks = images.masks or ("",) * len(images)
    return [
        {"index": i, "path": str(path), "label": label, "class": images.classes[label], "mask": str(mask)}
        for i, (path, label, mask) in enumerate(zip(images.paths, images.labels, masks))
    ]


def read_image_rows(path: Path, classes: Sequence[str]) -> ImageSet:
    """The images a stage recorded with `image_rows`, so a later stage uses exactly those."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        masks = tuple(Path(r["mask"]) for r in rows) if rows and all(r.get("mask") for r in rows) else None
        return ImageSet(tuple(Path(r["path"]) for r in rows), tuple(int(r["label"]) for r in rows), tuple(classes),
                        masks)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; run `prunexplain explain` first") from None
    except (KeyError, ValueError, OSError) as error:
        raise UserError(f"{path}: not a table of explained images ({error})") from None


def split_sizes(n: int) -> tuple[int, int]:
    """The study's 2800/1125 proportions, exact on the complete val/ folder."""
    test = round(n * REFERENCE_TEST / (REFERENCE_TEST + REFERENCE_VALID))
    return test, n - test


def load_splits(
    root: Path, split_seed: int = 69, class_names: dict[str, str] | None = None,
    shares: Sequence[float] | None = None,
) -> Splits:
    """train/ for training; val/ split into test and valid with `random_split` seeded as the study.
    With `shares` (imagefolder), a root without train/ is one folder of class folders, divided per
    class by them."""
    if shares is not None and not (Path(root) / "train").is_dir():
        return _divided(scan_split(root, "", class_names), shares, split_seed)
    train, val = scan_split(root, "train", class_names), scan_split(root, "val", class_names)
    generator = torch.Generator().manual_seed(split_seed)
    test_idx, valid_idx = torch.utils.data.random_split(range(len(val)), split_sizes(len(val)), generator)
    return Splits(train, val.subset(list(valid_idx)), val.subset(list(test_idx)))


def _divided(images: ImageSet, shares: Sequence[float], seed: int) -> Splits:
    """Train, valid and test of one folder: each class shuffled from `seed` and cut by `shares`, so
    every class is in every split in the same proportions (at least one image each)."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[], [], []]
    for label, name in enumerate(images.classes):
        members = [i for i, y in enumerate(images.labels) if y == label]
        if len(members) < 3:
            raise UserError(f"{images.paths[members[0]].parent if members else name}: {len(members)} image(s); "
                            "data.split needs at least 3 per class (train, valid, test)")
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        valid = min(len(order) - 2, max(1, round(len(order) * shares[1])))  # leaves one for train and test
        test = max(1, min(len(order) - valid - 1, round(len(order) * shares[2])))
        parts[0] += order[valid + test:]
        parts[1] += order[:valid]
        parts[2] += order[valid:valid + test]
    return Splits(*(images.subset(sorted(part)) for part in parts))


def decode(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 `[size, size, 3]`; unreadable files name themselves in the error.

    PIL's bilinear resize of the RGB image: the pixels torchvision's `Resize((size, size))` gives on a
    PIL image, so the cache holds what the original's `test_transform` saw (a test pins it).
    """
    with _opened(path) as image:
        return np.array(_converted(image, "RGB", path).resize((size, size), Image.BILINEAR))


def read_mask(mask: Path, image: Path, size: int) -> np.ndarray:
    """An object mask as bool `[size, size]`, True on the object (stored non-zero: 255, or a label).

    A mask of another size than its image is refused, not resized: it belongs to another image, or
    was cut differently, and a stretched mask would score explanations against the wrong pixels.
    """
    with _opened(image) as picture:
        expected = picture.size  # the header only: no pixels are decoded
    with _opened(mask) as opened:
        if opened.size != expected:
            raise UserError(f"{mask}: object mask is {opened.size[0]}x{opened.size[1]} pixels, its image {image} "
                            f"is {expected[0]}x{expected[1]}; a mask must match its image")
        grey = _object_pixels(opened, mask)
    return np.array(grey.resize((size, size), Image.BILINEAR)) >= 128


def _object_pixels(mask: Image.Image, path: Path) -> Image.Image:
    """The mask as 0/255 greyscale, 255 wherever a stored value is non-zero, judged before any scaling
    or resizing: a label 1 in an 8- or 16-bit PNG counts as much as 255 (a 0/255 mask passes unchanged,
    so it resizes to the pixels it always did). Colour and palette masks count by their colour (black
    is background); alpha is ignored."""
    values_as_stored = mask.mode in ("1", "L", "I", "F") or mask.mode.startswith("I;16")
    try:
        values = np.asarray(mask if values_as_stored else mask.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot read image ({error})") from None
    found = values.any(axis=2) if values.ndim == 3 else values != 0
    return Image.fromarray(np.where(found, 255, 0).astype(np.uint8))


def object_masks(images: ImageSet, size: int) -> np.ndarray | None:
    """The object masks of `images` as bool `[N, size, size]`, or None when the dataset has none."""
    if images.masks is None:
        return None
    if not images:
        return np.zeros((0, size, size), bool)
    return np.stack([read_mask(mask, path, size) for mask, path in zip(images.masks, images.paths)])


def _opened(path: Path) -> Image.Image:
    """`Image.open` (lazy: reads the header) with every failure one line naming the file.

    PIL only warns on an image between 1x and 2x its pixel limit and decodes it anyway; such files
    (decompression bombs, or a photo far beyond any model's input) are refused like larger ones.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UserError(f"{path}: image too large to decode ({error})") from None
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise UserError(f"{path}: cannot read image ({error})") from None


def _converted(image: Image.Image, mode: str, path: Path) -> Image.Image:
    """`image.convert(mode)`, which decodes the pixels: a truncated or corrupt file fails here.

    Integer and float greyscale (16-bit scans: modes I;16, I, F) are scaled from their own range to
    8 bits first: PIL's convert clips them at 255, which turns a 16-bit image white. Alpha is
    dropped (RGBA, LA, palettes with transparency keep their colours), CMYK is converted by PIL.
    """
    try:
        if image.mode.startswith(("I", "F")):
            image = _eight_bit(image)
        return image.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot read image ({error})") from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float greyscale image as 8-bit L, scaled by its type's range
    (16-bit: 0..65535; 32-bit integer and float: the image's own maximum)."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1e-12)
    return Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")


class FolderImages(Dataset):
    """Decodes each image on every access (no cache)."""

    def __init__(self, images: ImageSet, size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        array = decode(self.images.paths[index], self.size)
        return torch.from_numpy(array).permute(2, 0, 1), self.images.labels[index]


class CachedImages(Dataset):
    """Reads decoded images from the memory-mapped cache."""

    def __init__(self, images: ImageSet, array: np.ndarray) -> None:
        self.labels, self.array = images.labels, array

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.array[index])).permute(2, 0, 1), self.labels[index]


def _cache_key(images: ImageSet, size: int) -> str:
    """Changes when any file is added, removed, resized or touched, or when the size changes."""
    digest = hashlib.sha256(str(size).encode())
    for path in images.paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def decoded_cache(images: ImageSet, size: int, cache_dir: Path, name: str, progress: bool = True) -> np.ndarray:
    """The images decoded once into `cache_dir` as a .npy file, returned memory-mapped."""
    path = Path(cache_dir) / f"{name}-{size}-{_cache_key(images, size)}.npy"
    if not path.exists():
        array = np.empty((len(images), size, size, 3), np.uint8)
        for i, file in enumerate(tqdm(images.paths, desc=f"cache {name}", disable=not progress)):
            array[i] = decode(file, size)
        write_with(path, lambda handle: np.save(handle, array))
        log.info("cached %d decoded images in %s", len(images), path)
    return np.load(path, mmap_mode="r")


def full_size_augmentation(data: DataSettings) -> v2.Compose:
    """The original's train augmentation, applied to a full-size PIL image before any resize.

    The order and the draws of helpers.py `imagenette_dataloader` (RandomHorizontalFlip,
    RandomVerticalFlip, RandomRotation(10): nearest, black fill, same canvas), each from torch's
    default generator as there; a flip switched off or a rotation of 0 drops that transform.
    """
    from torchvision.transforms import v2  # here: readers of the cache (report/grid.py) skip torchvision

    steps = [v2.RandomHorizontalFlip()] if data.hflip else []
    steps += [v2.RandomVerticalFlip()] if data.vflip else []
    steps += [v2.RandomRotation(data.rotation)] if data.rotation else []
    return v2.Compose(steps or [v2.Identity()])


class AugmentedImages(Dataset):
    """The train split for `augment_at = "full_size"`: each access decodes the file, augments it at its
    full size (`full_size_augmentation`), then resizes it as `decode` does, to uint8 `[3, size, size]`.

    Draws come from torch's default generator, as torchvision's transforms (and the original) draw:
    without loader workers the one `fit` seeds, in a worker the one torch seeds from the loader's
    generator and the worker id. So a seed gives the same batches for a given `runtime.num_workers`;
    another number of workers hands images to other generators and draws differently.
    """

    def __init__(self, images: ImageSet, data: DataSettings) -> None:
        from torchvision.transforms import v2

        self.images = images
        size = (data.image_size, data.image_size)
        # torchvision's Resize of a PIL image is PIL's bilinear resize, as the original's ToTensor input
        resize = v2.Resize(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        self.transform = v2.Compose([full_size_augmentation(data), resize, v2.PILToTensor()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.images.paths[index]
        with _opened(path) as image:
            rgb = _converted(image, "RGB", path)
        return self.transform(rgb), self.images.labels[index]


def image_dataset(
    images: ImageSet,
    data: DataSettings,
    cache_dir: Path,
    name: str,
    runtime: RuntimeSettings = RuntimeSettings(),
    train: bool = False,
) -> Dataset:
    """The dataset of one split: cached if `runtime.cache`, else decoding on every access.

    `train`: the split trained on. With `data.augment_at = "full_size"` it is `AugmentedImages`
    (augmented per image here, not per batch in `prepare`), which decodes every image every epoch.
    """
    if train and data.augment_at == "full_size":
        log.info("augment_at=full_size: the %s split is decoded, augmented and resized per image in every epoch "
                 "(slower than the cached image_size augmentation)", name)
        return AugmentedImages(images, data)
    if not runtime.cache:
        return FolderImages(images, data.image_size)
    folder = runtime.cache_dir or Path(cache_dir)
    return CachedImages(images, decoded_cache(images, data.image_size, folder, name, runtime.progress))


def prepare(batch: torch.Tensor, data: DataSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 `[B,3,H,W]` to the model's float input: scaled to 0..1, augmented when a generator is
    given (training) and `data.augment_at` is "image_size", then normalised as `data.normalize` says.

    With "full_size" the train dataset (`AugmentedImages`) has augmented each image already, so the
    generator is ignored: no batch is augmented twice.
    """
    x = batch.float().div_(255)
    if generator is not None and data.augment_at == "image_size":
        x = augment(x, data, generator)
    return normalise(x, data)


def normalise(x: torch.Tensor, data: DataSettings) -> torch.Tensor:
    """A 0..1 batch as the model sees it: `data.normalize`'s mean and std applied, if any."""
    statistics = normalisation(data)
    if statistics is None:
        return x
    mean, std = (torch.tensor(values, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) for values in statistics)
    return (x - mean) / std


def normalisation(data: DataSettings) -> tuple[Sequence[float], Sequence[float]] | None:
    """The mean and std `data.normalize` asks for: none, ImageNet's, or the training split's (which the
    train stage computes once and the checkpoint keeps: `with_dataset_statistics`, `as_trained`)."""
    if data.normalize is False:
        return None
    if data.normalize == "dataset":
        if data.mean is None:
            raise UserError("data.normalize='dataset': the training split's statistics are not known yet; they "
                            "are computed by `prunexplain train` and kept in its checkpoint")
        return data.mean, data.std
    return IMAGENET_MEAN, IMAGENET_STD


def with_dataset_statistics(data: DataSettings, train: Dataset, progress: bool = False) -> DataSettings:
    """`data` with `mean` and `std` of the training images filled in, when `normalize='dataset'` needs
    them and they are not given: one pass over the decoded uint8 images, sums in float64."""
    if data.normalize != "dataset" or data.mean is not None:
        return data
    sums, squares, pixels = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    loader = torch.utils.data.DataLoader(train, batch_size=256)
    for batch, _ in tqdm(loader, desc="dataset statistics", unit="batch", disable=not progress):
        x = batch.to(torch.float64).div_(255)
        sums += x.sum((0, 2, 3))
        squares += x.square().sum((0, 2, 3))
        pixels += x.shape[0] * x.shape[2] * x.shape[3]
    mean = sums / pixels
    std = (squares / pixels - mean.square()).clamp_min(1e-12).sqrt()
    log.info("data.normalize='dataset': training split mean %s, std %s",
             [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()])
    return data.model_copy(update={"mean": mean.tolist(), "std": std.tolist()})


def as_trained(data: DataSettings, trained: dict) -> DataSettings:
    """`data` with the input a checkpoint's model was trained on (`meta["data"]` of the checkpoint):
    its normalisation and statistics, whatever the settings say now."""
    return data.model_copy(update={key: trained.get(key) for key in ("normalize", "mean", "std")})


def augment(x: torch.Tensor, data: DataSettings, generator: torch.Generator) -> torch.Tensor:
    """The study's augmentation on a 0..1 batch: random h/v flips and rotation by up to +-rotation.

    Draws come from `generator` (on the CPU), so a seed gives the same batches on any device. One
    affine grid per batch; corners that rotate in are black, as torchvision's RandomRotation.
    """
    n = x.shape[0]
    ones = torch.ones(n)
    flip_x = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if data.hflip else ones
    flip_y = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if data.vflip else ones
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(data.rotation)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros(n)
    theta = torch.stack(
        [torch.stack([cos * flip_x, -sin * flip_y, zero], 1), torch.stack([sin * flip_x, cos * flip_y, zero], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
