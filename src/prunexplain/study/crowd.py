"""Who answered a run's study: real answers where the run has them, else a simulated crowd.

Real answers are MTurk batch-results CSVs put into `study/answers/` as `<experiment>*.csv` (e.g.
`exp1_batch1.csv`, `exp1_heatmap.csv`) and the self-hosted study's database `study/study.db`
(exported to `study/export/`). An experiment without real answers is answered by a simulated crowd
(`crowd.simulate`) under `study/simulated/<experiment>/`, with the study's published effects as its
truth where the model names match. `study/crowd.json` lists, per experiment, its kind, the source
(real or simulated) and the files: the analysis stage reads only that.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from prunexplain.config import ModelTruth, PairTruth, Settings, SimulateSettings, UserError
from prunexplain.runs import Run, write_json
from prunexplain.study.build import read_manifest
from prunexplain.study.simulate import simulate

log = logging.getLogger(__name__)

CROWD_FILE = "crowd.json"


@dataclass
class CrowdResult:
    sources: dict[str, dict]

    def summary(self) -> str:
        return "; ".join(f"{key}: {len(s['files'])} {s['source']} file(s)" for key, s in self.sources.items())


def answers_fingerprint(run: Run) -> str:
    """Names, sizes and times of the real answer files: new answers make the stage run again."""
    files = sorted(run.path("study", "answers").glob("*.csv")) + sorted(run.path("study").glob("study.db*"))
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def _exported(run: Run) -> dict[str, Path]:
    """The self-hosted study's answers as MTurk CSVs, per experiment key (none without a database)."""
    if not run.path("study", "study.db").is_file():
        return {}
    from prunexplain.study.server.export import export_study

    try:
        return {key: path for key, path in export_study(run.path("study")).files.items() if key != "checks"}
    except UserError as error:  # a database nobody has answered in yet
        log.info("crowd: %s", error)
        return {}


def _simulated(settings: Settings, manifest: dict, key: str, out: Path) -> Path:
    """A simulated crowd answering one experiment, named after the study's models and classes."""
    kind = manifest["experiments"][key]["kind"]
    stimuli = [s for s in manifest["stimuli"] if s["experiment"] == key]
    names = list(manifest["models"])
    study = {(t.a, t.b): t for t in SimulateSettings().pairs} | {t.name: t for t in SimulateSettings().models}
    pairs = sorted({tuple(sorted((s["left"], s["right"]), key=names.index)) for s in stimuli if kind == "exp1"})
    simulated = SimulateSettings(
        experiment=kind, classes=manifest["classes"], images=len({s["image"] for s in stimuli}),
        pairs=[study.get(pair, PairTruth(a=pair[0], b=pair[1])) for pair in pairs] or SimulateSettings().pairs,
        models=[study.get(name, ModelTruth(name=name)) for name in names],
        workers=max(settings.crowd.workers, settings.crowd.answers_per_item),
        answers_per_item=settings.crowd.answers_per_item, spammer_share=settings.crowd.spammer_share,
        seed=settings.crowd.seed,
    )
    return simulate(simulated, out, power=False).results


def crowd_stage(settings: Settings, run: Run) -> CrowdResult:
    """Choose each experiment's answers (real first) and write `study/crowd.json`."""
    manifest = read_manifest(run.path("study", "manifest.json"))
    exported = _exported(run)
    sources = {}
    for key, experiment in manifest["experiments"].items():
        real = sorted(run.path("study", "answers").glob(f"{key}*.csv"))
        if key == "exp1":  # exp1_heatmap*.csv files belong to the heatmap experiment
            real = [p for p in real if not p.name.startswith("exp1_heatmap")]
        real += [exported[key]] if key in exported else []
        if real:
            sources[key] = {"kind": experiment["kind"], "source": "real", "files": [str(p) for p in real]}
        elif settings.crowd.simulate:
            path = _simulated(settings, manifest, key, run.path("study", "simulated", key))
            sources[key] = {"kind": experiment["kind"], "source": "simulated", "files": [str(path)]}
        else:
            log.info("crowd: no answers to %s yet and crowd.simulate is off", key)
    write_json(run.path("study", CROWD_FILE), sources)
    return CrowdResult(sources)
