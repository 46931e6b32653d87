"""A run whose models all classify the test split correctly, so a study can be built on tiny data.

The three models are fitted to the test images themselves (with different seeds, so their maps
differ): that makes the selection's premise true by construction in seconds, where training on
the training split would need minutes to get every class right.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prunexplain.data.loaders import load_splits, prepare, stacked
from prunexplain.models import build_model, save_checkpoint
from prunexplain.runs import ModelKey, Run
from tests.conftest import tiny_settings

STUDY_MODELS = ["dense", "local_magnitude_unstructured/cr_2", "local_magnitude_unstructured/cr_32"]


def _fitted(settings, images: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(10, settings.model)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.003)
    x = prepare(images, settings.data)
    for step in range(300):
        model.train()
        optimiser.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        optimiser.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                if (model(x).argmax(1) == labels).all():
                    return model
    raise AssertionError("the fixture model did not fit the test split")


def make_study_run(root: Path, dataset: Path, *overrides: str):
    """Settings and a run with a dense and two 'pruned' checkpoints that get every test image right."""
    settings = tiny_settings(
        root, dataset, "model.dropout=0", f"study.models={STUDY_MODELS!r}".replace("'", '"'), "study.per_class=2",
        "explain.target_layer=\"features.16\"", "prune.rates=[2, 32]", *overrides,
    )
    run = Run(settings.run_dir)
    test = load_splits(dataset, settings.data.split_seed).test
    images, labels = stacked(test, settings.data.image_size), torch.tensor(test.labels)
    meta = {"classes": list(test.classes), "data": {"image_size": 32, "normalize": False}}
    for seed, key in enumerate(STUDY_MODELS):
        path = run.checkpoint(ModelKey.parse(key))
        save_checkpoint(path, _fitted(settings, images, labels, seed), settings.model, 10, meta=meta)
    return settings, run


@pytest.fixture(scope="session")
def study_run_template(tmp_path_factory, tiny_dataset):
    return make_study_run(tmp_path_factory.mktemp("study"), tiny_dataset)


def copy_run(settings, run: Run, root: Path):
    """The same run under another root: tests that write get their own copy."""
    shutil.copytree(run.root, root / "runs" / run.root.name)
    moved = settings.model_copy(update={"run": settings.run.model_copy(update={"root": root / "runs"})})
    return moved, Run(root / "runs" / run.root.name)


@pytest.fixture
def study_run(study_run_template, tmp_path):
    return copy_run(*study_run_template, tmp_path)


@pytest.fixture(scope="module")
def built(study_run_template, tmp_path_factory):
    """A copy of the fitted run with its study built once (for tests that only read it)."""
    from prunexplain.study.build import build_study

    settings, run = copy_run(*study_run_template, tmp_path_factory.mktemp("built"))
    return settings, run, build_study(settings, run)
