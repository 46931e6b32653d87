"""The report's first section: the verdict's answer in sentences, and the table behind it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from prunexplain.report.blocks import Cell, Table
from prunexplain.report.page import Section
from prunexplain.runs import Run
from prunexplain.verdict.stage import BREAKING, breaking_rows


@dataclass(frozen=True)
class Answer:
    sentences: list[str]
    table: Table
    floor: float
    confidence: float
    intervals: str  # over what the bootstrap resampled: seeds and images, or images of one seed
    agreement: Table | None  # which automatic measures decide as the people do


AGREEMENT = ("method", "people", "measure", "decide alike", "same breaking point")


def answer_section(run: Run) -> Section:
    title = "Answer: how far can the model be pruned?"
    if not run.verdict.exists():
        return Section("answer", title, missing="no verdict yet: run `prunexplain verdict`")
    verdict = json.loads(run.verdict.read_text())
    rows = [[*row[:3], Cell(row[3], bad=row[3] != "none"), *row[4:]] for row in breaking_rows(verdict)]
    agreement = [[row["method"], row["people"], row["measure"], f"{row['agree']} of {row['of']} rates",
                  Cell("yes" if row["same_breaking_point"] else "no", bad=not row["same_breaking_point"])]
                 for row in verdict.get("agreement", [])]
    return Section("answer", title, Answer(verdict["sentences"], Table.of(BREAKING, rows), verdict["accuracy_floor"],
                                           verdict["settings"]["confidence"], verdict.get("intervals", "over images"),
                                           Table.of(AGREEMENT, agreement) if agreement else None))
