"""The study's preprocessed answer table, written from answers read by `load` (raw batch results or any
other format it reads).

The study published its answers as the tables its notebook derived from MTurk's batch results (one
row per answer: the answer columns, the names parsed from the stimulus file name and a few derived
columns). Writing the same table from validated answers lets a reader compare this project's
reading of a batch file with the published one cell by cell, and feed the tools built for those
files. Column names and order come from the experiment spec (`Kind.preprocessed`); the values are
written as pandas wrote the study's: booleans `True`/`False`, derived flags as floats `1.0`/`0.0`.

Only kept answers become rows: a row `load` left out (rejected, no answer, off-scheme file name) is
reported there, not passed on.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from prunexplain.analysis.load import Answers
from prunexplain.config import UserError
from prunexplain.runs import atomic_open


def preprocessed_table(answers: Answers) -> pd.DataFrame:
    """The notebook's table: HITId, WorkerId, Input.image_url, one true/false column per answer option,
    the parsed names, then its derived columns (exp1: a 1.0/0.0 column per model present, 1.0 where
    the answer prefers it; exp2: `correct`), and last the answer as one value."""
    kind, frame = answers.kind, answers.frame
    options = kind.options(answers.labels)
    table = pd.DataFrame({"HITId": frame["hit"], "WorkerId": frame["worker"], "Input.image_url": frame["url"]})
    for option, column in zip(options, kind.columns(answers.labels)):
        table[column] = frame["answer"] == option
    *names, answer = kind.preprocessed.items()  # the answer column comes last, after the derived ones
    for column, ours in names:
        table[column] = frame[ours]
    if kind.compares:
        for model in answers.models:
            table[model] = (frame["preferred"] == model).astype(float)
    else:
        table["correct"] = frame["correct"].astype(float)
    table[answer[0]] = frame[answer[1]]
    return table.reset_index(drop=True)


def write_preprocessed(answers: Answers, path: Path) -> Path:
    """Write the preprocessed table as CSV (atomically); a folder as the target is a user mistake."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; --preprocessed takes a CSV file name")
    with atomic_open(path) as handle:
        preprocessed_table(answers).to_csv(handle, index=False)
    return path
