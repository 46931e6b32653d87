"""Datasets: the embedded synthetic one (default), any ImageFolder tree (Imagenette a preset of it),
and the loaders they share."""

from __future__ import annotations

from pathlib import Path

from prunexplain.config import DataSettings, UserError
from prunexplain.runs import Run


def dataset_root(data: DataSettings, run: Run, progress: bool = True) -> Path:
    """The folder of the run's dataset, generating the synthetic one if it is not there yet."""
    root = check_root(data, run)
    if data.dataset == "synthetic":
        from prunexplain.data.synthetic import generate

        generate(data.synthetic, data.image_size, root, progress)
    return root


def check_root(data: DataSettings, run: Run) -> Path:
    """The dataset folder the settings name, refused (one line naming data.root) when it cannot be one,
    without reading any image: the synthetic one is generated into a new or earlier synthetic folder,
    an ImageFolder dataset is a folder holding train/ and val/ (Imagenette), or (imagefolder) class
    folders that `data.split` divides."""
    if data.dataset == "synthetic":
        from prunexplain.data.synthetic import check_dest

        root = data.root or run.synthetic_data
        check_dest(root, "data.root" if data.root else "the run's synthetic data folder")
        return root
    if data.root is None:
        if data.dataset == "imagefolder":
            raise UserError("data.root: set it to your dataset folder (train/ and val/ of class folders, or "
                            "one folder of class folders)")
        raise UserError(
            "data.root: set it to an Imagenette folder such as imagenette2-320 "
            "(download one with `prunexplain data imagenette --size 320 --dest DIR`)"
        )
    if not data.root.is_dir():
        if data.root.exists():
            raise UserError(f"data.root: {data.root}: is a file, not a folder (extract the archive, give its folder)")
        raise UserError(f"data.root: no such folder {data.root}")
    missing = [split for split in ("train", "val") if not (data.root / split).is_dir()]
    if data.dataset == "imagefolder" and len(missing) == 2:
        if not any(p.is_dir() and p.name != "masks" for p in data.root.iterdir()):
            raise UserError(f"data.root: {data.root} holds no class folders (an ImageFolder dataset has "
                            "train/ and val/ of class folders, or class folders that data.split divides)")
        return data.root
    if missing:
        raise UserError(f"data.root: {data.root} has no {' or '.join(f'{m}/' for m in missing)} folder "
                        "(an ImageFolder dataset such as imagenette2-320 has train/ and val/)")
    return data.root


def class_names(data: DataSettings) -> dict[str, str] | None:
    """Folder name -> label for datasets whose folders are not named by label (Imagenette)."""
    if data.dataset == "imagenette":
        from prunexplain.data.imagenette import CLASSES

        return CLASSES
    return None


def splits_of(data: DataSettings, root: Path):
    """The train, valid and test splits of the dataset at `root`, as every stage reads them."""
    from prunexplain.data.loaders import load_splits

    shares = data.split if data.dataset == "imagefolder" else None
    return load_splits(root, data.split_seed, class_names(data), shares)
