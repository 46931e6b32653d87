"""The people-side sections of the report: the study's stimuli and the analysis of the answers.

Reads the study's manifest (what `prunexplain study build` wrote) and, per experiment, the analysis
summary with its PNGs (what `prunexplain analyze` writes), and the analysis' source record, which
says whether the answers came from people, model-based observers or a simulated crowd. What each
experiment asks and how its stimuli and answers are laid out comes from the experiment spec
(`prunexplain.experiments`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import chain, zip_longest

from prunexplain.config import ReportSettings
from prunexplain.experiments import COMPARE, EXPERIMENTS, KINDS, NONE, RECOGNISE, Experiment, Kind
from prunexplain.report.blocks import Card, Cell, Picture, Table, interval, number, percent, picture_file, pvalue
from prunexplain.report.page import Section
from prunexplain.runs import Run

log = logging.getLogger(__name__)

_RENDERINGS = {"occlusion": "occlusion maps (only the most important pixels visible)", "heatmap": "jet heatmaps"}


def _spec(key: str, kind: str | None) -> Experiment | None:
    """The spec of an experiment a manifest or summary names; one the spec lacks (an older or newer
    build) is known by the kind it recorded, else skipped."""
    if key in EXPERIMENTS:
        return EXPERIMENTS[key]
    if kind in KINDS:
        return Experiment(key, KINDS[kind], "")
    log.warning("report: experiment %r is neither in the spec nor of a known kind; left out", key)
    return None


def _in_spec_order(keys) -> list[str]:
    order = list(EXPERIMENTS)
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def _manifest(run: Run) -> dict:
    path = run.study.manifest
    return json.loads(path.read_text()) if path.exists() else {}


# --- stimuli ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stimulus:
    file: str
    picture: Picture | None  # None: the manifest names a file that is gone


@dataclass(frozen=True)
class StimulusSet:
    """One experiment's stimuli: what it asks, how the maps are shown, and the first few stimuli."""

    key: str
    question: str
    shown_as: str
    count: int
    folder: str
    stimuli: list[Stimulus]


@dataclass(frozen=True)
class Stimuli:
    classes: list[str]
    models: list[str]  # 'study name (run model key)'
    experiments: list[StimulusSet]


def stimuli_section(run: Run, settings: ReportSettings) -> Section:
    manifest = _manifest(run)
    if not manifest:
        return Section("stimuli", "Study stimuli", missing="no study stimuli yet: run `prunexplain study build`")
    models = [f"{name} ({info.get('key', '?')})" for name, info in manifest.get("models", {}).items()]
    described = manifest.get("experiments", {})
    sets = []
    for key in _in_spec_order(described):
        experiment = _spec(key, described[key].get("kind"))
        if experiment is not None:
            sets.append(_stimulus_set(run, experiment, manifest.get("stimuli", []), settings))
    return Section("stimuli", "Study stimuli", Stimuli(list(manifest.get("classes", [])), models, sets))


def _stimulus_set(run: Run, experiment: Experiment, stimuli: list[dict], settings: ReportSettings) -> StimulusSet:
    mine = [s for s in stimuli if s.get("experiment") == experiment.key]
    chosen = _spread(mine, experiment.kind, settings.stimuli)
    folder = run.study.stimuli(experiment.key).relative_to(run.root).as_posix()
    return StimulusSet(experiment.key, experiment.kind.question,
                       _RENDERINGS.get(experiment.rendering, experiment.rendering), len(mine), folder,
                       [_stimulus(run, s, experiment.kind, settings) for s in chosen])


def _spread(stimuli: list[dict], kind: Kind, count: int) -> list[dict]:
    """Take stimuli round-robin over what they show (pairs, or single models), so each shows up early."""
    groups: dict[tuple, list[dict]] = {}
    for stimulus in stimuli:
        groups.setdefault(tuple(stimulus.get(field) for field in kind.shows), []).append(stimulus)
    interleaved = [s for s in chain.from_iterable(zip_longest(*groups.values())) if s is not None]
    return interleaved[:count]


def _stimulus(run: Run, stimulus: dict, kind: Kind, settings: ReportSettings) -> Stimulus:
    shown = ", ".join(f"{field} {stimulus.get(field)}" for field in kind.shows)
    caption = f"image {stimulus.get('image')}, {stimulus.get('label')}: {shown}"
    file = str(stimulus.get("file", ""))
    path = run.study.stimulus(file)
    return Stimulus(file, picture_file(path, caption, settings.figure_width // 2) if file and path.is_file() else None)


# --- analysis --------------------------------------------------------------------------------------

_SOURCES = {
    "simulated": ("simulated", "Simulated crowd: these answers come from `prunexplain study simulate`, not from "
                               "people. The numbers test the analysis, not the explanations."),
    "observers": ("observers", "Predicted by model-based observers, not people: a classifier trained on the run's "
                               "occluded training images answered the run's own stimuli, with simulated worker noise, "
                               "side bias and careless workers on top. The numbers say what the explanations leave "
                               "visible to a model; only people can say what they leave visible to people."),
    "real": ("real", "Real participants: these answers were given by people."),
}
_UNKNOWN = ("unknown", "Source of these answers unknown (not recorded in analysis/source.json).")

_CAPTIONS = {  # (kind, file) -> what to look at
    (COMPARE.name, "preferences.png"): "Left: how each pair's answers split between a, 'equally reasonable' and b. "
                                       "Right: the share preferring a among decided answers with intervals; 0.5 "
                                       "(dashed) = no preference.",
    (COMPARE.name, "classes.png"): "Per class and pair: the share 'equally reasonable' and the share preferring a; "
                                   "a class far from the others drives the result.",
    (COMPARE.name, "workers.png"): "One dot per worker: median seconds per answer against the share 'equally "
                                   "reasonable'. Fast workers at the extremes are likely answering carelessly.",
    (RECOGNISE.name, "accuracy.png"): "Share of answers naming the true class (blue) and 'none' (grey) per model, "
                                      "with intervals: lower accuracy means the occlusion map keeps less of the "
                                      "object.",
    (RECOGNISE.name, "classes.png"): "Accuracy per class and model, and over all models (last column): which "
                                     "objects stop being recognisable first, and which are hard whatever the "
                                     "pruning.",
    (RECOGNISE.name, "confusion_pooled.png"): "All models together: true class (rows) against the answer (columns); "
                                              "what a class is mistaken for, and how often nothing is recognised.",
    (RECOGNISE.name, "workers.png"): "One dot per worker: median seconds per answer against accuracy. Fast, "
                                     "inaccurate workers are likely answering carelessly.",
}


@dataclass(frozen=True)
class Source:
    """Who gave the answers: the banner's colour (simulated, observers, real, unknown) and its text."""

    kind: str
    text: str


@dataclass(frozen=True)
class Titled:
    """A smaller table under the main one, with a line saying what it shows."""

    title: str
    table: Table


@dataclass(frozen=True)
class Analysed:
    """One experiment's analysed answers."""

    key: str
    question: str
    source: Source
    cards: list[Card]
    table: Table
    figures: list[Picture]
    tables: list[Titled]


def analysis_section(run: Run, settings: ReportSettings) -> Section:
    summaries = run.analysis_summaries()
    if not summaries:
        return Section("analysis", "Human study results", missing=(
            "no analysed answers yet: `prunexplain run` analyses the answers in study/answers/ or study/study.db, "
            "or a simulated crowd's"))
    sources = json.loads(run.analysis_source.read_text()) if run.analysis_source.exists() else {}
    analysed = []
    for key in _in_spec_order(summaries):
        summary = json.loads(summaries[key].read_text())
        experiment = _spec(key, summary.get("experiment"))
        if experiment is not None:
            analysed.append(_analysed(run, experiment, summary, sources.get(key), settings))
    return Section("analysis", "Human study results", analysed)


def _analysed(run: Run, experiment: Experiment, summary: dict, source: dict | None,
              settings: ReportSettings) -> Analysed:
    kind = KINDS.get(summary.get("experiment"), experiment.kind)  # what the analysis computed decides
    table = _pairs_table(summary) if kind.compares else _models_table(summary)
    tables = _compare_tables(summary) if kind.compares else _recognise_tables(summary)
    figures = [_figure(run, experiment.key, name, kind, settings) for name in summary.get("figures", [])
               if run.analysis_file(experiment.key, name).is_file()]
    return Analysed(experiment.key, kind.question, _source(source), _headline(summary, kind), table, figures,
                    tables)


def _source(entry: dict | None) -> Source:
    kind, text = _SOURCES.get((entry or {}).get("source"), _UNKNOWN)
    files, reason = (entry or {}).get("files", []), (entry or {}).get("reason")
    why = f" Why: {reason}." if reason else ""  # the crowd stage says why no real answers were used
    return Source(kind, text + why + (f" Files: {', '.join(map(str, files))}." if files else ""))


def _headline(summary: dict, kind: Kind) -> list[Card]:
    none = next(option.label for option in kind.fixed_options if option.value == NONE).lower()
    alpha = number(summary.get("krippendorff_alpha"))
    ci = summary.get("krippendorff_alpha_ci") or [None, None]
    return [
        Card("answers", str(summary.get("answers", "-"))), Card("items", str(summary.get("items", "-"))),
        Card("workers", str(summary.get("workers", "-"))),
        Card(f"share '{none}'", f"{percent(summary.get('none_share'))} ({interval(summary.get('none_ci'))})"),
        Card("Krippendorff's alpha", alpha if "-" in (number(ci[0]), number(ci[1])) else
             f"{alpha} ({number(ci[0])} to {number(ci[1])})"),
    ]


def _pairs_table(summary: dict) -> Table:
    """A comparing experiment: one row per pair of models."""
    rows = [[f"{p['a']} vs {p['b']}", p.get("n", "-"), percent(p.get("none_share")), p.get("a_preferred", "-"),
             p.get("b_preferred", "-"), f"{percent(p.get('a_share'))} ({interval(p.get('a_share_ci'))})",
             pvalue(p.get("p")), pvalue(p.get("p_holm"))] for p in summary.get("pairs", [])]
    headers = ["pair a vs b", "answers", "equally reasonable", "a preferred", "b preferred",
               "a share of decided (CI)", "p (chi-square)", "p (Holm)"]
    return Table.of(headers, rows)


def _models_table(summary: dict) -> Table:
    """A recognising experiment: one row per model."""
    rows = [[name, m.get("n", "-"), f"{percent(m.get('accuracy'))} ({interval(m.get('accuracy_ci'))})",
             percent(m.get("none_share"))] for name, m in summary.get("models", {}).items()]
    return Table.of(["model", "answers", "accuracy (CI)", f"'{NONE}'"], rows)


def _split(row: dict) -> str:
    """'30.0 / 31.2 / 38.8 % (-22)': a, equally and b as shares of the answers, then a - b in answers."""
    shares = [row.get("a_share_of_all"), row.get("none_share"), row.get("b_share_of_all")]
    if "-" in map(number, shares):
        return "-"
    return " / ".join(f"{100 * float(v):.1f}" for v in shares) + f" % ({row.get('a_minus_b', 0):+d})"


def _compare_tables(summary: dict) -> list[Titled]:
    """Per class and pair the study's view (shares of all answers, a - b); how often each model was shown."""
    tables = []
    rows, pairs = summary.get("classes", []), [(p["a"], p["b"]) for p in summary.get("pairs", [])]
    if rows and pairs:
        index = {(r["class"], r["a"], r["b"]): r for r in rows}
        labels = list(dict.fromkeys(r["class"] for r in rows))
        of_none = summary.get("class_of_none", {})
        body = [[label, percent(of_none.get(label)), *(_split(index.get((label, a, b), {})) for a, b in pairs)]
                for label in labels]
        tables.append(Titled(
            "Per class: a / equally reasonable / b as shares of the class's answers in each pair, (a - b) in "
            "answers; and the class's share of all 'equally reasonable' answers.",
            Table.of(["class", "of all equally", *(f"{a} vs {b}" for a, b in pairs)], body)))
    shown = summary.get("appearance", {})
    if shown:
        body = [[model, number(m.get("left_share")), number(m.get("right_share")), number(m.get("share")),
                 number(m.get("expected"))] for model, m in shown.items()]
        tables.append(Titled(
            "How often each model was shown: share of answers per side and summed; a balanced design gives the "
            "share of pairs containing the model (2/3 with three models in all pairs).",
            Table.of(["model", "left", "right", "total", "balanced design"], body)))
    return tables


def _recognise_tables(summary: dict) -> list[Titled]:
    """Accuracy per class and model with the pooled column; the study's chi-square tests."""
    tables = []
    rows, pooled = summary.get("classes", []), {r["class"]: r for r in summary.get("classes_pooled", [])}
    if rows:
        models = list(dict.fromkeys(r["model"] for r in rows))
        index = {(r["class"], r["model"]): r for r in rows}
        labels = list(dict.fromkeys(r["class"] for r in rows))
        total = lambda r: f"{percent(r.get('accuracy'))} ({r.get('correct', '-')}/{r.get('n', '-')})"  # noqa: E731
        body = [[label, *(percent(index[(label, m)].get("accuracy")) for m in models),
                 *([total(pooled.get(label, {}))] if pooled else [])] for label in labels]
        headers = ["class", *models, *(["all models"] if pooled else [])]
        tables.append(Titled("Accuracy per class and model, and over all models (correct/answers).",
                             Table.of(headers, body)))
    tests = summary.get("tests", {})
    studies = [tests[key] for key in ("study_chisquare", "study_chisquare_all") if tests.get(key)]
    if studies:
        body = [_study_row(study) for study in studies]
        tables.append(Titled(
            "The study's chi-square tests of correct answers against the non-pruned model's count (where scipy "
            "refuses them, as no goodness-of-fit tests: the value computed without its check, as the study's older "
            "scipy did).",
            Table.of(["correct answers of", "expected: each", "chi2", "p", "defined"], body)))
    return tables


def _study_row(study: dict) -> list:
    defined = study.get("defined", True)
    legacy = "" if defined else "legacy_"  # scipy refused it: the value the study's older scipy printed
    tested = ", ".join(f"{m} {n:g}" for m, n in zip(study.get("models", []), study.get("observed", [])))
    each = (study.get("expected") or [None])[0]
    expected = f"{study.get('baseline', '-')} {'-' if each is None else format(each, 'g')}"
    return [tested, expected, number(study.get(legacy + "chi2")), pvalue(study.get(legacy + "p")),
            "yes" if defined else Cell("no", study.get("note"))]


def _figure(run: Run, key: str, name: str, kind: Kind, settings: ReportSettings) -> Picture:
    caption = _CAPTIONS.get((kind.name, name))
    if caption is None and name.startswith("confusion_"):
        model = name.removesuffix(".png").removeprefix("confusion_")
        caption = f"{model}: true class (rows) against the answer (columns)."
    return picture_file(run.analysis_file(key, name), caption or name, settings.figure_width)
