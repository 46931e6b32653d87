"""The verdict stage: the answer to the question the tool exists for, with its uncertainty.

Per pruning method, test accuracy and every metric of `verdict.margins` (per explainer) become a
line of non-inferiority tests against the dense model (`prunexplain.verdict.stats`), paired image by
image within each seed (`replicates`): accuracy over the whole test split, the metrics over the
explained images; the study's answers become lines of their own (`human`), and each automatic line
is compared with them. A model whose test top-1 accuracy (the prune tables', averaged over seeds) is
below the floor is collapsed: its maps explain a model that no longer classifies, so none of its
numbers can count as good. Writes `verdict.json` and `verdict/` (every measure over seeds and
images, its figures); `sentences` says it in words, leaving out metrics the meta-evaluation finds
mostly noise.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prunexplain.config import BETTER, Settings, UserError, read_json
from prunexplain.runs import ModelKey, Run, scores_key, write_text
from prunexplain.verdict.human import HumanLine, agreement, human_lines
from prunexplain.verdict.replicates import (
    ACCURACY,
    Replicate,
    accuracy_pairs,
    aggregate,
    collapsed_rates,
    is_collapsed,
    replicates,
    write_aggregate,
)
from prunexplain.verdict.stats import Line, compare


@dataclass
class Verdict:
    floor: float
    seeds: list[int]
    collapsed: dict[str, list[float]]  # method -> collapsed rates
    lines: dict[str, dict[str, Line]]  # method -> "<explainer> <metric>" or ACCURACY -> line
    human: list[HumanLine]
    agreement: list[dict]  # per human and automatic line: how often they decide alike
    unreliable: dict[str, float]  # "<explainer> <metric>" -> its noise resilience, below verdict.min_resilience
    departures: list[str]  # verdict settings other than those the study's manifest froze
    sentences: list[str]

    def summary(self) -> str:
        """The methods' sentences (the people's, the agreement and the notes are in verdict.json)."""
        return " ".join(self.sentences[: len(self.lines)])


def verdict_stage(settings: Settings, run: Run) -> Verdict:
    """Judge every method's rates against the dense model over every seed; write `verdict.json` and the
    aggregated table and figures."""
    tests = settings.verdict
    reps = replicates(settings, run)
    floor = tests.accuracy_floor if tests.accuracy_floor is not None else 2 / _classes(run)
    collapsed = collapsed_rates(reps, floor)
    write_aggregate(run, aggregate(reps, tests, collapsed), collapsed)
    lines = {method: _lines(settings, reps, method, collapsed) for method in reps[0].accuracies}
    human = human_lines(run, tests, collapsed)
    verdict = Verdict(floor, [rep.seed for rep in reps], collapsed, lines, human, agreement(human, lines),
                      _unreliable(run, settings), _departures(settings, run), [])
    verdict.sentences = _sentences(verdict, tests.confidence, tests.min_resilience)
    write_text(run.verdict, json.dumps(_as_json(verdict, settings), indent=1))
    return verdict


def _lines(settings: Settings, reps: list[Replicate], method: str, collapsed: dict[str, list[float]]) -> dict:
    """One method's lines: test accuracy, then each explainer's metrics of `verdict.margins`."""
    tests = settings.verdict
    rates = sorted(key.rate for key in reps[0].run.models() if not key.dense and key.method == method)
    down = {rate for rate in rates if is_collapsed(collapsed, method, rate)}

    def judge(measure: str, differences: dict[float, list[np.ndarray]], margin: float) -> Line:
        return compare(measure, differences, margin, down, tests.confidence, tests.correction, tests.resamples,
                       tests.seed)

    lines = {ACCURACY: judge(ACCURACY, {rate: accuracy_pairs(reps, method, rate) for rate in rates},
                             tests.accuracy_margin)}
    for explainer in settings.explain.methods:
        for metric, margin in tests.margins.items():
            differences = {rate: _metric_pairs(reps, explainer, metric, ModelKey.pruned(method, rate))
                           for rate in rates}
            if rates and all(differences.values()):  # else not scored here (no object masks, not explained)
                lines[f"{explainer} {metric}"] = judge(f"{explainer} {metric}", differences, margin)
    return lines


def _metric_pairs(reps: list[Replicate], explainer: str, metric: str, key: ModelKey) -> list[np.ndarray]:
    """Per seed the paired differences pruned - dense of one metric, the better way up."""
    pairs = []
    for rep in reps:
        pruned, dense = (rep.scores.get(scores_key(explainer, k, metric)) for k in (key, ModelKey()))
        if pruned is not None and dense is not None:
            difference = BETTER[metric] * (pruned - dense)
            pairs.append(difference[np.isfinite(difference)])
    return pairs


def _unreliable(run: Run, settings: Settings) -> dict[str, float]:
    """The judged metrics whose noise resilience (the meta-evaluation) is below `verdict.min_resilience`."""
    if not run.meta_evaluation.is_file():
        return {}
    with open(run.meta_evaluation, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {f"{row['explainer']} {row['metric']}": float(row["noise_resilience"]) for row in rows
            if row["metric"] in settings.verdict.margins and row["noise_resilience"] not in ("", "nan")
            and float(row["noise_resilience"]) < settings.verdict.min_resilience}


def _departures(settings: Settings, run: Run) -> list[str]:
    """The verdict settings that differ from those the study's manifest froze when it was built."""
    if not run.study.manifest.is_file():
        return []
    frozen = read_json(run.study.manifest).get("settings", {}).get("verdict")
    if frozen is None:  # a manifest of a study built before the verdict
        return []
    now = settings.verdict.model_dump(mode="json")
    return [f"verdict.{key}: {frozen.get(key)!r} frozen, {now.get(key)!r} now" for key in sorted(set(now) | set(frozen))
            if frozen.get(key) != now.get(key)]


def _sentences(verdict: Verdict, confidence: float, min_resilience: float) -> list[str]:
    sentences = [_sentence(method, {name: line for name, line in lines.items() if name not in verdict.unreliable},
                           verdict.floor, confidence) for method, lines in verdict.lines.items()]
    for person in verdict.human:
        where = _holds([person.line], verdict.floor, confidence, ("holds", "breaks at"))
        sentences.append(f"People ({person.experiment}, {person.source} answers, {person.method}): "
                         f"{person.line.measure.rsplit(' ', 1)[-1]} {where}.")
        predicting = [row["measure"] for row in verdict.agreement
                      if row["people"] == person.line.measure and row["agree"] == row["of"]]
        sentences.append(f"Measures that decide as the people's {person.experiment} at every rate they judged: "
                         f"{', '.join(predicting) or 'none'}.")
    if verdict.unreliable:
        sentences.append(f"Left out of these sentences (noise resilience below {min_resilience:g}): "
                         + ", ".join(f"{name} ({value:.2f})" for name, value in verdict.unreliable.items()) + ".")
    if verdict.departures:
        sentences.append("These tests depart from those the study froze: " + "; ".join(verdict.departures) + ".")
    return sentences


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
    lines = {method: {name: _line_json(line) for name, line in method_lines.items()}
             for method, method_lines in verdict.lines.items()}
    for person in verdict.human:
        lines.setdefault(person.method, {})[person.line.measure] = {**_line_json(person.line), "source": person.source}
    return {"settings": settings.verdict.model_dump(mode="json"), "accuracy_floor": verdict.floor,
            "seeds": verdict.seeds, "intervals": "over seeds and images" if len(verdict.seeds) > 1 else
            "over images (one seed)", "collapsed": verdict.collapsed, "sentences": verdict.sentences,
            "lines": lines, "agreement": verdict.agreement, "unreliable": verdict.unreliable,
            "departures": verdict.departures}


def _line_json(line: Line) -> dict:
    return {"margin": line.margin, "holds_to": line.holds_to,
            "breaks_at": None if line.breaks_at is None else line.breaks_at.rate,
            "comparisons": [asdict(c) for c in line.comparisons]}


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
            named = measure + (f" ({line['source']} answers)" if "source" in line else "") + (
                f" (noise resilience {verdict['unreliable'][measure]:.2f}: not in the sentences)"
                if measure in verdict.get("unreliable", {}) else "")
            rows.append((method, named, "-" if line["holds_to"] is None else _rate(line["holds_to"]),
                         "none" if line["breaks_at"] is None else _rate(line["breaks_at"]), there,
                         f"{line['margin']:g}"))
    return rows


def verdict_table(verdict: dict) -> str:
    """`breaking_rows` as a text table, for the terminal."""
    rows = [BREAKING, *breaking_rows(verdict)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(BREAKING))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
