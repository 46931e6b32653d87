"""The evaluate stage: every metric for every explained model, as one long table and plots.

Reads the explain stage's maps and predictions; writes `evaluate/metrics.csv` with columns
explainer, method, rate, metric, mean, ci_low, ci_high, n (one block per method of
`explain.methods`; the dense model is method `dense`, rate 1) and per explainer
`evaluate/metrics.png` (`metrics-<explainer>.png` beside Grad-CAM's: each metric, and test accuracy,
against compression rate, one line per pruning method). Every metric of an explainer reads that
explainer's maps, the agreement metrics compare them with the dense model's maps of the same
explainer, and its sanity check recomputes that explainer's maps. Datasets without object masks
(Imagenette) skip the localisation metrics. Then the metrics themselves are judged
(`prunexplain.evaluate.meta`): `evaluate/meta.csv` and `evaluate/agreement.png`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from prunexplain.config import DataSettings, EvaluateSettings, Settings, UserError
from prunexplain.data.loaders import as_trained, normalise, object_masks, read_image_rows, stacked
from prunexplain.evaluate.faithfulness import deletion_insertion, faithfulness_correlation, randomisation_similarity
from prunexplain.evaluate.meta import MetaRow, meta_rows, plot_agreement
from prunexplain.evaluate.metrics import METRICS, MetricInputs, bootstrap_mean
from prunexplain.evaluate.plot import plot_metrics
from prunexplain.evaluate.road import road
from prunexplain.explain.batched import attribution_options, maps_and_predictions
from prunexplain.explain.cam import explain, target_layer
from prunexplain.models import load_checkpoint, select_device
from prunexplain.runs import DENSE, ModelKey, Run, scores_key, write_csv, write_with

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
    settings: Settings, model: nn.Module, data: DataSettings, explainer: str, inputs: MetricInputs,
    x01: torch.Tensor, classes: torch.Tensor, now: Callable[[str], None], sanity: bool,
) -> dict[str, np.ndarray]:
    """Every metric of one model's maps of `explainer`, per image; `x01` are the explained images,
    0..1, on the model's device, `classes` the classes explained; `now(metric)` names each
    model-querying metric as it starts (the progress bar)."""
    values = {
        name: metric.function(inputs)
        for name, metric in METRICS.items()
        if metric.needs == "" or getattr(inputs, metric.needs) is not None
    }
    to_input = lambda x: normalise(x, data)  # noqa: E731
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
    if sanity:
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


@dataclass
class _NoisyCopies:
    """The images of the meta-evaluation's noise resilience: which ones, and their noisy copies
    (uint8, as explain reads images, and 0..1 on the device), with their object masks."""

    chosen: np.ndarray
    images: torch.Tensor
    x01: torch.Tensor
    masks: np.ndarray | None

    @classmethod
    def of(cls, settings: EvaluateSettings, images: torch.Tensor, masks: np.ndarray | None, device) -> _NoisyCopies:
        generator = torch.Generator().manual_seed(settings.seed)
        count = min(settings.meta_images, len(images))
        chosen = np.sort(torch.randperm(len(images), generator=generator)[:count].numpy())
        clean = images[chosen].float() / 255
        noisy = (clean + settings.meta_noise * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
        noisy = (noisy * 255).round().to(torch.uint8)
        return cls(chosen, noisy, noisy.to(device).float() / 255, None if masks is None else masks[chosen])


def _explained(run: Run, explainer: str) -> tuple[dict[ModelKey, Path], np.ndarray]:
    """The models with maps of `explainer`, and the dense model's maps (which every metric needs)."""
    models = {key: path for key, path in run.models().items() if run.maps(key, explainer).is_file()}
    if ModelKey() not in models:
        raise UserError(f"evaluate: no {explainer} maps of the dense model; run `prunexplain explain` first")
    return models, np.load(run.maps(ModelKey(), explainer))


@dataclass
class _Scores:
    """One explainer's per-image scores, per metric and model, on the images and on their noisy copies."""

    clean: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: defaultdict(dict))
    noisy: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: defaultdict(dict))

    def means(self) -> dict[str, np.ndarray]:
        """Per metric the models' mean scores, every metric over the same models in the order they
        were scored; NaN where a model has no such metric (the dense model's agreement with itself)."""
        models = list(dict.fromkeys(m for by_model in self.clean.values() for m in by_model))
        return {metric: np.array([by_model[m].mean() if m in by_model else np.nan for m in models])
                for metric, by_model in self.clean.items()}

    def meta(self, explainer: str, chosen: np.ndarray) -> list[MetaRow]:
        on_copied = {metric: {m: v[chosen] for m, v in by_model.items()} for metric, by_model in self.clean.items()}
        return meta_rows(explainer, on_copied, self.noisy, self.means())


def evaluate_stage(settings: Settings, run: Run) -> EvaluateResult:
    """Score the maps of every model and explainer the explain stage wrote, and meta-evaluate the metrics."""
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
    pixels, masks = stacked(images, size), _object_masks(images, size)
    x01 = pixels.to(device).float() / 255
    copies = _NoisyCopies.of(settings.evaluate, pixels, masks, device)
    rows, flagged, meta, means, per_model = [], [], [], {}, {}
    progress = tqdm(total=sum(len(m) for m, _ in explainers.values()), desc="evaluate", unit="map set",
                    disable=not settings.runtime.progress)
    with progress:
        for explainer, (models, dense_maps) in explainers.items():
            scores, dense_noisy = _Scores(), None  # the dense model comes first (Run.models)
            for key, path in models.items():
                now = lambda metric: progress.set_postfix(model=str(key), explainer=explainer, metric=metric)  # noqa: E731
                inputs = MetricInputs(maps=np.load(run.maps(key, explainer)), masks=masks,
                                      reference=None if key.dense else dense_maps, share=settings.explain.occlusion)
                per_image, noisy_maps = _score_model(settings, run, key, path, explainer, inputs, x01, copies,
                                                     scores, dense_noisy, now)
                dense_noisy = noisy_maps if key.dense else dense_noisy
                for metric, values in per_image.items():
                    per_model[scores_key(explainer, key, metric)] = values
                    mean, low, high = bootstrap_mean(values, settings.evaluate.seed, settings.evaluate.resamples)
                    rows.append({"explainer": explainer, "method": key.method or DENSE, "rate": key.rate,
                                 "metric": metric, "mean": mean, "ci_low": low, "ci_high": high, "n": len(values)})
                    failed = metric.startswith("sanity_") and mean > settings.evaluate.sanity_threshold
                    if failed and f"{key} ({explainer})" not in flagged:  # the top layer's step or the whole cascade
                        flagged.append(f"{key} ({explainer})")
                progress.update()
            meta.extend(scores.meta(explainer, copies.chosen))
            means[explainer] = scores.means()
    table = write_csv(run.metrics, rows)
    write_with(run.scores, lambda handle: np.savez_compressed(handle, **per_model))
    accuracies = run.test_accuracies()
    plots = [plot_metrics([r for r in rows if r["explainer"] == explainer], accuracies, run.metrics_plot_of(explainer))
             for explainer in explainers]
    write_csv(run.meta_evaluation, [asdict(row) for row in meta])
    plots.append(plot_agreement(means, run.agreement_plot))
    if flagged:
        log.warning("maps that survive model randomisation (not explaining the model): %s", ", ".join(flagged))
    return EvaluateResult(table, plots, rows, flagged, layer,
                          None if masks is None else float(masks.mean()))


def _score_model(
    settings: Settings, run: Run, key: ModelKey, path: Path, explainer: str, inputs: MetricInputs,
    x01: torch.Tensor, copies: _NoisyCopies, scores: _Scores, dense_noisy: np.ndarray | None,
    now: Callable[[str], None],
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every metric of one model's maps per image, recorded in `scores` with the noisy copies' ones;
    returns them and the model's maps of the copies (None without copies)."""
    now("maps")
    model, checkpoint = load_checkpoint(path, x01.device)
    data = as_trained(settings.data, checkpoint["meta"]["data"])
    classes = torch.from_numpy(np.load(run.predictions(key))).to(x01.device)
    per_image = _per_image(settings, model, data, explainer, inputs, x01, classes, now, settings.evaluate.sanity)
    noisy_maps = None
    if len(copies.chosen):
        now("noisy copies")
        noisy_maps, noisy = _noisy_scores(settings, model, data, explainer, copies, dense_noisy, now)
        for metric, values in noisy.items():
            scores.noisy[metric][str(key)] = values
    for metric, values in per_image.items():
        scores.clean[metric][str(key)] = values
    return per_image, noisy_maps


def _noisy_scores(
    settings: Settings, model: nn.Module, data: DataSettings, explainer: str, copies: _NoisyCopies,
    dense_maps: np.ndarray | None, now: Callable[[str], None],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The model's maps of the noisy copies, explained as the explain stage explains (the classes it
    predicts on them), and every metric of them but the sanity check (a property of the model, not
    of the images); `dense_maps`: the dense model's maps of the copies (None: this is the dense model)."""
    maps, predicted = maps_and_predictions(model, copies.images, data, settings.explain, copies.x01.device, explainer)
    inputs = MetricInputs(maps=maps, masks=copies.masks, reference=dense_maps, share=settings.explain.occlusion)
    classes = torch.from_numpy(predicted).to(copies.x01.device)
    return maps, _per_image(settings, model, data, explainer, inputs, copies.x01, classes, now, sanity=False)
