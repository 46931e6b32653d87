"""Who answered a run's study: real answers where the run has them, else a simulated crowd.

Real answers are MTurk batch-results CSVs put into `study/answers/` as `<experiment>*.csv` (e.g.
`exp1_batch1.csv`, `exp1_heatmap.csv`; `experiments.answer_files_of` says which file is whose) and
the self-hosted study's database `study/study.db` (exported to `study/export/`). An experiment
without real answers is answered by a simulated crowd (`crowd.simulate`) under
`study/simulated/<experiment>/`: by default (`crowd.mode = "observer"`) model-based observers that
look at the run's own stimuli (`study.observers`), or (`"published"`) workers drawn from the study's
published effects where the model names match, blind to the stimuli. `study/crowd.json` lists, per
experiment, its kind, the source (real, observers or simulated), the files and, for a crowd that is
not people, the reason: the analysis stage reads only that.

Never a silent fallback: a database that exists but cannot be read whole (empty, corrupt, foreign,
a directory or a dangling link, copied without its -wal while a server ran: see
`study.server.store`) stops the stage with one line naming it. Only a readable database nobody has
answered in (or none at all) lets a simulated crowd stand in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from dataclasses import dataclass
from pathlib import Path

from prunexplain.config import ModelTruth, PairTruth, Settings, SimulateSettings, UserError
from prunexplain.experiments import answer_files_of, kind
from prunexplain.runs import Run, StudyFolder, write_json
from prunexplain.study.build import read_manifest
from prunexplain.study.observers import observe
from prunexplain.study.simulate import simulate

log = logging.getLogger(__name__)


@dataclass
class CrowdResult:
    sources: dict[str, dict]

    def summary(self) -> str:
        return "; ".join(f"{key}: {len(s['files'])} {s['source']} file(s)" for key, s in self.sources.items())


def answers_fingerprint(run: Run) -> str:
    """What decides the crowd stage besides its settings: new answers make it run again.

    Answer CSVs and the database with its -wal count by name, kind, size and time; anything named
    study.db* counts even when it is no file (a directory or a dangling link must not pass for "no
    database" and keep an earlier simulated crowd). The -shm counts by its presence only: it is
    SQLite's index of the -wal, holds no answers, and every reader may rewrite it.
    """
    study = run.study
    entries = sorted(study.answers.glob("*.csv")) + sorted(study.root.glob(f"{study.database.name}*"))
    stamps = [_stamp(path) for path in entries]
    return hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:16]


def _stamp(path: Path) -> list:
    if path.name.endswith("-shm"):
        return [path.name]
    try:
        info = path.stat()
    except OSError:  # a dangling link
        info = path.lstat()
    return [path.name, stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns]


def _exported(study: StudyFolder) -> tuple[dict[str, Path], str]:
    """The self-hosted study's answers as MTurk CSVs per experiment key, and what the database said
    when it had none. Every other problem with the database is a UserError that stops the stage."""
    from prunexplain.study.server.export import NoAnswers, export_study

    try:
        files = export_study(study.root).files
    except NoAnswers as nothing:
        return {}, str(nothing)
    return {key: path for key, path in files.items() if key != "checks"}, ""


def _simulated(settings: Settings, manifest: dict, key: str, out: Path) -> Path:
    """A simulated crowd answering one experiment, named after the study's models and classes."""
    spec = kind(manifest["experiments"][key]["kind"])
    stimuli = [s for s in manifest["stimuli"] if s["experiment"] == key]
    names = list(manifest["models"])
    study = {(t.a, t.b): t for t in SimulateSettings().pairs} | {t.name: t for t in SimulateSettings().models}
    pairs = sorted({tuple(sorted((s["left"], s["right"]), key=names.index)) for s in stimuli if spec.compares})
    simulated = SimulateSettings(
        experiment=spec.name, classes=manifest["classes"], images=len({s["image"] for s in stimuli}),
        pairs=[study.get(pair, PairTruth(a=pair[0], b=pair[1])) for pair in pairs] or SimulateSettings().pairs,
        models=[study.get(name, ModelTruth(name=name)) for name in names],
        workers=max(settings.crowd.workers, settings.crowd.answers_per_item),
        answers_per_item=settings.crowd.answers_per_item, spammer_share=settings.crowd.spammer_share,
        seed=settings.crowd.seed,
    )
    return simulate(simulated, out, power=False).results


def _why_simulated(study: StudyFolder, key: str, said: str) -> str:
    """Why experiment `key` has no real answers, in words for crowd.json and the report."""
    database = said or f"{study.database}: no answers to {key}"
    return f"no answer files {key}*.csv in {study.answers}; {database}"


def crowd_stage(settings: Settings, run: Run) -> CrowdResult:
    """Choose each experiment's answers (real first) and write `study/crowd.json`."""
    study = run.study
    manifest = read_manifest(study.manifest)
    exported, said = _exported(study)
    names = sorted(path.name for path in study.answers.glob("*.csv"))
    sources, missing = {}, {}
    for key, experiment in manifest["experiments"].items():
        real = [study.answers / name for name in answer_files_of(key, names)]
        real += [exported[key]] if key in exported else []
        sources[key] = {"kind": kind(experiment["kind"]).name}
        if real:
            sources[key] |= {"source": "real", "files": [str(p) for p in real]}
        elif settings.crowd.simulate:
            missing[key] = _why_simulated(study, key, said)
        else:
            log.info("crowd: no answers to %s yet and crowd.simulate is off", key)
            del sources[key]
    if settings.crowd.mode == "observer" and missing:
        for key, reason in missing.items():
            log.info("crowd: %s: model-based observers answer (%s)", key, reason)
        try:
            answered = observe(settings, run, list(missing), study.simulated)
        except UserError as error:
            raise UserError(f"{error} (model-based observers answer from the run's models and data; "
                            "crowd.mode = \"published\" simulates a crowd without them)") from None
        for key, reason in missing.items():
            sources[key] |= {"source": "observers", "files": [str(answered[key].results)], "reason": reason}
    else:
        for key, reason in missing.items():
            log.info("crowd: %s: a simulated crowd answers (%s)", key, reason)
            path = _simulated(settings, manifest, key, study.simulated(key))
            sources[key] |= {"source": "simulated", "files": [str(path)], "reason": reason}
    write_json(study.crowd, sources)
    return CrowdResult(sources)
