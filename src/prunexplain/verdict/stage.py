"""The verdict stage: the answer to the question the tool exists for, with its uncertainty.

Per pruning method, test accuracy and every metric of `verdict.margins` (per explainer) become a
line of non-inferiority tests against the dense model (`prunexplain.verdict.stats`), paired image by
image on the explained images: the metrics' per-image scores of the evaluate stage, and for accuracy
whether each model classifies each explained image correctly. A model whose test top-1 accuracy
(the prune stage's table) is below the floor is collapsed: its maps explain a model that no longer
classifies, so none of its numbers can count as good. Writes `verdict.json`; `sentences` says it
in words, one per method.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prunexplain.config import BETTER, Settings, UserError
from prunexplain.runs import ModelKey, Run, scores_key, write_text
from prunexplain.verdict.stats import Line, compare

ACCURACY = "top-1 accuracy"


@dataclass
class Verdict:
    floor: float
    collapsed: dict[str, list[float]]  # method -> collapsed rates
    lines: dict[str, dict[str, Line]]  # method -> "<explainer> <metric>" or ACCURACY -> line
    sentences: list[str]

    def summary(self) -> str:
        return " ".join(self.sentences)


def verdict_stage(settings: Settings, run: Run) -> Verdict:
    """Judge every method's rates against the dense model; write `verdict.json`."""
    if not run.scores.is_file():
        raise UserError(f"{run.scores}: no per-image scores; run `prunexplain evaluate` first")
    scores = dict(np.load(run.scores))
    labels = _labels(run)
    tests = settings.verdict
    floor = tests.accuracy_floor if tests.accuracy_floor is not None else 2 / _classes(run)
    tested = run.test_accuracies()
    by_method: dict[str, list[ModelKey]] = {}
    for key in run.models():
        if not key.dense:
            by_method.setdefault(key.method, []).append(key)
    dense_correct = _correct(run, ModelKey(), labels)
    collapsed_rates, lines_by_method = {}, {}
    for method, keys in by_method.items():
        collapsed = {key.rate for key in keys if _below(tested.get(method, []), key.rate, floor)}
        collapsed_rates[method] = sorted(collapsed)
        lines = {ACCURACY: compare(ACCURACY, {k.rate: [_correct(run, k, labels) - dense_correct] for k in keys},
                                   tests.accuracy_margin, collapsed, tests.confidence, tests.correction,
                                   tests.resamples, tests.seed)}
        for explainer in settings.explain.methods:
            for metric, margin in tests.margins.items():
                dense = scores.get(scores_key(explainer, ModelKey(), metric))
                pruned = {k.rate: scores.get(scores_key(explainer, k, metric)) for k in keys}
                if dense is None or any(v is None for v in pruned.values()):
                    continue  # not scored in this run (no object masks, or not explained)
                better = BETTER[metric]
                lines[f"{explainer} {metric}"] = compare(
                    f"{explainer} {metric}", {rate: [better * (v - dense)] for rate, v in pruned.items()}, margin,
                    collapsed, tests.confidence, tests.correction, tests.resamples, tests.seed)
        lines_by_method[method] = lines
    verdict = Verdict(floor, collapsed_rates, lines_by_method, [])
    verdict.sentences = [_sentence(method, lines, floor, tests.confidence) for method, lines in verdict.lines.items()]
    write_text(run.verdict, json.dumps(_as_json(verdict, settings), indent=1))
    return verdict


def _sentence(method: str, lines: dict[str, Line], floor: float, confidence: float) -> str:
    """What the method's lines say, in words: where accuracy and the explanations hold and break."""
    accuracy = lines[ACCURACY]
    parts = [f"With {method}, accuracy {_holds([accuracy], floor, confidence, ('holds', 'breaks at'))}"]
    explanations = [line for name, line in lines.items() if name != ACCURACY]
    if explanations:
        words = ("stay as good as the dense model's", "are worse from")
        parts.append(f"the explanations {_holds(explanations, floor, confidence, words)}")
    return "; ".join(parts) + "."


def _holds(lines: list[Line], floor: float, confidence: float, words: tuple[str, str]) -> str:
    """Where a group of lines holds (every line non-inferior) and where the first of them breaks, naming
    the line that falls furthest below its margin there, or the collapse."""
    verb, breaks = words
    rates = [c.rate for c in lines[0].comparisons]
    broken = [line for line in lines if line.breaks_at is not None]
    if not broken:
        return f"{verb} at every tested rate, up to {_rate(max(rates))}"
    first = min(line.breaks_at.rate for line in broken)
    held = [rate for rate in rates if rate < first]
    span = f"{verb} up to {_rate(max(held))}" if held else f"{verb} at no tested rate"
    at = [line for line in broken if line.breaks_at.rate == first]
    if at[0].breaks_at.collapsed:
        return f"{span}: from {_rate(first)} the models have collapsed (test top-1 below {floor:.0%})"
    worst = min(at, key=lambda line: line.breaks_at.ci_high + line.margin)
    more = f"; {len(at) - 1} more metric{'s' * (len(at) > 2)} there" if len(at) > 1 else ""
    c = worst.breaks_at
    return (f"{span} and {breaks} {_rate(first)} ({worst.measure} {c.difference:+.3f}, "
            f"{confidence:.0%} CI {c.ci_low:+.3f} "
            f"to {c.ci_high:+.3f}, margin {worst.margin:g}{more})")


def _rate(rate: float) -> str:
    return f"{rate:g}x"


def _as_json(verdict: Verdict, settings: Settings) -> dict:
    return {"settings": settings.verdict.model_dump(mode="json"), "accuracy_floor": verdict.floor,
            "collapsed": verdict.collapsed, "sentences": verdict.sentences,
            "lines": {method: {name: {"margin": line.margin, "holds_to": line.holds_to,
                                      "breaks_at": None if line.breaks_at is None else line.breaks_at.rate,
                                      "comparisons": [asdict(c) for c in line.comparisons]}
                               for name, line in lines.items()}
                      for method, lines in verdict.lines.items()}}


def _labels(run: Run) -> np.ndarray:
    with open(run.explained_images, newline="") as handle:
        return np.array([int(row["label"]) for row in csv.DictReader(handle)])


def _correct(run: Run, key: ModelKey, labels: np.ndarray) -> np.ndarray:
    """1 where the model classifies the explained image correctly, else 0 (the accuracy's pairs)."""
    return (np.load(run.predictions(key)) == labels).astype(np.float64)


def _below(tested: list[tuple[float, float]], rate: float, floor: float) -> bool:
    """Whether the model at `rate` has a test top-1 below `floor` in its method's (rate, accuracy) pairs
    (False where the table lacks the rate)."""
    return any(math.isclose(at, rate, rel_tol=1e-5) and accuracy < floor for at, accuracy in tested)


def _classes(run: Run) -> int:
    import torch

    checkpoint = torch.load(run.dense_checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return len(checkpoint["meta"]["classes"])


def read_verdict(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no verdict yet; run `prunexplain verdict`") from None


BREAKING = ("method", "measure", "holds to", "breaks at", "difference there [interval]", "margin")


def breaking_rows(verdict: dict) -> list[tuple[str, ...]]:
    """The lines of `verdict.json` as rows of `BREAKING`: per method and measure where it holds and breaks."""
    rows = []
    for method, lines in verdict["lines"].items():
        for measure, line in lines.items():
            at = next((c for c in line["comparisons"] if c["rate"] == line["breaks_at"]), None)
            there = "-" if at is None else "collapsed" if at["collapsed"] else (
                f"{at['difference']:+.3f} [{at['ci_low']:+.3f}, {at['ci_high']:+.3f}]")
            rows.append((method, measure, "-" if line["holds_to"] is None else _rate(line["holds_to"]),
                         "none" if line["breaks_at"] is None else _rate(line["breaks_at"]), there,
                         f"{line['margin']:g}"))
    return rows


def verdict_table(verdict: dict) -> str:
    """`breaking_rows` as a text table, for the terminal."""
    rows = [BREAKING, *breaking_rows(verdict)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(BREAKING))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
