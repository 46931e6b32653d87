import shutil

import pytest

from prunexplain.pipeline import run_pipeline
from prunexplain.runs import Run
from tests.conftest import tiny_settings


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    """A run directory holding a trained tiny model (copied by tests that prune it)."""
    root = tmp_path_factory.mktemp("trained")
    settings = tiny_settings(root, tiny_dataset, "train.epochs=1")
    run_pipeline(settings, Run(settings.run_dir), until="train")
    return settings.run_dir


def copy_run(trained, tmp_path):
    """The trained run, copied whole (markers and config.toml included, times kept)."""
    shutil.copytree(trained, tmp_path / "runs" / "demo")
    return Run(tmp_path / "runs" / "demo")
