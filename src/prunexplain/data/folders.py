"""Scanning an ImageFolder tree (`<split>/<class>/<image>`) with torchvision's own helpers.

Both datasets use it: the synthetic one names its class folders by label (`0-disk`), Imagenette by
WordNet id (`n01440764`), which `class_names` maps to labels (`0-fish`).
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from prunexplain.config import UserError


def scan_image_folder(
    split_dir: Path, class_names: dict[str, str] | None = None, skip: tuple[str, ...] = ()
) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label index) of every image, in torchvision's ImageFolder order, and the class labels.

    `skip` names folders that are no classes. A missing folder, a class folder without images or
    (with `class_names`) an unknown or missing
    class folder is a UserError naming the folder.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: no such folder")
    try:
        folders, _ = find_classes(split_dir)
    except FileNotFoundError:
        raise UserError(f"{split_dir}: no class folders inside") from None
    folders = [folder for folder in folders if folder not in skip]  # masks/ beside the class folders
    class_to_idx = {folder: index for index, folder in enumerate(folders)}
    if class_names is not None:
        unknown = sorted(set(folders) - set(class_names))
        missing = sorted(set(class_names) - set(folders))
        if unknown or missing:
            raise UserError(f"{split_dir}: class folders do not match (unknown: {unknown}, missing: {missing})")
    for folder in folders:
        if not any(p.suffix.lower() in IMG_EXTENSIONS for p in (split_dir / folder).iterdir()):
            raise UserError(f"{split_dir / folder}: empty class folder (no images)")
    samples = make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS)
    labels = [class_names[f] for f in folders] if class_names else folders
    return samples, labels
