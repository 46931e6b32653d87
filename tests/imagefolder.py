"""A generated ImageFolder dataset as a researcher's own data looks: class folders with names that are
not file-name or URL safe, images of several sizes, modes and formats, and an optional masks/ tree.

The images come from the synthetic renderer (class k draws shape k of the embedded dataset), so a
model can learn them, and each is saved in one of `MODES` in turn: greyscale, palette, RGBA,
CMYK (JPEG), 16-bit greyscale, RGB JPEG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from prunexplain.data.synthetic import render

ODD_CLASSES = ("Golden Retriever", "ñandú", "x_y", "café au lait", "100%")
MODES = ("L", "P", "RGBA", "CMYK", "I;16", "RGB")


def _as_mode(rgb: np.ndarray, mode: str) -> tuple[Image.Image, str]:
    """The image converted to `mode`, and the file suffix that keeps that mode."""
    image = Image.fromarray(rgb)
    if mode == "I;16":  # 16-bit greyscale: 0..255 spread over 0..65535, as a 16-bit scan stores it
        grey = np.asarray(image.convert("L"), np.uint16) * 257
        return Image.fromarray(grey), ".png"  # uint16 arrays become mode I;16
    if mode == "CMYK":
        return image.convert("CMYK"), ".jpg"
    if mode == "RGB":
        return image, ".jpeg"
    return image.convert(mode), ".png"


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ODD_CLASSES,
    per_class: tuple[int, int] = (8, 6),
    sizes: tuple[int, ...] = (48, 40, 56),
    masks: bool = True,
    flat: bool = False,
) -> Path:
    """`root/{train,val}/<class>/<i>.<ext>` (or `root/<class>/...` when `flat`), with
    `root/masks/<same relative path, .png>` (0 or 255) when `masks`; returns root."""
    root = Path(root)
    splits = {"": sum(per_class)} if flat else {"train": per_class[0], "val": per_class[1]}
    count = 0
    for split_index, (split, n) in enumerate(splits.items()):
        for label, name in enumerate(classes):
            for i in range(n):
                size = sizes[count % len(sizes)]
                rgb, mask = render(0, split_index, i, label % 10, size, 1, (0.2, 0.3))
                image, suffix = _as_mode(rgb, MODES[count % len(MODES)])
                path = root / split / name / f"{i:03d}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
                if masks:
                    mask_path = root / "masks" / split / name / f"{i:03d}.png"
                    mask_path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(mask_path)
                count += 1
    return root
