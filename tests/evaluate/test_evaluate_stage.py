import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from prunexplain.config import UserError
from prunexplain.evaluate import stage
from prunexplain.evaluate.stage import evaluate_stage
from prunexplain.explain.cam import explain
from prunexplain.explain.stage import explain_stage
from prunexplain.pruning.schedule import prune_stage
from prunexplain.runs import Run
from prunexplain.train import train_stage
from tests.conftest import tiny_settings


def test_every_metric_of_every_model_lands_in_the_long_table(tmp_path, tiny_dataset, monkeypatch):
    """With the study's PIL upsampling, so that the maps carry its negative overshoot end to end."""
    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", "evaluate.resamples=200",
                             'prune.methods=["local_magnitude_unstructured"]', 'explain.upsample="pil"')
    kernels = set()

    def spy(model, images, method, upsample_kernel, **options):
        kernels.add(upsample_kernel)
        return explain(model, images, method, upsample_kernel=upsample_kernel, **options)

    monkeypatch.setattr(stage, "explain", spy)
    run = Run(settings.run_dir)
    with pytest.raises(UserError, match="run `prunexplain explain` first"):
        evaluate_stage(settings, run)
    train_stage(settings, run)
    prune_stage(settings, run)
    explain_stage(settings, run)
    result = evaluate_stage(settings, run)
    with open(result.table) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["explainer", "method", "rate", "metric", "mean", "ci_low", "ci_high", "n"]
    dense = {r["metric"] for r in rows if r["method"] == "dense"}
    pruned = {r["metric"] for r in rows if r["rate"] == "8.0"}
    assert {"energy_pointing_game", "deletion_auc", "insertion_auc", "sanity_spearman_all_layers", "gini"} <= dense
    assert pruned == dense | {"spearman_to_dense", "top10_iou_dense", "ssim_to_dense"}
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) and r["n"] == "4" for r in rows)
    assert result.plots == [run.metrics_plot, run.agreement_plot] and run.metrics_plot.stat().st_size > 10_000
    hit = next(r for r in rows if r["method"] == "dense" and r["metric"] == "pointing_game_hit")
    assert f"pointing-game hit {float(hit['mean']):.2f} [" in result.summary()
    assert "dense model's gradcam at features.42:" in result.summary()  # traced: the 32-px model's last 2x2 map
    with open(run.explained_images) as handle:
        masks = [r["mask"] for r in csv.DictReader(handle)]
    share = sum((np.asarray(Image.open(m)) > 0).mean() for m in masks) / len(masks)  # what a uniform map scores
    assert f"the object covers {share:.0%} of the image" in result.summary()
    assert kernels == {"pil"}  # the sanity check's maps are made as the explain stage's


def test_every_explainer_is_scored_on_its_own_maps(tmp_path, tiny_dataset, monkeypatch):
    """Each method of explain.methods gets its own rows, compared with the dense model's maps of the
    same method, and its own sanity check and plot: never Grad-CAM's numbers under another name."""
    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", "evaluate.resamples=200", "prune.rates=[4]",
                             'prune.methods=["local_magnitude_unstructured"]',
                             'explain.methods=["gradcam", "saliency"]')
    sanity = []

    def spy(model, images, method, **options):
        sanity.append(method)
        return explain(model, images, method, **options)

    monkeypatch.setattr(stage, "explain", spy)
    run = Run(settings.run_dir)
    train_stage(settings, run)
    prune_stage(settings, run)
    explain_stage(settings, run)
    result = evaluate_stage(settings, run)
    table = {(r["explainer"], r["method"], r["metric"]): r["mean"] for r in result.rows}
    assert {key[0] for key in table} == {"gradcam", "saliency"}
    for metric in ("energy_pointing_game", "gini", "deletion_auc", "spearman_to_dense"):
        method = "dense" if metric != "spearman_to_dense" else "local_magnitude_unstructured"
        assert table[("gradcam", method, metric)] != table[("saliency", method, metric)], metric
    assert set(sanity) == {"gradcam", "saliency"}
    assert result.plots == [run.metrics_plot, run.metrics_plot_of("saliency"), run.agreement_plot]
    assert all(path.stat().st_size > 10_000 for path in result.plots)


def test_datasets_without_masks_skip_localisation(tmp_path, tiny_dataset):
    copy = tmp_path / "nomasks"
    shutil.copytree(tiny_dataset, copy)
    shutil.rmtree(copy / "masks")
    settings = tiny_settings(tmp_path, copy, "train.epochs=1", "prune.rates=[2]", "evaluate.sanity=false",
                             'prune.methods=["local_magnitude_unstructured"]', "evaluate.resamples=200")
    run = Run(settings.run_dir)
    train_stage(settings, run)
    explain_stage(settings, run)
    result = evaluate_stage(settings, run)
    metrics = {r["metric"] for r in result.rows}
    assert "pointing" not in result.summary()
    assert "energy_pointing_game" not in metrics and "deletion_auc" in metrics and "entropy" in metrics


def test_the_meta_evaluation_scores_every_metric_of_every_explainer(tmp_path, tiny_dataset, monkeypatch):
    """Noise resilience from re-explained noisy copies of the chosen images (the classes the model
    predicts on the copies), agreement across the run's models; without copies only the agreement."""
    settings = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1", "evaluate.resamples=200", "prune.rates=[2, 8]",
                             'prune.methods=["local_magnitude_unstructured"]', "evaluate.sanity=false",
                             'explain.methods=["gradcam", "saliency"]', "evaluate.meta_images=3")
    run = Run(settings.run_dir)
    train_stage(settings, run)
    prune_stage(settings, run)
    explain_stage(settings, run)
    copied = []
    real = stage.maps_and_predictions
    monkeypatch.setattr(stage, "maps_and_predictions",
                        lambda model, images, *a: copied.append(images) or real(model, images, *a))
    evaluate_stage(settings, run)
    with open(run.meta_evaluation) as handle:
        meta = list(csv.DictReader(handle))
    with open(run.metrics) as handle:
        metrics = {(r["explainer"], r["metric"]) for r in csv.DictReader(handle)}
    assert {(r["explainer"], r["metric"]) for r in meta} == metrics
    assert len(copied) == 2 * 3 and all(len(images) == 3 for images in copied)  # 2 explainers x 3 models
    clean = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in
                                       _explained_paths(run)])).permute(0, 3, 1, 2)
    differences = [(copied[0].float() - clean[i].float()).abs().mean((1, 2, 3)) for i in range(len(clean))]
    assert torch.stack(differences).min(0).values.max() < 10  # each copy is a slightly noisy explained image
    assert not torch.equal(copied[0], clean[: len(copied[0])])
    by_metric = {(r["explainer"], r["metric"]): r for r in meta}
    for row in meta:
        resilience, agreement = float(row["noise_resilience"]), float(row["agreement"])
        assert np.isnan(resilience) or -1 <= resilience <= 1
        assert np.isnan(agreement) or -1 <= agreement <= 1
    assert by_metric[("gradcam", "deletion_auc")]["better"] == "lower"
    assert by_metric[("saliency", "gini")]["better"] == ""
    assert run.agreement_plot.stat().st_size > 10_000

    settings = settings.model_copy(update={"evaluate": settings.evaluate.model_copy(update={"meta_images": 0})})
    evaluate_stage(settings, run)
    with open(run.meta_evaluation) as handle:
        meta = list(csv.DictReader(handle))
    assert all(np.isnan(float(r["noise_resilience"])) for r in meta)
    assert any(not np.isnan(float(r["agreement"])) for r in meta)


def _explained_paths(run: Run) -> list[str]:
    with open(run.explained_images) as handle:
        return [r["path"] for r in csv.DictReader(handle)]
