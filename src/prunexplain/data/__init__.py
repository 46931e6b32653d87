"""Datasets: the embedded synthetic one (default), Imagenette, and the loaders both share."""

from __future__ import annotations

from pathlib import Path

from prunexplain.config import DataSettings, UserError


def dataset_root(data: DataSettings, run_root: Path, progress: bool = True) -> Path:
    """The folder of the run's dataset, generating the synthetic one if it is not there yet."""
    if data.dataset == "synthetic":
        from prunexplain.data.synthetic import generate

        root = data.root or Path(run_root) / "data" / "synthetic"
        generate(data.synthetic, data.image_size, root, progress)
        return root
    if data.root is None:
        raise UserError(
            "data.root: set it to an Imagenette folder such as imagenette2-320 "
            "(download one with `prunexplain data imagenette --size 320 --dest DIR`)"
        )
    if not data.root.is_dir():
        raise UserError(f"data.root: no such folder {data.root}")
    return data.root


def class_names(data: DataSettings) -> dict[str, str] | None:
    """Folder name -> label for datasets whose folders are not named by label (Imagenette)."""
    if data.dataset == "imagenette":
        from prunexplain.data.imagenette import CLASSES

        return CLASSES
    return None
