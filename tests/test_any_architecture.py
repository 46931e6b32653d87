"""The whole question asked of a researcher's own model and data: each architecture the issue names,
on a generated ImageFolder with odd class names and mixed image modes, through train -> prune (one
unstructured and one structured method, two rates) -> explain -> evaluate."""

import csv

import numpy as np
import pytest
import torch

from prunexplain.config import load_settings
from prunexplain.models import load_checkpoint
from prunexplain.pipeline import run_pipeline
from prunexplain.runs import ModelKey, Run
from tests.imagefolder import ODD_CLASSES, write_image_folder

ARCHITECTURES = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "convnext_tiny"]
METHODS = ["local_magnitude_unstructured", "local_l1_structured"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"))


def _settings(tmp_path, root, arch: str):
    # ConvNeXt normalises its convolutions' channels with LayerNorm, which masks cannot stand for: its
    # removable channels are the hidden ones between each block's two Linear layers
    scope = "conv_linear" if arch.startswith("convnext") else "conv"
    return load_settings(None, [
        f'run.root="{tmp_path}"', f'run.name="{arch}"', 'data.dataset="imagefolder"', f'data.root="{root}"',
        "data.image_size=32", f'model.arch="{arch}"', "train.epochs=1", "train.batch_size=8",
        f"prune.methods={METHODS}", "prune.rates=[2, 4]", "prune.max_epochs=1", f'prune.scope="{scope}"',
        "explain.images=4",
        "evaluate.resamples=100", "runtime.progress=false", 'runtime.device="cpu"',
    ])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_stage_runs_on_any_architecture_and_folder(tmp_path, folder, arch):
    torch.manual_seed(0)
    settings = _settings(tmp_path, folder, arch)
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="evaluate")

    _, dense = load_checkpoint(run.dense_checkpoint)
    assert dense["arch"] == arch and dense["meta"]["classes"] == sorted(ODD_CLASSES)
    for method in METHODS:
        with open(run.prune_results(method)) as handle:
            rows = list(csv.DictReader(handle))
        assert [r["sparsity"] for r in rows] == ["1", "2", "4"]
        rates = [float(r["measured_rate_scope"]) for r in rows[1:]]
        if method.endswith("_unstructured"):  # exact: every prunable weight counts, depthwise and 1x1 too
            assert rates == pytest.approx([2, 4], rel=1e-3)
        else:  # whole channels: filters, biases, batch norms and the readers' input columns masked
            assert rates[1] > rates[0] > 1.5
            macs = [int(r["macs"]) for r in rows]
            assert macs[2] < macs[1] < macs[0]  # measured on the physically smaller models
    keys = [ModelKey(), *(ModelKey.pruned(m, r) for m in METHODS for r in (2, 4))]
    for key in keys:
        maps = np.load(run.maps(key))
        assert maps.shape == (4, 32, 32) and np.isfinite(maps).all() and maps.max() <= 1 + 1e-6
    with open(run.metrics) as handle:
        metrics = list(csv.DictReader(handle))
    scored = {(r["method"], r["rate"]) for r in metrics if r["metric"] == "pointing_game_hit"}
    assert len(scored) == len(keys)  # the masks/ tree turned localisation on for every model
    assert {r["metric"] for r in metrics} >= {"deletion_auc", "insertion_auc", "sanity_spearman_all_layers"}
