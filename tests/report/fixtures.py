"""Study and analysis folders beside a real run, as `study build` and `analyze` lay them out.

The stimuli are drawn from the run's own maps (so the report shows what a study would), the
answers come from simulated crowds analysed by the real analysis stage.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from prunexplain.analysis.stage import analyze
from prunexplain.config import AnalysisSettings, ModelTruth, PairTruth, SimulateSettings
from prunexplain.data.loaders import decode
from prunexplain.data.synthetic import CLASSES
from prunexplain.experiments import COMPARE, EXPERIMENTS, RECOGNISE
from prunexplain.explain.render import exp1_panel, exp2_image, heatmap, occlude, top_pixels
from prunexplain.runs import ModelKey, Run, write_json
from prunexplain.study.simulate import simulate

MODELS = {"nonpruned": "dense", "2pruned": "local_magnitude_unstructured/cr_2",
          "8pruned": "local_magnitude_unstructured/cr_8"}
_PAIRS = [("nonpruned", "2pruned"), ("nonpruned", "8pruned"), ("2pruned", "8pruned")]
DESCRIBED = {  # the manifest's description of every experiment of the spec
    key: {"kind": e.kind.name, "variant": e.rendering, "folder": key, "question": e.kind.question}
    for key, e in EXPERIMENTS.items()
}


def add_study(run: Run, images: int = 3, label_prefix: str = "") -> dict:
    """study/manifest.json and stimuli of `images` images per pair (exp1) and model (exp2)."""
    with open(run.explained_images, newline="") as handle:
        rows = list(csv.DictReader(handle))[:images]
    maps = {name: np.load(run.maps(ModelKey.parse(key)))[:images] for name, key in MODELS.items()}
    pictures = [decode(Path(row["path"]), maps["nonpruned"].shape[-1]) for row in rows]
    labels = [label_prefix + row["class"] for row in rows]
    drawn = {name: _drawn(pictures, m) for name, m in maps.items()}
    stimuli = []
    for i, (picture, label) in enumerate(zip(pictures, labels)):
        for key, experiment in EXPERIMENTS.items():
            shown = {name: variants[experiment.rendering][i] for name, variants in drawn.items()}
            kind = experiment.kind
            for models in (_PAIRS if kind.compares else [(model,) for model in MODELS]):
                file = f"{key}/{kind.stimulus_name(i, row_label(label), models)}"
                if kind.compares:
                    exp1_panel(shown[models[0]], picture, shown[models[1]], label, run.study.stimulus(file))
                else:
                    exp2_image(shown[models[0]], run.study.stimulus(file))
                stimuli.append({"experiment": key, "file": file, "image": i, "label": label,
                                **dict(zip(kind.shows, models))})
    manifest = {"classes": sorted(set(labels)), "models": {name: {"key": key} for name, key in MODELS.items()},
                "experiments": DESCRIBED, "stimuli": stimuli}
    write_json(run.study.manifest, manifest)
    return manifest


def row_label(label: str) -> str:
    """A label safe in a file name (the fixtures put markup into labels on purpose)."""
    return "".join(c for c in label if c.isalnum() or c == "-")


def _drawn(pictures: list[np.ndarray], maps: np.ndarray) -> dict[str, list[np.ndarray]]:
    masks = top_pixels(torch.from_numpy(maps), 0.1).numpy()
    return {"occlusion": [occlude(p, m) for p, m in zip(pictures, masks)],
            "heatmap": [heatmap(p, c) for p, c in zip(pictures, maps)]}


def add_analysis(run: Run, scratch: Path, sources: dict[str, str], images: int = 20) -> None:
    """analysis/<key>/ from simulated crowds and analysis/source.json with the given source per key."""
    crowd = dict(images=images, workers=12, answers_per_item=3, seed=1, classes=list(CLASSES))
    exp1 = SimulateSettings(experiment=COMPARE.name, pairs=[PairTruth(a="nonpruned", b="2pruned", preference=0.4),
                                                      PairTruth(a="nonpruned", b="8pruned", preference=0.7)], **crowd)
    exp2 = SimulateSettings(experiment=RECOGNISE.name, models=[ModelTruth(name="nonpruned"), ModelTruth(name="8pruned",
                                                                                               correct=0.6)], **crowd)
    answers = {COMPARE.name: simulate(exp1, scratch / COMPARE.name, power=False).results,
               RECOGNISE.name: simulate(exp2, scratch / RECOGNISE.name, power=False).results}
    settings = AnalysisSettings(bootstrap=50)
    listed = {}
    for key, experiment in EXPERIMENTS.items():
        file = answers[experiment.kind.name]
        analyze(experiment.kind.name, [file], settings, run.analysis(key))
        if key in sources:
            listed[key] = {"kind": experiment.kind.name, "source": sources[key], "files": [file.name]}
    write_json(run.analysis_source, listed)
