"""`report.html`: one self-contained HTML file of a run directory, for a researcher to read.

The answer (the verdict), settings, training, accuracy against compression rate, explanation metrics,
a grid of example explanations, the study's stimuli, its pre-registration and participant flow, and
the analysed answers, each section only where its files exist (else one line naming the command that
makes them). Python gathers each section's data
(blocks.py, sections.py, grid.py, study.py); Jinja2 templates (templates/) hold all the markup.
Pictures are inline PNG data URIs and the page forbids network requests, so the file can be mailed
and opened offline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prunexplain.config import ReportSettings, UserError
from prunexplain.report.answer import answer_section
from prunexplain.report.grid import grid_section
from prunexplain.report.page import render_page
from prunexplain.report.plan import plan_section
from prunexplain.report.sections import metrics_section, pruning_section, settings_section, training_section
from prunexplain.report.study import analysis_section, stimuli_section
from prunexplain.runs import Run, write_text

log = logging.getLogger(__name__)


@dataclass
class ReportResult:
    path: Path
    sections: list[str]  # titles of the sections with content
    missing: list[str]  # titles of the sections whose files do not exist yet
    size: int  # bytes

    def summary(self) -> str:
        missing = f"; not yet: {', '.join(self.missing)}" if self.missing else ""
        size = f"{self.size / 1e6:.1f} MB" if self.size >= 1e6 else f"{self.size / 1e3:.0f} kB"
        return f"{self.path} ({size}), {len(self.sections)} sections{missing}"


def write_report(run: Run, settings: ReportSettings | None = None) -> ReportResult:
    """Write runs/<name>/report.html from whatever the run's stages have written so far."""
    settings = settings or ReportSettings()
    if not run.root.is_dir():
        raise UserError(f"report: no such run directory {run.root}")
    sections = [
        answer_section(run), settings_section(run), training_section(run, settings), pruning_section(run, settings),
        metrics_section(run, settings), grid_section(run, settings), stimuli_section(run, settings),
        plan_section(run, settings), analysis_section(run, settings),
    ]
    text = render_page(f"prunexplain report: {run.root.name}", f"Run directory {run.root}", sections)
    path = write_text(run.report, text)
    result = ReportResult(path, [s.title for s in sections if s.missing is None],
                          [s.title for s in sections if s.missing is not None], len(text.encode()))
    log.info("report written: %s", result.summary())
    return result
