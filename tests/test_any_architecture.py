"""The whole question asked of a researcher's own model and data: each architecture the issue names,
on a generated ImageFolder with odd class names and mixed image modes, through train -> prune (one
unstructured and one structured method, two rates) -> explain -> evaluate."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from prunexplain.config import load_settings
from prunexplain.models import load_checkpoint
from prunexplain.pipeline import run_pipeline
from prunexplain.runs import ModelKey, Run
from tests.imagefolder import ODD_CLASSES, write_image_folder

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resnet18_imagefolder.toml"
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
        else:  # whole channels (filters, biases, norms, readers' columns) to one channel's weights
            assert rates == pytest.approx([2, 4], rel=0.02)
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


@pytest.mark.slow
def test_the_worked_example_runs_on_a_folder_from_the_weights_in_torchs_cache(tmp_path, folder, monkeypatch):
    """examples/resnet18_imagefolder.toml as the README gives it, smaller: the ImageNet weights come
    from torch's cache (a file put there, as a user offline would), the data from the folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    imagenet = torchvision.models.resnet18()
    settings = load_settings(EXAMPLE, [
        f'run.root="{tmp_path}"', f'data.root="{folder}"', "data.image_size=32", "train.epochs=1",
        "train.batch_size=8", "prune.rates=[2, 4]", "prune.max_epochs=1", "explain.images=4",
        "evaluate.resamples=100", "runtime.progress=false", 'runtime.device="cpu"',
    ])
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cache = Path(torch.hub.get_dir()) / "checkpoints" / url.rpartition("/")[2]
    cache.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cache)
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="evaluate")

    model, dense = load_checkpoint(run.dense_checkpoint)
    assert dense["arch"] == "resnet18" and dense["meta"]["data"]["normalize"] == "imagenet"
    assert model.fc.out_features == len(ODD_CLASSES)
    start, tuned = imagenet.layer4[1].conv2.weight, model.layer4[1].conv2.weight
    assert 0 < (tuned - start).abs().mean() < 0.1 * start.abs().mean()  # fine-tuned from them, not from scratch
    pruned, checkpoint = load_checkpoint(run.checkpoint(ModelKey.pruned("local_l1_structured", 2)))
    assert {"conv1.weight", "fc.weight"}.isdisjoint(checkpoint["masks"])  # prune.exclude: never masked
    assert pruned.conv1.weight.count_nonzero() == pruned.conv1.weight.numel()  # not even through a coupling
    assert pruned.fc.weight.count_nonzero() == pruned.fc.weight.numel()
    assert run.removed_checkpoint(ModelKey.pruned("local_l1_structured", 4)).exists()
    assert run.metrics.exists()
