"""The analysis stage of a run: every experiment of its study, from the answers `study/crowd.json` lists.

Writes `analysis/<experiment>/` (what `analyze` writes: summary.json, workers.csv, plots) and
`analysis/source.json` (per experiment: real or simulated answers, and which files), which the
report shows beside the numbers so a simulated crowd is never mistaken for people.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prunexplain.analysis.stage import analyze
from prunexplain.config import Settings, UserError, read_json
from prunexplain.runs import Run, write_json

log = logging.getLogger(__name__)


@dataclass
class RunAnalysis:
    sources: dict[str, dict]
    answers: dict[str, int]

    def summary(self) -> str:
        return "; ".join(f"{key}: {self.answers[key]} {s['source']} answers" for key, s in self.sources.items())


def analyze_run(settings: Settings, run: Run) -> RunAnalysis:
    """Analyse each experiment of the run's study with `settings.analysis`."""
    listing = run.study.crowd
    if not listing.is_file():
        raise UserError(f"{listing}: no answers listed yet; run `prunexplain run` (its crowd stage) first")
    sources = read_json(listing)
    classes = _study_classes(run)
    answers = {}
    for key, source in sources.items():
        files = [Path(f) for f in source["files"]]
        result = analyze(source["kind"], files, settings.analysis, run.analysis(key), classes=classes,
                         key=run.study.key_if_any())
        answers[key] = result.summary["answers"]
    write_json(run.analysis_source, sources)
    return RunAnalysis(sources, answers)


def _study_classes(run: Run) -> list[str]:
    """The class labels of the run's study (its manifest), through which stimulus file names map back to
    labels that are not file-name safe; [] without a manifest (the names then stay as they are)."""
    manifest = run.study.manifest
    return list(read_json(manifest).get("classes", [])) if manifest.is_file() else []
