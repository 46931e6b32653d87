"""The people's side of the verdict: the study's answers as lines of non-inferiority tests.

Experiment 2 (recognise): per image, the share of answers naming the right class under a pruned
model's map minus under the dense model's. Experiment 1 (compare): per image, over the answers to
the pair (dense, pruned), the share preferring the pruned map minus the share preferring the dense
one ("equally reasonable" counts as neither). Both are read from the analysis' `items.csv`, real
answers or a simulated or predicted crowd alike (the line names its source), and are paired by
image like the metrics. A study shows one replicate's models (`study.seed_model`): one seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from prunexplain.config import VerdictSettings, read_json
from prunexplain.experiments import DENSE_NAME, KINDS
from prunexplain.runs import AnalysisFolder, ModelKey, Run
from prunexplain.verdict.replicates import is_collapsed
from prunexplain.verdict.stats import Line, compare

RECOGNITION, PREFERENCE = "recognition", "preference"


@dataclass(frozen=True)
class HumanLine:
    experiment: str  # the study's experiment key (exp1, exp1_heatmaps, exp2)
    source: str  # real, simulated or observers
    method: str
    line: Line


def human_lines(run: Run, tests: VerdictSettings, collapsed: dict[str, list[float]]) -> list[HumanLine]:
    """One line per analysed experiment of the run's study (none before a study was analysed)."""
    if not run.analysis_source.is_file() or not run.study.manifest.is_file():
        return []
    models = {name: ModelKey.parse(model["key"]) for name, model in read_json(run.study.manifest)["models"].items()}
    lines = []
    for experiment, source in read_json(run.analysis_source).items():
        items_file = AnalysisFolder(run.analysis(experiment)).items
        if not items_file.is_file():
            continue
        items = pd.read_csv(items_file, dtype={"image": str})
        measure = PREFERENCE if KINDS[source["kind"]].compares else RECOGNITION
        if measure not in tests.human_margins:
            continue
        per_model = _preferences(items, models) if measure == PREFERENCE else _recognition(items, models)
        for method in sorted({key.method for key in per_model}):
            differences = {key.rate: [values] for key, values in per_model.items() if key.method == method}
            rates = {rate for rate in differences if is_collapsed(collapsed, method, rate)}
            line = compare(f"people {experiment} {measure}", differences, tests.human_margins[measure], rates,
                           tests.confidence, tests.correction, tests.resamples, tests.seed)
            lines.append(HumanLine(experiment, source["source"], method, line))
    return lines


def _recognition(items: pd.DataFrame, models: dict[str, ModelKey]) -> dict[ModelKey, np.ndarray]:
    """Per pruned model each image's share of right answers minus the dense model's on that image."""
    share = (items.assign(share=items["correct"] / items["answers"])
             .groupby(["image", "model"])["share"].mean().unstack())
    if DENSE_NAME not in share:
        return {}
    return {models[name]: (share[name] - share[DENSE_NAME]).dropna().to_numpy()
            for name in share if name in models and not models[name].dense}


def _preferences(items: pd.DataFrame, models: dict[str, ModelKey]) -> dict[ModelKey, np.ndarray]:
    """Per pruned model shown beside the dense one: each image's share of answers preferring it minus
    the share preferring the dense model."""
    result = {}
    for name, key in models.items():
        pair = items[((items["left"] == name) & (items["right"] == DENSE_NAME))
                     | ((items["left"] == DENSE_NAME) & (items["right"] == name))]
        if key.dense or pair.empty:
            continue
        pruned_left = pair["left"] == name
        pruned = pair["alg1"].where(pruned_left, pair["alg2"])
        dense = pair["alg2"].where(pruned_left, pair["alg1"])
        per_item = pair.assign(value=(pruned - dense) / pair["answers"])
        result[key] = per_item.groupby("image")["value"].mean().to_numpy()
    return result


def agreement(human: list[HumanLine], automatic: dict[str, dict[str, Line]]) -> list[dict]:
    """Per human line and automatic line of its method: on the rates the people judged, how often the
    two decide alike (non-inferior or not) and whether they break at the same rate: which measures
    predict the people."""
    rows = []
    for person in human:
        rates = [c.rate for c in person.line.comparisons]
        said = [c.non_inferior for c in person.line.comparisons]
        for measure, line in automatic.get(person.method, {}).items():
            decided = {c.rate: c.non_inferior for c in line.comparisons}
            if not all(rate in decided for rate in rates):
                continue
            same = [decided[rate] == verdict for rate, verdict in zip(rates, said)]
            rows.append({"method": person.method, "people": person.line.measure, "measure": measure,
                         "agree": sum(same), "of": len(same), "same_breaking_point": _first_break(line, rates)
                         == _first_break(person.line, rates)})
    return rows


def _first_break(line: Line, rates: list[float]) -> float | None:
    return next((c.rate for c in line.comparisons if c.rate in rates and not c.non_inferior), None)
