"""Simulated crowds: answers in MTurk's batch-results format from a model of workers with a known truth.

The analysis can then be checked where the truth is known (do its intervals cover it as often as
they claim?), and a study can be sized before it is paid for (power analysis).

The model of workers. A pool of `workers`; a share `spammer_share` of them answer at random
(uniformly over all options) and fast. Every other ("attentive") worker answers from the truth:
- experiment 1: with probability `none_share` "equally reasonable"; otherwise, with its own
  probability b_w (uniform on [0, 2 * side_bias], mean `side_bias`), the side it favours (left or
  right, fixed per worker) whatever the maps show; otherwise the model a with probability
  `preference`. Which model is drawn left is random per item, as in the study.
- experiment 2: the true class with probability `correct`, "none" with probability `none_share`,
  otherwise one of the other classes uniformly.
Each item (HIT) gets `answers_per_item` different workers drawn uniformly from the pool. With
`item_correlation` rho > 0 items differ: each item draws its own preference, 'none' share (and in
experiment 2 its share correct) from a Beta distribution with the set mean, such that two attentive
answers on one item correlate by rho (beta-binomial); the means, and so the truth, stay the same.

What the crowd reports in expectation (the "expected" truth the analysis estimates) follows in
closed form: spammers and side bias both pull shares towards chance.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from prunexplain.config import PairTruth, SimulateSettings, UserError, load_section
from prunexplain.experiments import KINDS, NONE, Kind
from prunexplain.runs import SimulationFolder, atomic_open, write_json

log = logging.getLogger(__name__)


@dataclass
class Crowd:
    """A drawn pool of workers."""

    ids: list[str]
    spammer: np.ndarray  # bool per worker
    side_bias: np.ndarray  # probability of answering the favoured side, per worker
    favours_left: np.ndarray  # bool per worker


@dataclass
class SimulationResult:
    experiment: str
    results: Path
    truth: dict
    power: list[dict] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"Simulated {self.truth['answers']} answers ({self.experiment}) in {self.results}."]
        if KINDS[self.experiment].compares:
            rows = [[f"{p['a']} vs {p['b']}", f"{p['preference']:.3f}", f"{p['none_share']:.3f}",
                     f"{p['expected_a_share']:.3f}", f"{p['expected_none_share']:.3f}"] for p in self.truth["pairs"]]
            lines.append(_table(["pair a vs b", "preference (attentive)", "none (attentive)",
                                 "expected a share of decided", "expected none share"], rows))
        else:
            rows = [[m["name"], f"{m['correct']:.3f}", f"{m['expected_accuracy']:.3f}",
                     f"{m['expected_none_share']:.3f}"] for m in self.truth["models"]]
            lines.append(_table(["model", "correct (attentive)", "expected accuracy", "expected none share"], rows))
        if self.power:
            lines.append(power_markdown(self.power))
        return "\n\n".join(lines) + "\n"


# --- settings -----------------------------------------------------------------------------------


def load_simulate_settings(config: Path | None = None, **overrides: Any) -> SimulateSettings:
    """Defaults, then a TOML file (a [simulate] table, or the file's top level), then options that are not None."""
    return load_section(SimulateSettings, "simulate", config, overrides, whole_file=True)


# --- the stage ----------------------------------------------------------------------------------


def simulate(settings: SimulateSettings, out_dir: Path, power: bool = True) -> SimulationResult:
    """Write `<experiment>_results.csv` (MTurk format), `truth.json`, and for exp1 `power.json`."""
    _check(settings)
    rng = np.random.default_rng(settings.seed)
    frame = simulate_answers(settings, rng)
    folder = SimulationFolder(out_dir)
    results = folder.results(settings.experiment)
    with atomic_open(results) as handle:
        frame.to_csv(handle, index=False)
    truth = expected_truth(settings) | {"answers": len(frame), "settings": settings.model_dump(mode="json")}
    written = [results, write_json(folder.truth, truth)]
    table = power_analysis(settings) if power and _kind(settings).compares else []
    if table:
        written.append(write_json(folder.power, table))
    log.info("simulated %d answers into %s", len(frame), results)
    return SimulationResult(settings.experiment, results, truth, table, written)


def _kind(settings: SimulateSettings) -> Kind:
    """The kind of task simulated (SimulateSettings checked that the spec has it)."""
    return KINDS[settings.experiment]


def _check(settings: SimulateSettings) -> None:
    if _kind(settings).compares and not settings.pairs:
        raise UserError(f"simulate.pairs: give at least one pair for {settings.experiment}")
    if not _kind(settings).compares and not settings.models:
        raise UserError(f"simulate.models: give at least one model for {settings.experiment}")
    models = [*(m.name for m in settings.models), *(name for p in settings.pairs for name in (p.a, p.b))]
    for name in [*settings.classes, *models]:
        if not name or "_" in name or "/" in name:
            raise UserError(f"simulate: {name!r}: names go into file names {{i}}_..., so no '_' or '/' and not empty")
    if len(set(settings.classes)) < 2 or len(set(settings.classes)) != len(settings.classes):
        raise UserError(f"simulate.classes: need at least two different classes, got {settings.classes}")
    names = [m.name for m in settings.models]
    if len(set(names)) != len(names):
        raise UserError(f"simulate.models: names must differ, got {names}")


def draw_crowd(settings: SimulateSettings, rng: np.random.Generator) -> Crowd:
    """The pool: exactly round(spammer_share * workers) spammers; side biases and favoured sides drawn."""
    count = settings.workers
    spammer = np.zeros(count, dtype=bool)
    spammer[rng.choice(count, round(settings.spammer_share * count), replace=False)] = True
    side_bias = rng.uniform(0, 2 * settings.side_bias, count)
    favours_left = rng.random(count) < 0.5
    return Crowd([f"SIMW{i:05d}" for i in range(count)], spammer, side_bias, favours_left)


def simulate_answers(settings: SimulateSettings, rng: np.random.Generator, crowd: Crowd | None = None) -> pd.DataFrame:
    """One simulated study as MTurk batch results (all values strings, as MTurk writes them)."""
    _check(settings)
    crowd = crowd or draw_crowd(settings, rng)
    kind = _kind(settings)
    if kind.compares:
        parts = [_exp1_pair(kind, pair, settings, crowd, rng) for pair in settings.pairs]
    else:
        parts = [_exp2_model(kind, model, settings, crowd, rng) for model in settings.models]
    items = pd.concat(parts, ignore_index=True)
    return mturk_rows(items, settings, crowd, rng)


def _labels(settings: SimulateSettings) -> np.ndarray:
    """Image i shows class i mod C: every class equally often, as in the study's selection."""
    return np.array(settings.classes)[np.arange(settings.images) % len(settings.classes)]


def assign_workers(items: int, settings: SimulateSettings, rng: np.random.Generator) -> np.ndarray:
    """`answers_per_item` different workers per item, uniformly from the pool: [items, k] indices."""
    keys = rng.random((items, settings.workers))
    return np.argpartition(keys, settings.answers_per_item - 1, axis=1)[:, : settings.answers_per_item]


def item_shares(mean: float, size, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Per-item probabilities with the given mean; Beta(mean k, (1 - mean) k), k = 1/rho - 1, when items differ."""
    if rho == 0 or mean in (0.0, 1.0):
        return np.full(size, mean)
    concentration = 1 / rho - 1
    return rng.beta(mean * concentration, (1 - mean) * concentration, size)


def _exp1_pair(kind: Kind, pair: PairTruth, settings: SimulateSettings, crowd: Crowd,
               rng: np.random.Generator) -> pd.DataFrame:
    n, k = settings.images, settings.answers_per_item
    a_left = rng.random(n) < 0.5
    workers = assign_workers(n, settings, rng)
    preference = item_shares(pair.preference, n, settings.item_correlation, rng)[:, None]
    none_share = item_shares(pair.none_share, n, settings.item_correlation, rng)[:, None]
    draws = rng.random((4, n, k))
    prefers_a = draws[2] < preference
    a_side = np.where(prefers_a == a_left[:, None], 0, 1)  # 0: the left model's option, 1: the right one's
    favoured = np.where(crowd.favours_left[workers], 0, 1)
    attentive = np.where(draws[0] < none_share, 2, np.where(draws[1] < crowd.side_bias[workers], favoured, a_side))
    random_answer = np.minimum((draws[3] * 3).astype(int), 2)
    answer = np.where(crowd.spammer[workers], random_answer, attentive)
    left = np.where(a_left, pair.a, pair.b)
    right = np.where(a_left, pair.b, pair.a)
    labels = _labels(settings)
    urls = [kind.stimulus_name(i, label, pair) for i, (label, *pair) in enumerate(zip(labels, left, right))]
    options = np.array([*(kind.picking(side) for side in kind.shows), NONE])  # as indexed above
    return answer_rows(urls, workers, options[answer])


def _exp2_model(kind: Kind, model, settings: SimulateSettings, crowd: Crowd, rng: np.random.Generator) -> pd.DataFrame:
    n, k, classes = settings.images, settings.answers_per_item, np.array(settings.classes)
    labels = _labels(settings)
    truth = np.arange(n) % len(classes)
    workers = assign_workers(n, settings, rng)
    draws = rng.random((3, n, k))
    # a wrong class: shift the true index by 1..C-1, uniformly
    wrong = (truth[:, None] + 1 + (draws[1] * (len(classes) - 1)).astype(int)) % len(classes)
    options = np.array(kind.options(list(classes)))  # the classes, then none (index len(classes))
    correct = item_shares(model.correct, n, settings.item_correlation, rng)[:, None]
    # 'none' takes the same part of each item's not-correct answers as overall: mean kept, sum <= 1
    none_share = model.none_share * (1 - correct) / (1 - model.correct) if model.correct < 1 else np.zeros_like(correct)
    attentive = np.where(draws[0] < correct, truth[:, None],
                         np.where(draws[0] < correct + none_share, len(classes), wrong))
    random_answer = np.minimum((draws[2] * len(options)).astype(int), len(options) - 1)
    answer = np.where(crowd.spammer[workers], random_answer, attentive)
    urls = [kind.stimulus_name(i, c, (model.name,)) for i, c in enumerate(labels)]
    return answer_rows(urls, workers, options[answer])


def answer_rows(urls: list[str], workers: np.ndarray, answers: np.ndarray) -> pd.DataFrame:
    """Long form of `[items, k]` workers and answers: one row per assignment, each item's k together
    (the HIT blocks `mturk_rows` numbers). The observers (`study.observers`) answer through it too."""
    k = workers.shape[1]
    return pd.DataFrame({"url": np.repeat(urls, k), "worker": workers.ravel(), "answer": answers.ravel()})


def mturk_rows(items: pd.DataFrame, settings: SimulateSettings, crowd: Crowd, rng) -> pd.DataFrame:
    """Answers in MTurk's batch-results layout: one HIT per item, one row per assignment."""
    k = settings.answers_per_item
    hit = np.arange(len(items)) // k
    spam = crowd.spammer[items["worker"].to_numpy()]
    median = np.where(spam, settings.spammer_work_time, settings.work_time)
    seconds = np.maximum(1, np.round(median * np.exp(rng.normal(0, 0.5, len(items))))).astype(int)
    kind = _kind(settings)
    rows = {
        "HITId": [f"SIMHIT{h:07d}" for h in hit],
        "HITTypeId": "SIMTYPE" + settings.experiment.upper(),
        "Title": kind.title,
        "Reward": "$0.01",
        "MaxAssignments": str(k),
        "AssignmentId": [f"SIMASG{i:08d}" for i in range(len(items))],
        "WorkerId": np.array(crowd.ids)[items["worker"].to_numpy()],
        "AssignmentStatus": "Submitted",
        "WorkTimeInSeconds": seconds.astype(str),
        "Input.image_url": items["url"].to_numpy(),
    }
    classes = settings.classes if kind.asks_class else []
    for option, column in zip(kind.options(classes), kind.columns(classes)):
        rows[column] = np.where(items["answer"].to_numpy() == option, "true", "false")
    return pd.DataFrame(rows).assign(Approve="", Reject="")


# --- the truth ----------------------------------------------------------------------------------


def exp1_probabilities(pair: PairTruth, spam: float, side_bias: float) -> np.ndarray:
    """P(a preferred), P(b preferred), P(equally) of one answer, for a spammer share and mean side bias."""
    attentive = 1 - spam
    decided = attentive * (1 - pair.none_share)
    a = decided * ((1 - side_bias) * pair.preference + side_bias / 2) + spam / 3
    b = decided * ((1 - side_bias) * (1 - pair.preference) + side_bias / 2) + spam / 3
    return np.array([a, b, attentive * pair.none_share + spam / 3])


def expected_truth(settings: SimulateSettings) -> dict:
    """What the crowd reports in expectation: the truth the analysis estimates."""
    spam = round(settings.spammer_share * settings.workers) / settings.workers
    if _kind(settings).compares:
        pairs = []
        for pair in settings.pairs:
            a, b, none = exp1_probabilities(pair, spam, settings.side_bias)
            pairs.append(pair.model_dump() | {"expected_a_share": a / (a + b), "expected_none_share": none})
        return {"experiment": settings.experiment, "spam": spam, "pairs": pairs}
    options = len(settings.classes) + 1
    models = [
        m.model_dump() | {"expected_accuracy": (1 - spam) * m.correct + spam / options,
                          "expected_none_share": (1 - spam) * m.none_share + spam / options}
        for m in settings.models
    ]
    return {"experiment": settings.experiment, "spam": spam, "models": models}


# --- power --------------------------------------------------------------------------------------


def power_analysis(settings: SimulateSettings, max_items: int | None = None) -> list[dict]:
    """Per pair: how many items (HITs of `answers_per_item`) detect its preference with the asked power.

    A first size comes from the normal approximation of the test of a proportion against 1/2 on the
    decided answers (times the design effect 1 + (k - 1) rho when items differ); it grows in 5 %
    steps until simulation confirms the power: `power_sims` studies of that size, each with a freshly
    drawn pool, tested with the study's chi-square (divided by the design effect when items differ,
    a first-order Rao-Scott correction: the plain test would reject too often). A first size above
    `max_items` is reported as it is, not simulated: near-null effects (as predicted ones can be)
    need studies too large to pay for, and simulating thousands of them costs minutes.
    """
    rng = np.random.default_rng(settings.seed + 1)
    pools = [draw_crowd(settings, rng) for _ in range(settings.power_sims)]
    spam = round(settings.spammer_share * settings.workers) / settings.workers
    rows = []
    for pair in settings.pairs:
        a, b, _ = exp1_probabilities(pair, spam, settings.side_bias)
        share, decided = a / (a + b), a + b
        row = {"a": pair.a, "b": pair.b, "preference": pair.preference, "expected_a_share": share,
               "decided_share": decided, "alpha": settings.power_alpha, "target": settings.power_target}
        needed = _decided_needed(share, settings.power_alpha, settings.power_target)
        if needed is None:
            rows.append(row | {"items_normal": None, "items": None, "answers": None, "power": None, "curve": []})
            continue
        # answers on one item correlate: a design effect inflates the independent-answers size
        design = 1 + (settings.answers_per_item - 1) * settings.item_correlation
        first = items = math.ceil(needed * design / decided / settings.answers_per_item)
        if max_items is not None and first > max_items:
            rows.append(row | {"items_normal": first, "items": None, "answers": None, "power": None, "curve": [],
                               "max_items": max_items})
            continue
        items, power = _search(lambda n: _simulated_power(pair, n, settings, pools, rng), items, settings.power_target)
        curve = [{"items": n, "power": _simulated_power(pair, n, settings, pools, rng)}
                 for n in sorted({max(1, round(items * f)) for f in (0.25, 0.5, 0.75, 1.5, 2.0)})]
        curve = sorted([*curve, {"items": items, "power": power}], key=lambda c: c["items"])
        rows.append(row | {"items_normal": first, "items": items, "answers": items * settings.answers_per_item,
                           "power": power, "curve": curve})
    return rows


def _search(power_of, items: int, target: float, steps: int = 60) -> tuple[int, float]:
    """From a first guess: 5 % steps up until the power is reached, or down while it still is."""
    power = power_of(items)
    if power < target:
        for _ in range(steps):
            if power >= target:
                break
            items = math.ceil(items * 1.05)
            power = power_of(items)
        return items, power
    for _ in range(steps):
        smaller = math.floor(items / 1.05)
        if smaller < 1 or (smaller_power := power_of(smaller)) < target:
            break
        items, power = smaller, smaller_power
    return items, power


def _decided_needed(share: float, alpha: float, power: float) -> float | None:
    """Decided answers a two-sided test of share = 1/2 needs (normal approximation); None: no effect."""
    effect = abs(share - 0.5)
    if effect < 1e-9:
        return None
    z_alpha, z_power = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    return ((z_alpha * 0.5 + z_power * math.sqrt(share * (1 - share))) / effect) ** 2


def _simulated_power(pair: PairTruth, items: int, settings: SimulateSettings, pools: list[Crowd], rng) -> float:
    """Share of simulated studies of `items` items (one per pool) whose chi-square p is below alpha.

    Per study and item: the item's own preference and 'none' share (when items differ), the pool's
    spammer share and mean side bias give the answer probabilities; the item's answers are multinomial.
    """
    sims, rho = len(pools), settings.item_correlation
    spam = np.array([pool.spammer.mean() for pool in pools])[:, None]
    bias = np.array([pool.side_bias[~pool.spammer].mean() if (~pool.spammer).any() else 0.0 for pool in pools])[:, None]
    preference = item_shares(pair.preference, (sims, items), rho, rng)
    none = item_shares(pair.none_share, (sims, items), rho, rng)
    decided = (1 - spam) * (1 - none)
    a = decided * ((1 - bias) * preference + bias / 2) + spam / 3
    b = decided * ((1 - bias) * (1 - preference) + bias / 2) + spam / 3
    probabilities = np.stack([a, b, 1 - a - b], axis=-1).clip(0, 1)
    counts = rng.multinomial(settings.answers_per_item, probabilities / probabilities.sum(axis=-1, keepdims=True))
    totals = counts.sum(axis=1)[:, :2]
    usable = totals.sum(axis=1) > 0
    statistic = np.zeros(sims)
    statistic[usable] = stats.chisquare(totals[usable], axis=1).statistic
    # answers on one item correlate: divide by the design effect, or the test rejects too often
    design = 1 + (settings.answers_per_item - 1) * rho
    return float((stats.chi2.sf(statistic / design, 1) < settings.power_alpha).mean())


def power_markdown(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        pair = f"{row['a']} vs {row['b']}"
        if row["items"] is None:
            normal, note = row.get("items_normal"), "no difference to detect"
            if normal is not None:
                note = f"more than {row['max_items']} items: not simulated"
            lines.append([pair, f"{row['expected_a_share']:.3f}", normal or "-", "-", "-", "-", note])
            continue
        curve = ", ".join(f"{c['items']}: {c['power']:.2f}" for c in row["curve"])
        lines.append([pair, f"{row['expected_a_share']:.3f}", row["items_normal"], row["items"], row["answers"],
                      f"{row['power']:.2f}", curve])
    target, alpha = rows[0]["target"], rows[0]["alpha"]
    return (f"### Power: items (HITs) needed for {target:.0%} power at alpha {alpha:g} (two-sided chi-square)\n\n"
            + _table(["pair a vs b", "expected a share", "items (normal approx.)", "items (simulated)", "answers",
                      "power", "power curve (items: power)"], lines))


def _table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])
