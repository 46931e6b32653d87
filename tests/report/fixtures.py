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
from prunexplain.explain.render import exp1_panel, exp2_image, heatmap, occlude, top_pixels
from prunexplain.runs import Run, write_json
from prunexplain.study.simulate import simulate

MODELS = {"nonpruned": "dense", "2pruned": "local_magnitude_unstructured/cr_2",
          "8pruned": "local_magnitude_unstructured/cr_8"}
EXPERIMENTS = {
    "exp1": {"kind": "exp1", "variant": "occlusion", "folder": "exp1", "question": "Which algorithm is more reasonable?"},
    "exp1_heatmap": {"kind": "exp1", "variant": "heatmap", "folder": "exp1_heatmap",
                     "question": "Which algorithm is more reasonable?"},
    "exp2": {"kind": "exp2", "variant": "occlusion", "folder": "exp2", "question": "What is on the picture?"},
}


def add_study(run: Run, images: int = 3, label_prefix: str = "") -> dict:
    """study/manifest.json and stimuli of `images` images per pair (exp1) and model (exp2)."""
    with open(run.path("explain", "images.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))[:images]
    maps = {name: np.load(run.path("explain", key, "maps.npy"))[:images] for name, key in MODELS.items()}
    pictures = [decode(Path(row["path"]), maps["nonpruned"].shape[-1]) for row in rows]
    labels = [label_prefix + row["class"] for row in rows]
    drawn = {name: _drawn(pictures, m) for name, m in maps.items()}
    stimuli = []
    for i, (picture, label) in enumerate(zip(pictures, labels)):
        for key in ("exp1", "exp1_heatmap"):
            for left, right in (("nonpruned", "2pruned"), ("nonpruned", "8pruned"), ("2pruned", "8pruned")):
                file = f"{key}/{i}_{left}_{row_label(label)}_{right}.png"
                exp1_panel(drawn[left][EXPERIMENTS[key]["variant"]][i], picture,
                           drawn[right][EXPERIMENTS[key]["variant"]][i], label, run.path("study", file))
                stimuli.append({"experiment": key, "file": file, "image": i, "label": label, "left": left, "right": right})
        for model in MODELS:
            file = f"exp2/{i}_{row_label(label)}_{model}.png"
            exp2_image(drawn[model]["occlusion"][i], run.path("study", file))
            stimuli.append({"experiment": "exp2", "file": file, "image": i, "label": label, "model": model})
    manifest = {"classes": sorted(set(labels)), "models": {name: {"key": key} for name, key in MODELS.items()},
                "experiments": EXPERIMENTS, "stimuli": stimuli}
    write_json(run.path("study", "manifest.json"), manifest)
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
    exp1 = SimulateSettings(experiment="exp1", pairs=[PairTruth(a="nonpruned", b="2pruned", preference=0.4),
                                                      PairTruth(a="nonpruned", b="8pruned", preference=0.7)], **crowd)
    exp2 = SimulateSettings(experiment="exp2", models=[ModelTruth(name="nonpruned"), ModelTruth(name="8pruned",
                                                                                               correct=0.6)], **crowd)
    answers = {"exp1": simulate(exp1, scratch / "exp1", power=False).results,
               "exp2": simulate(exp2, scratch / "exp2", power=False).results}
    settings = AnalysisSettings(bootstrap=50)
    listed = {}
    for key in ("exp1", "exp1_heatmap", "exp2"):
        file = answers[EXPERIMENTS[key]["kind"]]
        analyze(EXPERIMENTS[key]["kind"], [file], settings, run.path("analysis", key))
        if key in sources:
            listed[key] = {"source": sources[key], "files": [file.name]}
    write_json(run.path("analysis", "source.json"), listed)
