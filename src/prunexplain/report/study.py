"""The people-side sections of the report: the study's stimuli and the analysis of the answers.

Reads `study/manifest.json` (what `prunexplain study build` wrote) and, per experiment key,
`analysis/<key>/summary.json` with its PNGs (what `prunexplain analyze` writes), and
`analysis/source.json`, which says whether the answers came from people or a simulated crowd.
"""

from __future__ import annotations

import json
from itertools import chain, zip_longest
from pathlib import Path

from prunexplain.config import ReportSettings
from prunexplain.report.html import Raw, Section, figure, interval, join, number, percent, prose, pvalue, table, tag
from prunexplain.report.sections import cards
from prunexplain.runs import Run

_ORDER = ["exp1", "exp1_heatmap", "exp2"]
_VARIANTS = {"occlusion": "occlusion maps (only the most important pixels visible)", "heatmap": "jet heatmaps"}


def _manifest(run: Run) -> dict:
    path = run.path("study", "manifest.json")
    return json.loads(path.read_text()) if path.exists() else {}


def stimuli_section(run: Run, settings: ReportSettings) -> Section:
    manifest = _manifest(run)
    if not manifest:
        return Section("stimuli", "Study stimuli", missing="no study stimuli yet: run `prunexplain study build`")
    models = ", ".join(f"{name} ({info.get('key', '?')})" for name, info in manifest.get("models", {}).items())
    body = tag("p", f"Classes: {', '.join(manifest.get('classes', []))}. Models: {models}. The first stimuli of "
                    "each experiment, one per pair or model in turn; file names follow the study's scheme.",
               class_="note")
    stimuli = manifest.get("stimuli", [])
    for key, experiment in manifest.get("experiments", {}).items():
        chosen = _spread([s for s in stimuli if s.get("experiment") == key], settings.stimuli)
        body += tag("h3", f"{key}: {experiment.get('question', '')}")
        shown_as = _VARIANTS.get(experiment.get("variant"), experiment.get("variant", ""))
        body += tag("p", f"Explanations shown as {shown_as}; {sum(s.get('experiment') == key for s in stimuli)} "
                         f"stimuli in study/{experiment.get('folder', key)}/.", class_="note")
        body += tag("div", join(_stimulus(run, s, settings) for s in chosen), class_="figs stimuli")
    return Section("stimuli", "Study stimuli", body)


def _spread(stimuli: list[dict], count: int) -> list[dict]:
    """Take stimuli round-robin over pairs (exp1) or models (exp2), so each of them shows up early."""
    groups: dict[tuple, list[dict]] = {}
    for stimulus in stimuli:
        groups.setdefault((stimulus.get("left"), stimulus.get("right"), stimulus.get("model")), []).append(stimulus)
    interleaved = [s for s in chain.from_iterable(zip_longest(*groups.values())) if s is not None]
    return interleaved[:count]


def _stimulus(run: Run, stimulus: dict, settings: ReportSettings) -> Raw:
    if "model" in stimulus:
        caption = f"image {stimulus.get('image')}, {stimulus.get('label')}: model {stimulus['model']}"
    else:
        caption = (f"image {stimulus.get('image')}, {stimulus.get('label')}: left {stimulus.get('left')}, "
                   f"right {stimulus.get('right')}")
    path = run.path("study", stimulus.get("file", ""))
    if not path.is_file():
        return tag("p", f"{stimulus.get('file')}: file missing", class_="missing")
    return figure(path, caption, settings.figure_width // 2)


# --- analysis --------------------------------------------------------------------------------------

_SOURCES = {
    "simulated": ("simulated", "Simulated crowd: these answers come from `prunexplain study simulate`, not from "
                               "people. The numbers test the analysis, not the explanations."),
    "real": ("real", "Real participants: these answers were given by people."),
}

_CAPTIONS = {  # (experiment kind, file) -> what to look at
    ("exp1", "preferences.png"): "Left: how each pair's answers split between a, 'equally reasonable' and b. Right: "
                                 "the share preferring a among decided answers with intervals; 0.5 (dashed) = no "
                                 "preference.",
    ("exp1", "classes.png"): "Per class and pair: the share 'equally reasonable' and the share preferring a; a class "
                             "far from the others drives the result.",
    ("exp1", "workers.png"): "One dot per worker: median seconds per answer against the share 'equally reasonable'. "
                             "Fast workers at the extremes are likely answering carelessly.",
    ("exp2", "accuracy.png"): "Share of answers naming the true class (blue) and 'none' (grey) per model, with "
                              "intervals: lower accuracy means the occlusion map keeps less of the object.",
    ("exp2", "classes.png"): "Accuracy per class and model: which objects stop being recognisable first.",
    ("exp2", "workers.png"): "One dot per worker: median seconds per answer against accuracy. Fast, inaccurate "
                             "workers are likely answering carelessly.",
}


def analysis_section(run: Run, settings: ReportSettings) -> Section:
    summaries = {p.parent.name: p for p in run.path("analysis").glob("*/summary.json")}
    if not summaries:
        return Section("analysis", "Human study results", missing=(
            "no analysed answers yet: `prunexplain run` analyses the answers in study/answers/ or study/study.db, "
            "or a simulated crowd's"))
    source_path = run.path("analysis", "source.json")
    sources = json.loads(source_path.read_text()) if source_path.exists() else {}
    questions = {key: e.get("question") for key, e in _manifest(run).get("experiments", {}).items()}
    body = Raw("")
    for key in sorted(summaries, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k)):
        summary = json.loads(summaries[key].read_text())
        body += tag("h3", f"{key}: {questions.get(key) or summary.get('experiment', '')}")
        body += _source(sources.get(key)) + _headline(summary)
        body += _exp1_table(summary) if summary.get("experiment") == "exp1" else _exp2_table(summary)
        folder, kind = summaries[key].parent, summary.get("experiment", "")
        body += tag("div", join(_analysis_figure(folder / name, kind, settings)
                                for name in summary.get("figures", []) if (folder / name).is_file()), class_="figs")
    return Section("analysis", "Human study results", body)


def _source(entry: dict | None) -> Raw:
    kind, text = _SOURCES.get((entry or {}).get("source"), ("unknown", "Source of these answers unknown "
                                                                       "(not recorded in analysis/source.json)."))
    files = (entry or {}).get("files", [])
    return tag("div", prose(text + (f" Files: {', '.join(map(str, files))}." if files else "")), class_=f"banner {kind}")


def _headline(summary: dict) -> Raw:
    none = "'equally reasonable'" if summary.get("experiment") == "exp1" else "'none'"
    alpha = number(summary.get("krippendorff_alpha"))
    ci = summary.get("krippendorff_alpha_ci") or [None, None]
    return cards([
        ("answers", summary.get("answers", "-")), ("items", summary.get("items", "-")),
        ("workers", summary.get("workers", "-")),
        (f"share {none}", f"{percent(summary.get('none_share'))} ({interval(summary.get('none_ci'))})"),
        ("Krippendorff's alpha", alpha if "-" in (number(ci[0]), number(ci[1])) else
         f"{alpha} ({number(ci[0])} to {number(ci[1])})"),
    ])


def _exp1_table(summary: dict) -> Raw:
    rows = [[f"{p['a']} vs {p['b']}", p.get("n", "-"), percent(p.get("none_share")), p.get("a_preferred", "-"),
             p.get("b_preferred", "-"), f"{percent(p.get('a_share'))} ({interval(p.get('a_share_ci'))})",
             pvalue(p.get("p")), pvalue(p.get("p_holm"))] for p in summary.get("pairs", [])]
    headers = ["pair a vs b", "answers", "equally reasonable", "a preferred", "b preferred",
               "a share of decided (CI)", "p (chi-square)", "p (Holm)"]
    return table(headers, rows)


def _exp2_table(summary: dict) -> Raw:
    rows = [[name, m.get("n", "-"), f"{percent(m.get('accuracy'))} ({interval(m.get('accuracy_ci'))})",
             percent(m.get("none_share"))] for name, m in summary.get("models", {}).items()]
    return table(["model", "answers", "accuracy (CI)", "'none'"], rows)


def _analysis_figure(path: Path, kind: str, settings: ReportSettings) -> Raw:
    caption = _CAPTIONS.get((kind, path.name))
    if caption is None and path.name.startswith("confusion_"):
        caption = f"{path.stem.removeprefix('confusion_')}: true class (rows) against the answer (columns)."
    return figure(path, caption or path.name, settings.figure_width)
