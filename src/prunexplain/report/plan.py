"""The report's account of the study's conduct: the pre-registration (its frozen hash, whether the
file still has it, every setting the run departs from it by) and the participant flow as a
CONSORT-style diagram (`study/export/flow.json`, written by `study export` and the crowd stage)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from matplotlib.figure import Figure

from prunexplain.config import ReportSettings, load_settings
from prunexplain.report.blocks import Picture, Table, picture_plot
from prunexplain.report.page import Section
from prunexplain.runs import Run
from prunexplain.study.preregistration import departures, file_sha256, frozen

TITLE = "Pre-registration and participants"


@dataclass(frozen=True)
class Plan:
    sha256: str | None  # None: not pre-registered
    frozen_at: str | None
    intact: bool
    departures: list[str]
    flow: Table | None
    diagram: Picture | None


def plan_section(run: Run, settings: ReportSettings) -> Section:
    record = frozen(run.study)
    flow = json.loads(run.study.flow.read_text()) if run.study.flow.is_file() else None
    if record is None and flow is None:
        return Section("plan", TITLE, missing="not pre-registered: `prunexplain study preregister` freezes the plan "
                                              "before the first answer")
    intact = record is not None and file_sha256(run.study.preregistration) == record["sha256"]
    departed = _departures(run) if record is not None else []
    table = Table.of(("step", "participants"), [[step, n] for step, n in _steps(flow)]) if flow else None
    diagram = picture_plot(flow_figure(flow), "Participant flow: each box the participants who reached the step, "
                           "beside it those who left or were excluded and why.", "participant flow",
                           settings.figure_width) if flow else None
    record = record or {}
    return Section("plan", TITLE, Plan(record.get("sha256"), record.get("frozen_at"), intact, departed, table, diagram))


def _departures(run: Run) -> list[str]:
    """The run's settings (config.toml) against the frozen plan (preregistration.json)."""
    data = run.study.preregistration_data
    if not data.is_file() or not run.config.is_file():
        return []
    return departures(json.loads(data.read_text()), load_settings(run.config))


def _steps(flow: dict) -> list[tuple[str, int]]:
    """The flow's counts in the order a participant meets them (`study.server.flow`'s definitions)."""
    steps = [("consented", flow.get("consented", 0)),
             ("failed the comprehension check twice (session ended, no answers)", flow.get("comprehension_failed", 0)),
             ("passed the comprehension check", flow.get("comprehension_passed", 0)),
             ("opened a task", flow.get("started_tasks", 0)),
             ("left before the end (or still answering)", flow.get("abandoned", 0)),
             ("of whom answered some (answers kept)", flow.get("abandoned_answered", 0)),
             ("completed", flow.get("completed", 0)),
             ("failed an attention check (answers kept)", flow.get("failed_attention_check", 0))]
    steps += [(f"excluded: {reason}", n) for reason, n in flow.get("excluded", {}).items()]
    return [*steps, ("analysed (answers exported to the analysis)", flow.get("analysed", 0))]


def flow_figure(flow: dict) -> Figure:
    """Boxes down the middle (consented, passed comprehension, completed, analysed), beside each step
    those who left there or what was noted, joined by arrows: the CONSORT diagram's shape."""
    partial = flow.get("abandoned_answered", 0)
    main = [("Consented", flow.get("consented", 0)), ("Passed comprehension", flow.get("comprehension_passed", 0)),
            ("Completed", flow.get("completed", 0)),
            ("Analysed" + (f" (with {partial} who left)" if partial else ""), flow.get("analysed", 0))]
    side = [f"Excluded: failed comprehension twice\nn = {flow.get('comprehension_failed', 0)}",
            f"Left before the end: n = {flow.get('abandoned', 0)}\n(answers kept from {partial})",
            f"Failed an attention check: n = {flow.get('failed_attention_check', 0)}\n(answers kept, as "
            "pre-registered)"]
    if not flow.get("comprehension_passed") and not flow.get("comprehension_failed"):  # no check was asked
        main, side = [main[0], *main[2:]], side[1:]
    figure = Figure(figsize=(7, 1.3 * len(main)), dpi=100)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.set_xlim(0, 10)
    axis.set_ylim(0, len(main))
    axis.axis("off")
    box = {"boxstyle": "round,pad=0.4", "facecolor": "#eef3fb", "edgecolor": "#35608f"}
    aside = {"boxstyle": "round,pad=0.4", "facecolor": "#fbf1ee", "edgecolor": "#8f4a35"}
    for row, (label, n) in enumerate(main):
        y = len(main) - row - 0.5
        axis.text(2.5, y, f"{label}\nn = {n}", ha="center", va="center", fontsize=10, bbox=box)
        if row + 1 < len(main):
            axis.annotate("", (2.5, y - 0.72), (2.5, y - 0.28), arrowprops={"arrowstyle": "->"})
            axis.annotate("", (5.1, y - 0.5), (2.5, y - 0.5), arrowprops={"arrowstyle": "->", "color": "#8f4a35"})
            axis.text(5.2, y - 0.5, side[row], ha="left", va="center", fontsize=9, bbox=aside)
    return figure
