"""The analysis stage: answer files in, `summary.json`, `workers.csv`, `items.csv`, PNG plots and
Markdown tables out.

`analyze(kind, files, settings, out_dir)` (a kind of the experiment spec: exp1 compares, exp2
recognises) reads and validates the answers (`load`), runs
the statistics (`stats`), optionally repeats the headline results without low-effort workers, and
writes everything atomically into `out_dir`; on request also the study's preprocessed table
(`preprocess`). The summary's schema is documented in the README.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from prunexplain.analysis import stats
from prunexplain.analysis.load import Answers, read_answers, read_key
from prunexplain.config import AnalysisSettings, UserError
from prunexplain.experiments import DENSE_NAME, KINDS, NONE, Kind
from prunexplain.runs import AnalysisFolder, write_csv, write_json

log = logging.getLogger(__name__)

_PROBLEMS_LISTED = 200  # summary.json lists this many problems; counts cover all


@dataclass
class AnalysisResult:
    experiment: str
    out_dir: Path
    summary: dict
    markdown: str
    written: list[Path] = field(default_factory=list)


def analyze(
    experiment: str, files: Sequence[Path], settings: AnalysisSettings | None = None, out_dir: Path = Path("analysis"),
    preprocessed: Path | None = None, classes: Sequence[str] = (), key: Path | None = None,
) -> AnalysisResult:
    """Analyse one experiment's answer files; write summary.json, workers.csv, items.csv and plots into
    out_dir, and the study's preprocessed table of the kept answers to `preprocessed` if given.
    `classes`: the study's class labels, which file-name safe forms in stimulus names stand for;
    `key`: the study's key.csv, where its stimuli have opaque names."""
    settings = settings or AnalysisSettings()
    out_dir = Path(out_dir)
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())  # refused now, not after the work
    if not existing.is_dir():
        blocker = "it" if existing == out_dir else existing
        raise UserError(f"{out_dir}: {blocker} is a file; the analysis output must be a folder (new or existing)")
    if preprocessed is not None and Path(preprocessed).is_dir():  # refused now, not after the work
        raise UserError(f"{preprocessed}: is a folder; --preprocessed takes a CSV file name")
    answers = read_answers(experiment, files, settings, classes, read_key(key) if key else None)
    summary = summarise(answers, settings)
    folder = AnalysisFolder(out_dir)
    written = [write_csv(folder.workers, _worker_rows(stats.worker_stats(answers.frame)))]
    kind = answers.kind
    items = stats.item_table(answers.frame, kind.shows, kind.options(answers.labels), answers.labels)
    written.append(write_csv(folder.items, items.to_dict("records")))
    if preprocessed is not None:
        from prunexplain.analysis.preprocess import write_preprocessed

        written.append(write_preprocessed(answers, preprocessed))
    if settings.plots:
        written += _plots(answers, summary, folder)
    summary["figures"] = [path.name for path in written if path.suffix == ".png"]
    written.append(write_json(folder.summary, _clean(summary)))
    log.info("analysis of %s written to %s", experiment, out_dir)
    return AnalysisResult(experiment, out_dir, summary, markdown(summary), written)


def summarise(answers: Answers, settings: AnalysisSettings) -> dict:
    """All numbers of the analysis as one JSON-ready dict (see the README for the schema)."""
    rng = np.random.default_rng(settings.seed)
    core = _exp1 if answers.kind.compares else _exp2
    summary = {"experiment": answers.experiment, **core(answers.frame, answers, settings, rng, detail=True)}
    summary["per_worker"] = _workers(answers.frame)
    summary["filter"] = _filtered(answers, settings, rng, core)
    summary["validation"] = _validation(answers)
    summary["settings"] = settings.model_dump(mode="json")
    return summary


def _counts(frame: pd.DataFrame) -> dict:
    return {
        "answers": len(frame), "items": int(frame["item"].nunique()), "images": int(frame["image"].nunique()),
        "workers": int(frame["worker"].nunique()), "hits": int(frame["hit"].nunique()),
    }


def _exp1(frame: pd.DataFrame, answers: Answers, settings, rng, detail: bool) -> dict:
    models, confidence = answers.models, settings.confidence
    none = int((frame["answer"] == NONE).sum())
    counts = stats.value_counts(frame, "answer", answers.kind.options())
    alpha, alpha_ci = stats.alpha_with_ci(counts, settings.bootstrap if detail else 0, confidence, rng)
    result = {
        **_counts(frame), "models": models, "none": none, "none_share": stats.share(none, len(frame)),
        "none_ci": stats.wilson(none, len(frame), confidence),
        "krippendorff_alpha": alpha, "krippendorff_alpha_ci": alpha_ci,
        "pairs": stats.pair_stats(frame, models, confidence, settings.bootstrap if detail else 0, rng),
    }
    if detail:
        result["classes"] = stats.class_stats(frame, models, answers.labels)
        none_by_class = (frame["answer"] == NONE).groupby(frame["label"])
        result["class_none"] = {label: float(none_by_class.get_group(label).mean()) for label in answers.labels
                                if label in none_by_class.groups}
        result["class_of_none"] = stats.class_of_none(frame, answers.labels)
        result["appearance"] = stats.appearance(frame, models, answers.kind.shows)
    return result


def _exp2(frame: pd.DataFrame, answers: Answers, settings, rng, detail: bool) -> dict:
    models, labels, confidence = answers.models, answers.labels, settings.confidence
    none = int((frame["answer"] == NONE).sum())
    counts = stats.value_counts(frame, "answer", answers.kind.options(labels))
    alpha, alpha_ci = stats.alpha_with_ci(counts, settings.bootstrap if detail else 0, confidence, rng)
    per_model = stats.model_stats(frame, models, confidence)
    majority = stats.majority_correct(frame, models)
    baseline = DENSE_NAME if DENSE_NAME in per_model else models[0]
    result = {
        **_counts(frame), "labels": labels, "none": none, "none_share": stats.share(none, len(frame)),
        "none_ci": stats.wilson(none, len(frame), confidence),
        "correct": int(frame["correct"].sum()),
        "krippendorff_alpha": alpha, "krippendorff_alpha_ci": alpha_ci,
        "models": per_model,
        "tests": {
            "cochran_q": stats.cochran_q(majority),
            "mcnemar": stats.mcnemar_pairs(majority),
            "independence": stats.independence(per_model),
            "study_chisquare": stats.study_correct_chisquare(per_model, baseline) if len(per_model) > 1 else None,
            "study_chisquare_all": stats.study_correct_chisquare(per_model, baseline, with_baseline=True)
            if len(per_model) > 1 else None,
        },
    }
    if detail:
        result["classes"] = stats.class_model_stats(frame, models, labels)
        result["classes_pooled"] = stats.class_pooled_stats(frame, labels)
        result["confusion"] = {
            "rows": labels, "columns": answers.kind.options(labels),
            "models": {m: stats.confusion(frame, m, labels).tolist() for m in models},
            "pooled": stats.confusion(frame, None, labels).tolist(),
        }
    return result


def _workers(frame: pd.DataFrame) -> dict:
    table = stats.worker_stats(frame)
    return {
        "count": len(table),
        "answers_median": float(table["answers"].median()),
        "answers_max": int(table["answers"].max()),
        "median_work_time": float(frame["work_time"].median()) if frame["work_time"].notna().any() else None,
        "none_share_median": float(table["none_share"].median()),
        "all_none": int((table["none_share"] == 1).sum()),
    }


def _filtered(answers: Answers, settings: AnalysisSettings, rng, core) -> dict | None:
    """The headline results again without low-effort workers (median work time below the threshold)."""
    threshold = settings.min_median_work_time
    if threshold is None:
        return None
    frame = answers.frame
    if frame["work_time"].isna().all():
        log.warning("min_median_work_time=%g: no WorkTimeInSeconds in these files, no workers left out", threshold)
        return {"min_median_work_time": threshold, "applied": False, "note": "no WorkTimeInSeconds column"}
    removed = stats.low_effort_workers(stats.worker_stats(frame), threshold)
    kept = frame[~frame["worker"].isin(removed)]
    result = {
        "min_median_work_time": threshold, "applied": True, "workers_removed": len(removed),
        "answers_removed": len(frame) - len(kept), "removed": removed,
    }
    if kept.empty:
        return result | {"after": None, "note": "every worker is below the threshold"}
    return result | {"after": core(kept, answers, settings, rng, detail=False)}


def _validation(answers: Answers) -> dict:
    kinds: dict[str, int] = {}  # problems per column
    for problem in answers.problems:
        kinds[problem.column or "file"] = kinds.get(problem.column or "file", 0) + 1
    return {
        "files": [vars(source) for source in answers.files],
        "rows": sum(source.rows for source in answers.files),
        "kept": len(answers.frame),
        "left_out": answers.left_out,
        "repeated_items": answers.repeated,
        "problem_counts": kinds,
        "problems": [p.as_dict() for p in answers.problems[:_PROBLEMS_LISTED]],
    }


def _worker_rows(table: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in table.to_dict("records")]


def _plots(answers: Answers, summary: dict, folder: AnalysisFolder) -> list[Path]:
    from prunexplain.analysis import plots  # matplotlib only when plots are asked for

    workers = stats.worker_stats(answers.frame)
    written = []
    if answers.kind.compares:
        written.append(plots.preference_bars(summary["pairs"], folder.figure("preferences")))
        written.append(plots.class_heatmaps(summary["classes"], answers.labels, folder.figure("classes")))
        written.append(plots.worker_scatter(workers, folder.figure("workers")))
    else:
        written.append(plots.accuracy_bars(summary["models"], folder.figure("accuracy")))
        written.append(plots.class_accuracy(summary["classes"], answers.models, answers.labels,
                                            folder.figure("classes"), summary["classes_pooled"]))
        confusion = summary["confusion"]
        written.append(plots.confusion_matrix(np.array(confusion["pooled"]), confusion["rows"], confusion["columns"],
                                              "all models: true class x answer", folder.figure("confusion_pooled")))
        for model, matrix in confusion["models"].items():
            written.append(plots.confusion_matrix(np.array(matrix), confusion["rows"], confusion["columns"],
                                                  f"{model}: true class x answer", folder.figure(f"confusion_{model}")))
        written.append(plots.worker_scatter(workers, folder.figure("workers"), "accuracy", "accuracy"))
    return written


def _clean(value):
    """JSON has no NaN: write null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


# --- Markdown -----------------------------------------------------------------------------------


def markdown(summary: dict) -> str:
    """The summary as Markdown tables for the terminal."""
    kind = _kind(summary)
    body = _exp1_markdown(kind, summary) if kind.compares else _exp2_markdown(kind, summary)
    return "\n\n".join([*body, *_filter_markdown(summary), _validation_markdown(summary)]) + "\n"


def _kind(summary: dict) -> Kind:
    """The kind of task a summary is of (what `summarise` wrote into it)."""
    return KINDS[summary["experiment"]]


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _ci(interval) -> str:
    if interval is None or any(v is None or math.isnan(v) for v in interval):
        return "-"
    return f"{100 * interval[0]:.1f}-{100 * interval[1]:.1f}%"


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def _p(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _header(summary: dict, title: str) -> str:
    ci = summary["krippendorff_alpha_ci"]
    alpha_ci = "" if any(v is None or math.isnan(v) for v in ci) else f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})"
    return (
        f"## {title}\n\n{summary['answers']} answers on {summary['items']} items ({summary['images']} images) "
        f"by {summary['workers']} workers. Krippendorff's alpha (nominal): {_num(summary['krippendorff_alpha'])}"
        f"{alpha_ci}."
    )


def _exp1_markdown(kind: Kind, summary: dict) -> list[str]:
    none = (f"'Equally reasonable': {summary['none']} of {summary['answers']} answers "
            f"({_pct(summary['none_share'])}, CI {_ci(summary['none_ci'])}).")
    rows = [
        [f"{p['a']} vs {p['b']}", p["n"], f"{p['none']} ({_pct(p['none_share'])})", p["a_preferred"], p["b_preferred"],
         f"{_pct(p['a_share'])} ({_ci(p['a_share_ci'])})", _ci(p.get("a_share_ci_items")), _num(p["chi2"]),
         _p(p["p"]), _p(p["p_holm"]), _p(p["binom_p"]), _num(p["krippendorff_alpha"])]
        for p in summary["pairs"]
    ]
    pairs = table(["pair a vs b", "answers", "equally", "a preferred", "b preferred", "a share of decided (CI)",
                   "CI over items", "chi2", "p", "p Holm", "binomial p", "alpha"], rows)
    out = [_header(summary, kind.heading) + " " + none, pairs]
    if "appearance" in summary:
        out.append(_appearance_markdown(kind, summary["appearance"]))
    if "classes" in summary:
        out.append(_exp1_class_markdown(summary))
    return out


def _appearance_markdown(kind: Kind, appearance: dict) -> str:
    """The design check: how often each model was shown on each side (the study expected 2/3 in all)."""
    sides = kind.shows
    rows = [[model, *(f"{m[side]} ({_num(m[f'{side}_share'])})" for side in sides), _num(m["share"]),
             _num(m["expected"])] for model, m in appearance.items()]
    headers = ["model", *(f"{side} ({kind.picking(side)})" for side in sides), "total share", "balanced design"]
    return ("### Models shown: answers per side (share of all answers), summed over sides\n\n"
            + table(headers, rows))


def _shares(*values) -> str:
    """'30.0 / 31.2 / 38.8%': shares of one whole side by side."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return "-"
    return " / ".join(f"{100 * v:.1f}" for v in values) + "%"


def _exp1_class_markdown(summary: dict) -> str:
    """Per class: 'equally' over all pairs and P(class | equally); per pair each answer's share of all
    the class's answers in the pair (the study's /250) and a - b, the difference of the counts."""
    pairs = [(p["a"], p["b"]) for p in summary["pairs"]]
    index = {(r["class"], r["a"], r["b"]): r for r in summary["classes"]}
    labels = list(dict.fromkeys(r["class"] for r in summary["classes"]))
    of_none = summary.get("class_of_none", {})
    rows = []
    for label in labels:
        cells = [label, _pct(summary["class_none"].get(label)), _pct(of_none.get(label))]
        for a, b in pairs:
            row = index[(label, a, b)]
            split = _shares(row["a_share_of_all"], row["none_share"], row["b_share_of_all"])
            cells += [split, f"{row['a_minus_b']:+d}"]
        rows.append(cells)
    headers = ["class", "equally (all pairs)", "of all equally"]
    for a, b in pairs:
        sizes = {index[(label, a, b)]["n"] for label in labels}
        of = f"of {sizes.pop()}" if len(sizes) == 1 else "of all"
        headers += [f"{a} vs {b}: a / equally / b {of}", "a - b"]
    effect = "; ".join(f"{p['a']} vs {p['b']}: chi2 {_num(p['class_chi2'])}, p {_p(p['class_p'])}"
                       for p in summary["pairs"])
    return f"### Per class\n\n{table(headers, rows)}\n\nDoes the preference depend on the class? {effect}."


def _exp2_markdown(kind: Kind, summary: dict) -> list[str]:
    models = summary["models"]
    rows = [[name, m["n"], m["correct"], f"{_pct(m['accuracy'])} ({_ci(m['accuracy_ci'])})", m["none"],
             _pct(m["none_share"])] for name, m in models.items()]
    head = _header(summary, kind.heading) + (
        f" 'None': {summary['none']} answers ({_pct(summary['none_share'])}).")
    out = [head, table(["model", "answers", "correct", "accuracy (CI)", "none", "none share"], rows)]
    out.append(_exp2_tests_markdown(summary["tests"]))
    if "classes" in summary:
        names = list(models)
        index = {(r["class"], r["model"]): r for r in summary["classes"]}
        pooled = {r["class"]: r for r in summary.get("classes_pooled", [])}
        all_models = lambda r: f"{_pct(r['accuracy'])} ({r['correct']}/{r['n']})"  # noqa: E731
        rows = [[label, *(_pct(index[(label, m)]["accuracy"]) for m in names),
                 *([all_models(pooled[label])] if pooled else [])] for label in summary["labels"]]
        headers = ["class", *names, *(["all models (correct/answers)"] if pooled else [])]
        out.append("### Accuracy per class\n\n" + table(headers, rows))
    if "pooled" in summary.get("confusion", {}):
        confusion = summary["confusion"]
        rows = [[label, *counts] for label, counts in zip(confusion["rows"], confusion["pooled"])]
        out.append("### Confusion, all models: true class (rows) x answer\n\n"
                   + table(["class", *confusion["columns"]], rows))
    return out


def _exp2_tests_markdown(tests: dict) -> str:
    q = tests["cochran_q"]
    lines = ["### Tests of model differences on the same images",
             f"Cochran's Q on per-image majority recognition ({q['images']} images with every model): "
             f"Q = {_num(q['q'])}, df = {q['df']}, p = {_p(q['p'])}."]
    if tests["mcnemar"]:
        rows = [[f"{m['a']} vs {m['b']}", m["images"], m["only_a"], m["only_b"], _p(m["p"]), _p(m["p_holm"])]
                for m in tests["mcnemar"]]
        lines.append(table(["exact McNemar", "images", "only a right", "only b right", "p", "p Holm"], rows))
    ind = tests["independence"]
    lines.append(f"Chi-square models x correct (ignores shared images): chi2 = {_num(ind['chi2'])}, "
                 f"df = {ind['dof']}, p = {_p(ind['p'])}.")
    for key in ("study_chisquare", "study_chisquare_all"):
        if tests.get(key):
            lines.append(_study_chisquare_markdown(tests[key]))
    return "\n\n".join(lines)


def _study_chisquare_markdown(study: dict) -> str:
    observed = ", ".join(f"{m} {n:g}" for m, n in zip(study["models"], study["observed"]))
    name = f"The study's chi-square of correct answers ({observed}) against {study['baseline']}'s count"
    if study["defined"]:
        return f"{name}: chi2 = {_num(study['chi2'])}, p = {_p(study['p'])}."
    # four digits, as one compares them with the notebook's printout
    return (f"{name} is not defined: {study['note']}. Computed without that check, as the study's older scipy "
            f"did: chi2 = {study['legacy_chi2']:.4f}, p = {study['legacy_p']:.4g}.")


def _filter_markdown(summary: dict) -> list[str]:
    spec = summary.get("filter")
    if not spec:
        return []
    head = f"### Without low-effort workers (median work time < {spec['min_median_work_time']:g} s)"
    if not spec["applied"] or spec.get("after") is None:
        return [f"{head}\n\nNot applied: {spec.get('note')}."]
    after = spec["after"]
    text = (f"{spec['workers_removed']} workers and {spec['answers_removed']} answers left out; "
            f"{after['answers']} answers remain, alpha {_num(after['krippendorff_alpha'])} "
            f"(before {_num(summary['krippendorff_alpha'])}).")
    if _kind(summary).compares:
        before = {(p["a"], p["b"]): p for p in summary["pairs"]}
        rows = [[f"{p['a']} vs {p['b']}", _pct(before[(p['a'], p['b'])]["none_share"]), _pct(p["none_share"]),
                 _pct(before[(p['a'], p['b'])]["a_share"]), _pct(p["a_share"]), _p(p["p"])] for p in after["pairs"]]
        return [f"{head}\n\n{text}\n\n" + table(
            ["pair", "equally before", "equally after", "a share before", "a share after", "p after"], rows)]
    rows = [[name, _pct(summary["models"][name]["accuracy"]), _pct(m["accuracy"]), _pct(m["none_share"])]
            for name, m in after["models"].items()]
    return [f"{head}\n\n{text}\n\n" + table(["model", "accuracy before", "accuracy after", "none after"], rows)]


def _validation_markdown(summary: dict) -> str:
    v = summary["validation"]
    files = ", ".join(f"{Path(f['path']).name} ({f['format']}, {f['kept']}/{f['rows']} rows)" for f in v["files"])
    text = f"Read {files}; {v['left_out']} rows left out"
    if v["problem_counts"]:
        text += " (" + ", ".join(f"{kind}: {n}" for kind, n in v["problem_counts"].items()) + ")"
    if v["repeated_items"]:
        policy = summary["settings"]["repeated_items"]
        text += f"; {v['repeated_items']} answers repeat an item their worker answered in another HIT ({policy})"
    return text + "."
