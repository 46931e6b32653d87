"""`study preregister`: the study's plan written down and frozen before the first answer.

Writes `study/preregistration.md` (for people: AsPredicted's questions answered from the run's
settings) and `study/preregistration.json` (the same as data), and freezes the markdown: its SHA-256
goes into the study's manifest. The study server refuses to collect when the file no longer has
that hash (`check_frozen`), and the report compares the analysis that was run with the plan.
Torch-free: the server imports it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from prunexplain.config import ServeSettings, Settings, read_json
from prunexplain.errors import UserError
from prunexplain.experiments import DENSE_NAME
from prunexplain.runs import Run, StudyFolder, file_digest, write_json, write_text

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file, None when there is no such file."""
    return file_digest(path) if Path(path).is_file() else None


def frozen(folder: StudyFolder) -> dict | None:
    """The manifest's record of the frozen pre-registration (`file`, `sha256`, `frozen_at`), if any."""
    if not folder.manifest.is_file():
        return None
    return read_json(folder.manifest).get("preregistration")


def check_frozen(folder: StudyFolder, answered: bool) -> None:
    """Stop (one line) when a frozen pre-registration is gone or changed: after the first answer the
    plan may not change; before it, it must be frozen again with `study preregister`."""
    record = frozen(folder)
    if not record:
        return
    path = folder.preregistration
    now = file_sha256(path)
    if now == record["sha256"]:
        return
    what = "is gone" if now is None else f"changed (frozen SHA-256 {record['sha256'][:12]}, now {now[:12]})"
    if answered:
        raise UserError(f"{path}: {what} after the first answer; restore the pre-registered file: a study may "
                        "not change its plan while it collects")
    raise UserError(f"{path}: {what} since it was frozen; run `prunexplain study preregister` again before "
                    "collecting")


def exclusion_rules(folder: StudyFolder) -> dict:
    """The pre-registered exclusion rules (`exclusions` of preregistration.json): what approving and
    rejecting crowd work follows. Empty when the study was not pre-registered."""
    path = folder.preregistration_data
    return read_json(path).get("exclusions", {}) if path.is_file() else {}


# What the analysis and the verdict decide with, frozen in the plan and compared with a run's later
# settings: a changed one is a departure the report names.
FROZEN_SETTINGS = {
    "analysis": ("min_median_work_time", "repeated_items", "confidence"),
    "verdict": ("human_margins", "confidence", "correction"),
    "study": ("models", "experiments", "pairs", "per_class", "explainer", "occlusion", "stimulus_names"),
}


@dataclass
class Preregistration:
    markdown: Path
    data: Path
    sha256: str

    def summary(self) -> str:
        return f"pre-registered in {self.markdown} (SHA-256 {self.sha256}), frozen in the manifest"


def preregister(settings: Settings, run: Run, serve: ServeSettings, now: str | None = None) -> Preregistration:
    """Write the plan of the run's built study and freeze it: refused once anyone has answered."""
    folder = run.study
    if not folder.manifest.is_file():
        raise UserError(f"{folder.manifest}: no such manifest; run `prunexplain study build` first")
    _refuse_after_answers(folder)
    manifest = read_json(folder.manifest)
    plan = _plan(settings, run, serve, manifest, now or _now())
    if _same_plan(folder, manifest, plan):  # frozen already: a rerun (`make demo` again) keeps date and hash
        record = manifest["preregistration"]
        log.info("pre-registration unchanged since %s: %s", record["frozen_at"], folder.preregistration)
        return Preregistration(folder.preregistration, folder.preregistration_data, record["sha256"])
    write_json(folder.preregistration_data, plan)
    write_text(folder.preregistration, render_markdown(plan))
    digest = file_sha256(folder.preregistration)
    manifest["preregistration"] = {"file": folder.relative(folder.preregistration), "sha256": digest,
                                   "data_sha256": file_sha256(folder.preregistration_data), "frozen_at": plan["date"]}
    with run.amending("study"):  # the freeze is no reason to build the study again
        write_json(folder.manifest, manifest)
    log.info("pre-registration frozen: %s, SHA-256 %s", folder.preregistration, digest)
    return Preregistration(folder.preregistration, folder.preregistration_data, digest)


def _same_plan(folder: StudyFolder, manifest: dict, plan: dict) -> bool:
    """The frozen plan is intact and says what `plan` says (its date aside)."""
    record = manifest.get("preregistration")
    intact = record and file_sha256(folder.preregistration) == record["sha256"]
    if not intact or not folder.preregistration_data.is_file():
        return False
    frozen_plan = read_json(folder.preregistration_data)
    return {**frozen_plan, "date": None} == {**_plain(plan), "date": None}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _refuse_after_answers(folder: StudyFolder) -> None:
    """A plan written after the first answer is no pre-registration: answer files or a database
    with answers stop it."""
    from prunexplain.study.server.store import read_answers

    files = sorted(folder.answers.glob("*.csv"))
    if files:
        raise UserError(f"{folder.answers}: holds answers ({files[0].name}); a pre-registration is written before "
                        "the first answer")
    if folder.database.is_file() and read_answers(folder.database):
        raise UserError(f"{folder.database}: holds answers; a pre-registration is written before the first answer")


def _plan(settings: Settings, run: Run, serve: ServeSettings, manifest: dict, date: str) -> dict:
    """AsPredicted's questions answered from the run's settings, as data."""
    experiments = manifest["experiments"]
    stimuli = Counter(s["experiment"] for s in manifest["stimuli"])
    served = [key for key in serve.experiments if key in experiments] or list(experiments)
    return {
        "title": f"How much pruning is too much for explanations? Study of run {run.root.name}",
        "date": date,
        "data_collected": "No: this plan is frozen before the first answer (the server refuses to collect once the "
                          "file changed after it).",
        "hypotheses": _hypotheses(settings, manifest),
        "dependent_variables": _outcomes(experiments),
        "conditions": {"models": list(manifest["models"]), "experiments": {
            key: {"kind": e["kind"], "rendering": e.get("variant"), "question": e.get("question"),
                  "stimuli": stimuli[key]} for key, e in experiments.items()},
            "images": len({s["image"] for s in manifest["stimuli"]}), "stimulus_names": settings.study.stimulus_names,
            "counterbalancing": manifest.get("counterbalancing", {})},
        "analyses": _analyses(settings),
        "exclusions": {
            "comprehension": "a comprehension check after the instructions; two failed attempts end the session "
                             "before any task (recorded, no answers)" if serve.comprehension else "none",
            "attention_checks": serve.attention_checks,
            "attention_rule": "instructed-response items at random places; their answers are never analysed, and "
                              "a participant who fails one is reported (participant flow), their answers kept",
            "min_median_work_time": settings.analysis.min_median_work_time,
            "repeated_items": settings.analysis.repeated_items,
            "rejected_assignments": "left out",
        },
        "sample": _sample(run, serve, stimuli, served),
        "other": {"manifest_stimuli": len(manifest["stimuli"]), "software": manifest.get("software", {})},
        "settings": {section: {key: _plain(getattr(getattr(settings, section), key)) for key in keys}
                     for section, keys in FROZEN_SETTINGS.items()},
    }


def _plain(value):
    """A setting as JSON has it (tuples as lists), so frozen and later values compare alike."""
    return json.loads(json.dumps(value, default=list))


def _hypotheses(settings: Settings, manifest: dict) -> list[str]:
    margins = settings.verdict.human_margins
    pruned = [name for name in manifest["models"] if name != DENSE_NAME]
    kinds = {e["kind"] for e in manifest["experiments"].values()}
    said = []
    if "exp2" in kinds and "recognition" in margins:
        said.append(f"Recognition: with each pruned model's map ({', '.join(pruned)}) people name the image's class "
                    f"no less often than with the dense model's, up to a margin of {margins['recognition']:g} (share "
                    "of right answers); the breaking point is the lowest rate where this fails.")
    if "exp1" in kinds and "preference" in margins:
        said.append(f"Preference: shown a pruned and the dense model's maps side by side, people prefer the dense "
                    f"model's by no more than {margins['preference']:g} (share preferring the pruned minus share "
                    "preferring the dense map).")
    return said or ["No human measure is judged (verdict.human_margins names none of the study's experiments)."]


def _outcomes(experiments: dict) -> dict:
    recognise = "per image, the share of answers naming the true class, per model"
    compare = "per image and pair, the share of answers preferring each model (or 'equally')"
    return {key: recognise if described["kind"] == "exp2" else compare for key, described in experiments.items()}


def _analyses(settings: Settings) -> dict:
    verdict = settings.verdict
    return {
        "primary": f"per pruned model, a one-sided non-inferiority test against the dense model at level "
                   f"{verdict.confidence:g} on the paired per-image differences (bootstrap over images), "
                   f"{'Holm-corrected across rates' if verdict.correction == 'holm' else 'uncorrected'}; the "
                   "breaking point is the lowest rate that is not non-inferior",
        "margins": dict(verdict.human_margins),
        "alpha": round(1 - verdict.confidence, 10),
        "secondary": "experiment 1: chi-square and binomial tests of each pair's preference (Holm), Krippendorff's "
                     "alpha; experiment 2: accuracy per model and class, Cochran's Q and McNemar tests on the same "
                     f"images; intervals at {settings.analysis.confidence:g}",
    }


def _sample(run: Run, serve: ServeSettings, stimuli: Counter, served: list[str]) -> dict:
    """The planned answers and where their number came from: the observers' power analysis where the
    run has one (`study predict`), else the reproduced study's design of 5 answers per stimulus."""
    per = serve.answers_per_stimulus
    answers = {key: stimuli[key] * per for key in served}
    sample = {"answers_per_stimulus": per, "answers": answers, "tasks_per_participant": serve.tasks_per_participant,
              "participants": math.ceil(sum(answers.values()) / serve.tasks_per_participant),
              "stopping_rule": "every stimulus has its answers_per_stimulus distinct participants"}
    powers = {key: run.prediction.answers(key).power for key in served}
    found = {key: read_json(path) for key, path in powers.items() if path.is_file()}
    if not found:
        sample["source"] = (f"the reproduced study's design ({per} distinct workers per stimulus); no power analysis "
                            "(`prunexplain study predict` makes one on predicted answers)")
        return sample
    rows = []
    for key, pairs in found.items():
        for row in pairs:
            rows.append({"experiment": key, "a": row["a"], "b": row["b"], "items_needed": row.get("items"),
                         "power_target": row.get("target"), "alpha": row.get("alpha"),
                         "items_planned": stimuli[key] // max(1, len(pairs))})
    sample["power"] = rows
    sample["source"] = ("power analysis on answers predicted by model-based observers (`study predict`): items "
                        "each pair needs for its predicted preference, against the items planned")
    return sample


def render_markdown(plan: dict) -> str:
    """The plan for people, in AsPredicted's order."""
    lines = [f"# {plan['title']}", "", f"Pre-registered {plan['date']}. Written by `prunexplain study preregister`;"
             " its SHA-256 is frozen in study/manifest.json.", ""]

    def section(number: int, heading: str, body: list[str]) -> None:
        lines.extend([f"## {number}. {heading}", "", *body, ""])

    section(1, "Data collection", [plan["data_collected"]])
    section(2, "Hypotheses", [f"- {h}" for h in plan["hypotheses"]])
    section(3, "Dependent variables", [f"- {key}: {text}" for key, text in plan["dependent_variables"].items()])
    conditions = plan["conditions"]
    section(4, "Conditions", [f"Models: {', '.join(conditions['models'])}; {conditions['images']} images; stimulus "
                              f"names {conditions['stimulus_names']}.", ""] +
            [f"- {key}: {e['kind']} ({e['rendering']}), {e['stimuli']} stimuli: \"{e['question']}\""
             for key, e in conditions["experiments"].items()])
    analyses = plan["analyses"]
    section(5, "Analyses", [f"Primary: {analyses['primary']}.", "",
                            f"Margins: {', '.join(f'{k} {v:g}' for k, v in analyses['margins'].items())}; "
                            f"alpha {analyses['alpha']:g}.", "", f"Secondary: {analyses['secondary']}."])
    section(6, "Outliers and exclusions", [f"- {key.replace('_', ' ')}: {'none' if value is None else value}"
                                           for key, value in plan["exclusions"].items()])
    sample = plan["sample"]
    body = [f"{sample['answers_per_stimulus']} distinct participants per stimulus: "
            + ", ".join(f"{key} {n} answers" for key, n in sample["answers"].items())
            + f"; about {sample['participants']} participants of {sample['tasks_per_participant']} tasks each. "
            f"Stopping rule: {sample['stopping_rule']}.", "", f"Where the number comes from: {sample['source']}."]
    body += [f"- {r['experiment']} {r['a']} vs {r['b']}: {r['items_needed'] or 'more than can be simulated'} items "
             f"needed at power {r['power_target']}, {r['items_planned']} planned" for r in sample.get("power", [])]
    section(7, "Sample size", body)
    section(8, "Other", ["Settings frozen with this plan (the report names every later change):", ""] +
            [f"- {section}.{key} = {json.dumps(value)}" for section, values in plan["settings"].items()
             for key, value in values.items()])
    return "\n".join(lines)


def departures(plan: dict, settings: Settings) -> list[str]:
    """Each frozen setting the run now has otherwise, as 'section.key: planned -> now'."""
    found = []
    for section, values in plan.get("settings", {}).items():
        for key, planned in values.items():
            now = _plain(getattr(getattr(settings, section), key))
            if now != planned:
                found.append(f"{section}.{key}: {json.dumps(planned)} planned, {json.dumps(now)} run")
    return found
