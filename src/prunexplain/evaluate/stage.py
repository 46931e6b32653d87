"""The evaluate stage: every metric for every explained model, as one long table and plots.

Reads the explain stage's maps and predictions; writes `evaluate/metrics.csv` with columns
explainer, method, rate, metric, mean, ci_low, ci_high, n (one block per method of
`explain.methods`; the dense model is method `dense`, rate 1) and per explainer
`evaluate/metrics.png` (`metrics-<explainer>.png` beside Grad-CAM's: each metric, and test accuracy,
against compression rate, one line per pruning method). Every metric of an explainer reads that
explainer's maps, the agreement metrics compare them with the dense model's maps of the same
explainer, and its sanity check recomputes that explainer's maps. Datasets without object masks
(Imagenette) skip the localisation metrics.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from prunexplain.config import Settings, UserError
from prunexplain.data.loaders import as_trained, normalise, object_masks, read_image_rows, stacked
from prunexplain.evaluate.faithfulness import deletion_insertion, faithfulness_correlation, randomisation_similarity
from prunexplain.evaluate.metrics import METRICS, MetricInputs, bootstrap_mean
from prunexplain.evaluate.plot import plot_metrics
from prunexplain.evaluate.road import road
from prunexplain.explain.batched import attribution_options
from prunexplain.explain.cam import explain, target_layer
from prunexplain.models import load_checkpoint, select_device
from prunexplain.runs import DENSE, ModelKey, Run, write_csv

log = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    table: Path
    plots: list[Path]
    rows: list[dict]
    flagged: list[str]
    layer: str = ""
    object_share: float | None = None  # mean share of the image the object covers: a uniform map's energy

    def summary(self) -> str:
        flagged = f"; maps that survive randomisation: {', '.join(self.flagged)}" if self.flagged else ""
        plots = ", ".join(map(str, self.plots))
        return f"{len(self.rows)} rows in {self.table}, plots {plots}{self.localisation()}{flagged}"

    def localisation(self) -> str:
        """The dense model's pointing game and energy pointing game of the first explainer (what says
        whether its maps find the object at all, before pruning changes them); empty without object masks."""
        first = self.rows[0]["explainer"] if self.rows else ""
        dense = {r["metric"]: r for r in self.rows if r["method"] == DENSE and r["explainer"] == first}
        if "pointing_game_hit" not in dense:
            return ""
        hit, energy = dense["pointing_game_hit"], dense["energy_pointing_game"]
        return (f"; dense model's {first} at {self.layer}: pointing-game hit {hit['mean']:.2f} "
                f"[{hit['ci_low']:.2f}, {hit['ci_high']:.2f}], energy pointing game {energy['mean']:.2f} "
                f"[{energy['ci_low']:.2f}, {energy['ci_high']:.2f}] (n = {hit['n']}; the object covers "
                f"{self.object_share:.0%} of the image, a uniform map's energy)")


def _object_masks(images, size: int) -> np.ndarray | None:
    masks = object_masks(images, size)
    if masks is None:
        log.info("evaluate: the dataset has no object masks; localisation metrics skipped")
    return masks


def _per_image(
    settings: Settings, run: Run, key: ModelKey, path: Path, explainer: str, inputs: MetricInputs,
    x01: torch.Tensor, device: torch.device, now: Callable[[str], None],
) -> dict:
    """Every metric of one model's maps of `explainer`, per image; `x01` are the explained images,
    0..1, on `device`; `now(metric)` names each model-querying metric as it starts (the progress bar)."""
    values = {
        name: metric.function(inputs)
        for name, metric in METRICS.items()
        if metric.needs == "" or getattr(inputs, metric.needs) is not None
    }
    model, checkpoint = load_checkpoint(path, device)
    data = as_trained(settings.data, checkpoint["meta"]["data"])
    to_input = lambda x: normalise(x, data)  # noqa: E731
    classes = torch.from_numpy(np.load(run.predictions(key))).to(device)
    batch, seed = settings.explain.batch_size, settings.evaluate.seed
    now("deletion/insertion")
    values["deletion_auc"], values["insertion_auc"] = deletion_insertion(
        model, x01, inputs.maps, classes, to_input, settings.evaluate.steps, batch
    )
    now("ROAD")
    values["road_morf"], values["road_lerf"] = road(model, x01, inputs.maps, classes, to_input,
                                                    settings.evaluate.road_noise, seed, settings.evaluate.road_steps,
                                                    batch)
    now("faithfulness correlation")
    values["faithfulness_correlation"] = faithfulness_correlation(
        model, x01, inputs.maps, classes, to_input, settings.evaluate.correlation_runs, seed=seed, batch_size=batch
    )
    if settings.evaluate.sanity:
        now("sanity check")
        options = attribution_options(settings.explain, data, x01.shape[-1])
        explained = lambda m, x: explain(  # noqa: E731
            m, x, explainer, target_layer=settings.explain.target_layer, upsample_kernel=settings.explain.upsample,
            options=options,
        ).cpu().numpy()
        cascade = randomisation_similarity(model, to_input(x01), explained, settings.evaluate.seed, steps={0, -1})
        values["sanity_spearman_top_layer"] = cascade[0][1]
        values["sanity_spearman_all_layers"] = cascade[-1][1]
    return values


def _explained(run: Run, explainer: str) -> tuple[dict[ModelKey, Path], np.ndarray]:
    """The models with maps of `explainer`, and the dense model's maps (which every metric needs)."""
    models = {key: path for key, path in run.models().items() if run.maps(key, explainer).is_file()}
    if ModelKey() not in models:
        raise UserError(f"evaluate: no {explainer} maps of the dense model; run `prunexplain explain` first")
    return models, np.load(run.maps(ModelKey(), explainer))


def evaluate_stage(settings: Settings, run: Run) -> EvaluateResult:
    """Score the maps of every model and explainer the explain stage wrote."""
    explainers = {explainer: _explained(run, explainer) for explainer in settings.explain.methods}
    models, dense_maps = next(iter(explainers.values()))
    dense_model, checkpoint = load_checkpoint(models[ModelKey()])
    images = read_image_rows(run.explained_images, checkpoint["meta"]["classes"])
    if len(images) != len(dense_maps):
        raise UserError(f"{run.explained_images}: lists {len(images)} images, the dense maps hold "
                        f"{len(dense_maps)}; run `prunexplain explain` again")
    size = dense_maps.shape[-1]
    layer = target_layer(dense_model, settings.explain.target_layer, size)  # traced once, as explain did
    settings = settings.model_copy(update={"explain": settings.explain.model_copy(update={"target_layer": layer})})
    device = select_device(settings.runtime.device)
    x01, masks = stacked(images, size).to(device).float() / 255, _object_masks(images, size)
    rows, flagged = [], []
    progress = tqdm(total=sum(len(m) for m, _ in explainers.values()), desc="evaluate", unit="map set",
                    disable=not settings.runtime.progress)
    with progress:
        for explainer, (models, dense_maps) in explainers.items():
            for key, path in models.items():
                now = lambda metric: progress.set_postfix(model=str(key), explainer=explainer, metric=metric)  # noqa: E731
                now("maps")
                inputs = MetricInputs(maps=np.load(run.maps(key, explainer)), masks=masks,
                                      reference=None if key.dense else dense_maps, share=settings.explain.occlusion)
                per_image = _per_image(settings, run, key, path, explainer, inputs, x01, device, now)
                for metric, values in per_image.items():
                    mean, low, high = bootstrap_mean(values, settings.evaluate.seed, settings.evaluate.resamples)
                    rows.append({"explainer": explainer, "method": key.method or DENSE, "rate": key.rate,
                                 "metric": metric, "mean": mean, "ci_low": low, "ci_high": high, "n": len(values)})
                    if metric == "sanity_spearman_all_layers" and mean > settings.evaluate.sanity_threshold:
                        flagged.append(f"{key} ({explainer})")
                progress.update()
    table = write_csv(run.metrics, rows)
    accuracies = _accuracies(run)
    plots = [plot_metrics([r for r in rows if r["explainer"] == explainer], accuracies, run.metrics_plot_of(explainer))
             for explainer in explainers]
    if flagged:
        log.warning("maps that survive model randomisation (not explaining the model): %s", ", ".join(flagged))
    return EvaluateResult(table, plots, rows, flagged, layer,
                          None if masks is None else float(masks.mean()))


def _accuracies(run: Run) -> dict[str, list[tuple[float, float]]]:
    """Test top-1 against rate per pruning method, from the prune stage's tables."""
    curves = {}
    for method, table in run.prune_tables().items():
        with open(table) as handle:
            curves[method] = [(float(r["sparsity"]), float(r["test_top1_accuracy"])) for r in csv.DictReader(handle)]
    return curves
