import numpy as np
import pytest

from prunexplain.config import UserError
from prunexplain.explain import batched
from prunexplain.explain.cam import explain
from prunexplain.explain.stage import explain_stage
from prunexplain.pruning.schedule import prune_stage
from prunexplain.runs import Run
from prunexplain.train import train_stage
from tests.conftest import tiny_settings


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, tiny_dataset):
    root = tmp_path_factory.mktemp("explain")
    settings = tiny_settings(root, tiny_dataset, "train.epochs=1", "explain.images=5", "explain.render=true")
    run = Run(settings.run_dir)
    train_stage(settings, run)
    prune_stage(settings, run)
    return settings, run


def test_every_model_gets_maps_of_the_same_images(pruned_run):
    settings, run = pruned_run
    result = explain_stage(settings, run)
    assert list(result.models) == [
        "dense",
        "local_magnitude_unstructured/cr_2", "local_magnitude_unstructured/cr_8",
        "local_random_unstructured/cr_2", "local_random_unstructured/cr_8",
    ]
    for key in result.models:
        maps = np.load(run.root.joinpath("explain", key, "maps.npy"))
        assert maps.shape == (5, 32, 32) and maps.dtype == np.float32
        peaks = maps.reshape(5, -1).max(1)
        assert ((np.abs(peaks - 1) < 1e-6) | (peaks == 0)).all() and maps.min() >= 0
        assert np.load(run.root.joinpath("explain", key, "predictions.npy")).shape == (5,)
        assert run.root.joinpath("explain", key, "png", "4_occlusion.png").exists()
    assert run.explained_images.read_text().splitlines()[0] == "index,path,label,class,mask"


def test_models_and_methods_are_chosen_by_name(pruned_run):
    settings, run = pruned_run
    chosen = settings.model_copy(update={"explain": settings.explain.model_copy(
        update={"models": ["local_random_unstructured/cr_8"], "methods": ["layercam", "saliency"], "render": True})})
    result = explain_stage(chosen, run)
    assert list(result.models) == ["local_random_unstructured/cr_8"]
    folder = run.root.joinpath("explain", "local_random_unstructured/cr_8")
    layercam, saliency = np.load(folder / "maps-layercam.npy"), np.load(folder / "maps-saliency.npy")
    assert layercam.shape == saliency.shape == (5, 32, 32) and not np.allclose(layercam, saliency)
    # each method renders into its own folder: one method's PNGs never overwrite another's
    renders = {method: (folder / f"png-{method}" / "0_heatmap.png").read_bytes() for method in ("layercam", "saliency")}
    assert renders["layercam"] != renders["saliency"]
    bad = chosen.model_copy(update={"explain": chosen.explain.model_copy(update={"models": ["sparse/cr_3"]})})
    with pytest.raises(UserError, match=r"explain.models: unknown \['sparse/cr_3'\] \(this run has: dense, "):
        explain_stage(bad, run)


def test_a_run_without_models_is_told_what_to_do(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset)
    assert Run(settings.run_dir).models() == {}
    with pytest.raises(UserError, match="run `prunexplain train`"):
        explain_stage(settings, Run(settings.run_dir))


def test_the_pil_upsample_setting_reaches_the_maps(pruned_run, monkeypatch):
    settings, run = pruned_run
    kernels = []

    def spy(model, images, method, classes, target_layer, upsample_kernel, options):
        kernels.append(upsample_kernel)
        return explain(model, images, method, classes, target_layer, upsample_kernel, options)

    monkeypatch.setattr(batched, "explain", spy)
    pil = settings.explain.model_copy(update={"models": ["dense"], "render": False, "upsample": "pil"})
    explain_stage(settings.model_copy(update={"explain": pil}), run)
    assert kernels == ["pil"]
    maps = np.load(run.root.joinpath("explain", "dense", "maps.npy"))
    peaks = maps.reshape(5, -1).max(1)
    # any overshoot below 0 is kept; the kernel's negative lobes bound it near -0.28 of the peak
    assert ((np.abs(peaks - 1) < 1e-6) | (peaks == 0)).all() and maps.min() > -0.3
