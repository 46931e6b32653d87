"""The statistics of both experiments, on the clean answer tables of `load`.

Tests come from scipy (chisquare, binomtest with its Wilson interval, chi2_contingency) and
Krippendorff's alpha from the `krippendorff` package; what is written here is this project's own
bookkeeping plus three short textbook formulas scipy lacks (Holm's step-down adjustment, Cochran's Q,
the exact McNemar test as a binomial test on the discordant pairs).

Intervals over answers (Wilson) treat answers as independent. Answers on one item share that item
and workers answer many items, so `*_ci_items` adds a bootstrap over items (resampling whole items
with all their answers), which stays honest when items differ.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import krippendorff
import numpy as np
import pandas as pd
from scipy import stats

from prunexplain.experiments import COMPARE, NONE

log = logging.getLogger(__name__)
NAN = float("nan")


# --- general -----------------------------------------------------------------------------------


def wilson(successes: int, trials: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval of a proportion: good coverage even near 0 or 1 and for small n."""
    if trials == 0:
        return [NAN, NAN]
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence, method="wilson")
    return [float(interval.low), float(interval.high)]


def share(part: int, whole: int) -> float:
    return part / whole if whole else NAN


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: controls the family-wise error over the pairs, never below the raw p."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def study_chisquare(observed: Sequence[float], expected: Sequence[float] | None = None) -> dict:
    """The study's chi-square goodness-of-fit test (`scipy.stats.chisquare`), or why it is undefined.

    The study tested experiment 2's correct counts of the pruned models against the non-pruned
    model's count as "expected". Those do not sum to the observed total, so it is no goodness-of-fit
    test; scipy >= 1.9 refuses it. The statistic the study reported (computed by an older scipy
    that did not check) is kept as `legacy_chi2`/`legacy_p`, for comparison only.
    """
    observed = np.asarray(observed, dtype=float)
    expected = None if expected is None else np.asarray(expected, dtype=float)
    result = {"observed": observed.tolist(), "expected": None if expected is None else expected.tolist()}
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # scipy's sum check divides by a zero sum
            test = stats.chisquare(observed, expected)
    except ValueError as error:
        log.info("scipy.stats.chisquare refuses %s against %s: %s", observed, expected, str(error).splitlines()[0])
        legacy = float(((observed - expected) ** 2 / expected).sum())
        return result | {
            "chi2": None, "p": None, "defined": False,
            "note": f"scipy.stats.chisquare refuses it: observed sum {observed.sum():g} != expected sum "
            f"{expected.sum():g}, so it is no goodness-of-fit test",
            "legacy_chi2": legacy, "legacy_p": float(stats.chi2.sf(legacy, len(observed) - 1)),
        }
    return result | {"chi2": float(test.statistic), "p": float(test.pvalue), "defined": True}


def binomial_p(successes: int, trials: int) -> float:
    """Exact two-sided binomial test against 1/2: valid at any count, unlike chi-square's approximation."""
    return float(stats.binomtest(int(successes), int(trials), 0.5).pvalue) if trials else NAN


# --- agreement ---------------------------------------------------------------------------------


def count_table(keys: pd.Series, values: pd.Series, options: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and their keys x options counts (a fast crosstab with fixed columns)."""
    codes, uniques = pd.factorize(keys, sort=True)
    columns = pd.Index(list(options)).get_indexer(values)
    table = np.zeros((len(uniques), len(options)), dtype=np.int64)
    valid = columns >= 0
    np.add.at(table, (codes[valid], columns[valid]), 1)
    return np.asarray(uniques), table


def value_counts(frame: pd.DataFrame, values: str, options: Sequence[str]) -> np.ndarray:
    """Units x values counts with one value per worker and item (the worker's first answer).

    A worker who met an item twice is still one coder of that unit; this is what the study's
    alpha (simpledorff on a worker x item table) counted, and it reproduces its published values.
    """
    first = frame.drop_duplicates(["worker", "item"], keep="first")
    return count_table(first["item"], first[values], options)[1]


def alpha(counts: np.ndarray) -> float:
    """Krippendorff's alpha (nominal) of units x values counts; NaN where it is undefined."""
    pairable = counts[counts.sum(axis=1) >= 2]
    if len(pairable) == 0 or (pairable.sum(axis=0) > 0).sum() < 2:
        return NAN  # no unit with two answers, or a single value used: no disagreement to expect
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(krippendorff.alpha(value_counts=pairable, level_of_measurement="nominal"))


def alpha_with_ci(
    counts: np.ndarray, bootstrap: int, confidence: float, rng: np.random.Generator
) -> tuple[float, list[float]]:
    """Alpha and a percentile bootstrap interval over units (items resampled with their answers)."""
    value = alpha(counts)
    if bootstrap == 0 or math.isnan(value):
        return value, [NAN, NAN]
    draws = rng.integers(0, len(counts), size=(bootstrap, len(counts)))
    samples = np.array([alpha(counts[index]) for index in draws])
    return value, _percentiles(samples, confidence)


def _percentiles(samples: np.ndarray, confidence: float) -> list[float]:
    samples = samples[~np.isnan(samples)]
    if len(samples) == 0:
        return [NAN, NAN]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_share(
    hits: np.ndarray, totals: np.ndarray, bootstrap: int, confidence: float, rng: np.random.Generator
) -> list[float]:
    """Percentile interval of sum(hits)/sum(totals) when whole items (their hits and totals) are resampled."""
    if bootstrap == 0 or totals.sum() == 0:
        return [NAN, NAN]
    draws = rng.integers(0, len(totals), size=(bootstrap, len(totals)))
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = hits[draws].sum(axis=1) / totals[draws].sum(axis=1)
    return _percentiles(samples, confidence)


# --- experiment 1 ------------------------------------------------------------------------------


def pairs_of(frame: pd.DataFrame, models: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs present, in model order (a before b)."""
    rank = {name: i for i, name in enumerate(models)}
    found = frame[["a", "b"]].drop_duplicates().itertuples(index=False)
    return sorted(((a, b) for a, b in found), key=lambda pair: (rank[pair[0]], rank[pair[1]]))


def pair_stats(
    frame: pd.DataFrame, models: Sequence[str], confidence: float, bootstrap: int, rng: np.random.Generator
) -> list[dict]:
    """Per pair: answer counts, 'equally reasonable' share, preference among decided answers, tests."""
    rows = [_one_pair(frame[(frame["a"] == a) & (frame["b"] == b)], a, b, confidence, bootstrap, rng)
            for a, b in pairs_of(frame, models)]
    for key in ("p", "binom_p"):
        for row, adjusted in zip(rows, holm([NAN if r[key] is None else r[key] for r in rows])):
            row[f"{key}_holm"] = adjusted
    return rows


def _one_pair(answers: pd.DataFrame, a: str, b: str, confidence, bootstrap, rng) -> dict:
    counts = answers["choice"].value_counts()
    n, none, wins_a, wins_b = len(answers), int(counts.get(NONE, 0)), int(counts.get("a", 0)), int(counts.get("b", 0))
    decided = wins_a + wins_b
    per_item = count_table(answers["item"], answers["choice"], ["a", "b"])[1]
    test = study_chisquare([wins_a, wins_b]) if decided else {"chi2": None, "p": None}
    return {
        "a": a, "b": b, "n": n, "none": none, "a_preferred": wins_a, "b_preferred": wins_b, "decided": decided,
        "none_share": share(none, n), "none_ci": wilson(none, n, confidence),
        "a_share": share(wins_a, decided), "a_share_ci": wilson(wins_a, decided, confidence),
        "a_share_ci_items": bootstrap_share(per_item[:, 0], per_item.sum(axis=1), bootstrap, confidence, rng),
        "chi2": test["chi2"], "p": test["p"], "binom_p": binomial_p(wins_a, decided),
        "krippendorff_alpha": alpha(value_counts(answers, "answer", COMPARE.options())),
        "items": int(answers["item"].nunique()),
        **_class_effect(answers),
    }


def _class_effect(answers: pd.DataFrame) -> dict:
    """Does the preference depend on the class? Chi-square test of classes x (a, b) decided counts."""
    table = count_table(answers["label"], answers["choice"], ["a", "b"])[1]
    table = table[table.sum(axis=1) > 0]
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[0] < 2 or table.shape[1] < 2:
        return {"class_chi2": None, "class_p": None}
    test = stats.chi2_contingency(table)
    return {"class_chi2": float(test.statistic), "class_p": float(test.pvalue)}


def class_stats(frame: pd.DataFrame, models: Sequence[str], labels: Sequence[str]) -> list[dict]:
    """Per class and pair: counts, 'equally reasonable' share and preference share among decided.

    Also the study's own per-class view: each answer's share of ALL the class's answers in that pair
    (`a_share_of_all`, `b_share_of_all`, `none_share`: its notebook divided counts by 250, the answers
    per class and pair), the difference of the counts (`a_minus_b`; the notebook printed it with
    either sign, positive here means a preferred more often), and `share_of_none`: the class's share
    of the pair's 'equally reasonable' answers, P(class | equally).
    """
    rows = []
    pairs = pairs_of(frame, models)
    none_total = {(a, b): int(((frame["a"] == a) & (frame["b"] == b) & (frame["choice"] == NONE)).sum())
                  for a, b in pairs}
    for label in labels:
        of_class = frame[frame["label"] == label]
        for a, b in pairs:
            answers = of_class[(of_class["a"] == a) & (of_class["b"] == b)]
            counts = answers["choice"].value_counts()
            n, none = len(answers), int(counts.get(NONE, 0))
            wins_a, wins_b = int(counts.get("a", 0)), int(counts.get("b", 0))
            rows.append({
                "class": label, "a": a, "b": b, "n": n, "none": none, "a_preferred": wins_a, "b_preferred": wins_b,
                "none_share": share(none, n), "a_share": share(wins_a, wins_a + wins_b),
                "a_share_of_all": share(wins_a, n), "b_share_of_all": share(wins_b, n), "a_minus_b": wins_a - wins_b,
                "share_of_none": share(none, none_total[(a, b)]),
            })
    return rows


def class_of_none(frame: pd.DataFrame, labels: Sequence[str]) -> dict[str, float]:
    """P(class | 'equally reasonable') over all pairs: which classes the undecided answers come from
    (the study's notebook: the classes' shares of its 'equally' answers). Differs from the share of
    each class's answers that are 'equally' when classes have different numbers of answers."""
    none = frame.loc[frame["answer"] == NONE, "label"].value_counts()
    return {label: share(int(none.get(label, 0)), int(none.sum())) for label in labels}


def appearance(frame: pd.DataFrame, models: Sequence[str], shows: Sequence[str]) -> dict[str, dict]:
    """How often each model was shown, per side and in total: a check of the study's design.

    Per side, the share of answers whose stimulus showed the model there; `share` sums the sides (the
    study's notebook: value_counts(normalize) of alg1 plus that of alg2, 2/3 each for three models in
    all pairs). `expected` is what a balanced design gives: the share of the pairs present that
    contain the model, when every pair is shown equally often and either way round.
    """
    pairs = set(map(tuple, frame[["a", "b"]].drop_duplicates().to_numpy()))
    result = {}
    for model in models:
        row = {}
        for side in shows:
            count = int((frame[side] == model).sum())
            row[side], row[f"{side}_share"] = count, share(count, len(frame))
        row["share"] = sum(row[f"{side}_share"] for side in shows)
        row["expected"] = share(sum(model in pair for pair in pairs), len(pairs))
        result[model] = row
    return result


def worker_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Per worker: answers, share of 'none', median work time; when comparing, the share of decided
    answers that chose the left side (a side bias shows here); when recognising, accuracy."""
    grouped = frame.groupby("worker", sort=True)
    table = pd.DataFrame({
        "answers": grouped.size(),
        "none_share": grouped["answer"].apply(lambda s: float((s == NONE).mean())),
        "median_work_time": grouped["work_time"].median(),
    })
    if "choice" in frame:
        decided = frame[frame["answer"] != NONE]
        left = COMPARE.picking(COMPARE.shows[0])
        table["left_share"] = decided.groupby("worker")["answer"].apply(lambda s: float((s == left).mean()))
    if "correct" in frame:
        table["accuracy"] = grouped["correct"].mean()
    return table.reset_index()


def low_effort_workers(workers: pd.DataFrame, min_median_work_time: float) -> list[str]:
    """Workers whose median work time is below the threshold (unknown work time never counts as low)."""
    fast = workers["median_work_time"] < min_median_work_time
    return sorted(workers.loc[fast, "worker"])


# --- experiment 2 ------------------------------------------------------------------------------


def model_stats(frame: pd.DataFrame, models: Sequence[str], confidence: float) -> dict[str, dict]:
    """Per model: answers, correct answers, accuracy with its Wilson interval, 'none' answers."""
    result = {}
    for model in models:
        answers = frame[frame["model"] == model]
        n, correct, none = len(answers), int(answers["correct"].sum()), int((answers["answer"] == NONE).sum())
        result[model] = {
            "n": n, "correct": correct, "accuracy": share(correct, n), "accuracy_ci": wilson(correct, n, confidence),
            "none": none, "none_share": share(none, n), "none_ci": wilson(none, n, confidence),
            "images": int(answers["image"].nunique()),
        }
    return result


def _recognised(answers: pd.DataFrame) -> dict:
    n, correct, none = len(answers), int(answers["correct"].sum()), int((answers["answer"] == NONE).sum())
    return {"n": n, "correct": correct, "accuracy": share(correct, n), "none": none, "none_share": share(none, n)}


def class_model_stats(frame: pd.DataFrame, models: Sequence[str], labels: Sequence[str]) -> list[dict]:
    return [{"class": label, "model": m, **_recognised(frame[(frame["label"] == label) & (frame["model"] == m)])}
            for label in labels for m in models]


def class_pooled_stats(frame: pd.DataFrame, labels: Sequence[str]) -> list[dict]:
    """Per class over all models: correct answers of all the class's answers (the study's notebook:
    correct per class / 750, its answers per class). Which objects are hard whatever the pruning."""
    return [{"class": label, **_recognised(frame[frame["label"] == label])} for label in labels]


def confusion(frame: pd.DataFrame, model: str | None, labels: Sequence[str]) -> np.ndarray:
    """True class (rows) x answer (columns: the classes, then 'none') counts of one model (None: all)."""
    answers = frame if model is None else frame[frame["model"] == model]
    found, table = count_table(answers["label"], answers["answer"], [*labels, NONE])
    rows = {label: i for i, label in enumerate(found)}
    return np.array([table[rows[label]] if label in rows else np.zeros(len(labels) + 1, int) for label in labels])


def majority_correct(frame: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Images x models: did a strict majority of the image's answers name its class?

    One value per image and model turns five correlated answers into one paired observation, so
    models shown the same images can be compared with paired tests. Only images every model has.
    """
    grouped = frame.groupby(["image", "label", "model"])["correct"]
    majority = (grouped.sum() * 2 > grouped.size()).unstack("model")
    return majority.reindex(columns=list(models)).dropna().astype(bool)


def cochran_q(table: pd.DataFrame) -> dict:
    """Cochran's Q: do k models differ in majority recognition on the same images? Chi-square, k-1 df."""
    x = table.to_numpy(dtype=float)
    blocks, k = x.shape
    if blocks == 0 or k < 2:
        return {"q": None, "df": max(k - 1, 0), "p": None, "images": blocks}
    columns, rows, total = x.sum(axis=0), x.sum(axis=1), x.sum()
    denominator = k * total - (rows**2).sum()
    if denominator == 0:
        return {"q": 0.0, "df": k - 1, "p": 1.0, "images": blocks}  # every image alike for all models
    q = (k - 1) * (k * (columns**2).sum() - total**2) / denominator
    return {"q": float(q), "df": k - 1, "p": float(stats.chi2.sf(q, k - 1)), "images": blocks}


def mcnemar_pairs(table: pd.DataFrame) -> list[dict]:
    """Exact McNemar test per pair of models on the same images, Holm-adjusted across pairs."""
    rows = []
    models = list(table.columns)
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            only_a = int((table[a] & ~table[b]).sum())
            only_b = int((~table[a] & table[b]).sum())
            p = binomial_p(only_a, only_a + only_b) if only_a + only_b else 1.0
            rows.append({"a": a, "b": b, "images": len(table), "only_a": only_a, "only_b": only_b, "p": p})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def independence(models: dict[str, dict]) -> dict:
    """Chi-square test of models x (correct, not correct) answers; ignores that images are shared."""
    table = np.array([[m["correct"], m["n"] - m["correct"]] for m in models.values()])
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2 or (table.sum(axis=0) == 0).any():
        return {"chi2": None, "p": None, "dof": None}
    test = stats.chi2_contingency(table)
    return {"chi2": float(test.statistic), "p": float(test.pvalue), "dof": int(test.dof)}


def study_correct_chisquare(models: dict[str, dict], baseline: str, with_baseline: bool = False) -> dict:
    """The study's tests: correct counts of the other models (`with_baseline`: of all models, the
    baseline too) against the baseline's count. The study ran both: [2pruned, 32pruned] and
    [2pruned, 32pruned, nonpruned] against nonpruned's 2146 each; the statistic is the same, the
    degrees of freedom (and so p) differ."""
    tested = [name for name in models if with_baseline or name != baseline]
    observed = [models[name]["correct"] for name in tested]
    expected = [models[baseline]["correct"]] * len(tested)
    return {"models": tested, "baseline": baseline} | study_chisquare(observed, expected)


def item_table(
    frame: pd.DataFrame, shows: Sequence[str], options: Sequence[str], labels: Sequence[str]
) -> pd.DataFrame:
    """One row per stimulus: what it showed and how many answers chose each option.

    For drill-downs like the study's (which images made people prefer the pruned model?): its
    notebook counted answers per image by hand for one class and model at a time.
    """
    keys = ["item", "image", "label", *shows]
    items = frame[keys].drop_duplicates("item").set_index("item")
    found, counts = count_table(frame["item"], frame["answer"], options)
    table = items.loc[found].reset_index()
    table["answers"] = counts.sum(axis=1)
    for column, option in enumerate(options):
        table[option] = counts[:, column]
    if "correct" in frame:
        table["correct"] = frame.groupby("item")["correct"].sum().loc[found].to_numpy().astype(int)
    rank = {label: i for i, label in enumerate(labels)}
    order = pd.DataFrame({"label": table["label"].map(rank), "image": pd.to_numeric(table["image"], errors="coerce"),
                          "item": table["item"]})
    return table.loc[order.sort_values(["label", "image", "item"]).index].reset_index(drop=True)
