"""Fixtures on small data built here: a tiny synthetic dataset and settings that train in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunexplain.config import Settings, SyntheticSettings, load_settings
from prunexplain.data.synthetic import generate

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"

TINY = [
    "data.image_size=32",
    "data.synthetic.train_per_class=8",
    "data.synthetic.val_per_class=6",
    "model.width=0.0625",
    "model.pool_size=1",
    "train.epochs=2",
    "train.batch_size=16",
    "runtime.progress=false",
    "prune.max_epochs=1",
    "prune.rates=[2, 8]",
    "explain.images=4",
    "evaluate.resamples=200",
]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """32-px synthetic dataset, 8 train and 6 val images per class, with masks."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticSettings(train_per_class=8, val_per_class=6), 32, root, progress=False)
    return root


def tiny_settings(tmp_path: Path, dataset: Path, *overrides: str) -> Settings:
    """Settings of a run in tmp_path on the tiny dataset: trains in about a second."""
    return load_settings(
        None, [*TINY, f'run.root="{tmp_path / "runs"}"', f'data.root="{dataset}"', *overrides]
    )
