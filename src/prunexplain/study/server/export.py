"""The study's answers as MTurk batch-results CSVs, one per experiment key, read by `prunexplain analyze`.

Columns: HITId, AssignmentId, WorkerId, AssignmentStatus, AcceptTime, SubmitTime, WorkTimeInSeconds,
Input.image_url (the stimulus file name) and one true/false column per option:
`Answer.algorithms.alg1|alg2|none` (exp1 kinds) or `Answer.classes.<label>` and `Answer.classes.none`
(exp2 kinds). A HIT is a stimulus (its id derives from the stimulus, so it is stable across exports);
an assignment is one answer. Status is `Approved` when the participant finished and passed every
attention check, else `Submitted`; both count in the analysis, which drops only rejected ones.
Attention checks never enter these files; they go to `attention_checks.csv`. After the answer
columns come the platform's ids of the participant (empty where there are none): `Platform` (mturk,
prolific or generated), `Platform.StudyId` (MTurk's hitId, Prolific's STUDY_ID) and
`Platform.SessionId` (MTurk's assignmentId, Prolific's SESSION_ID), to match the answers with the
platform's submissions; the analysis ignores them. (HITId and AssignmentId stay per stimulus and per
answer, as the analysis counts one assignment per answer.)

`flow.json` beside the files: the participant flow (server/flow.py), for the report's diagram.

The database is read only (`store.read_only`): the export works on a read-only copy of a study
folder and never writes into it, except the export itself where asked. A database nobody has
answered in yet is `NoAnswers`; any other problem with it is a plain UserError.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prunexplain.errors import UserError
from prunexplain.experiments import KINDS
from prunexplain.runs import StudyFolder, write_csv, write_json
from prunexplain.study.server.catalog import Experiment, load_study
from prunexplain.study.server.store import read_export

log = logging.getLogger(__name__)

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class NoAnswers(UserError):
    """No database, or a readable one without answers: the only case the crowd stage may simulate."""


@dataclass
class ExportResult:
    files: dict[str, Path]  # experiment key (or 'checks') -> file
    rows: dict[str, int]
    flow: Path | None = None  # flow.json

    def summary(self) -> str:
        lines = [f"{key}: {self.rows[key]} answers -> {path}" for key, path in self.files.items()]
        return "\n".join(lines + ([f"participant flow -> {self.flow}"] if self.flow else []))


def _id(*parts: str) -> str:
    """A 30-character id like MTurk's, the same every time for the same parts."""
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:30].upper()


def _time(seconds: float) -> str:
    return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(seconds))


def spreadsheet_safe(text: str) -> str:
    """`text` with a leading `'` when a spreadsheet would run it as a formula (=, +, -, @, tab, CR):
    a participant id such as `=HYPERLINK(...)` must stay text in Excel or LibreOffice."""
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def export_row(experiment: Experiment, classes: list[str], answer: dict, image_url: str) -> dict:
    """One answer in MTurk's batch-results layout; the answer columns are its kind's."""
    kind = KINDS[experiment.kind]
    row = {
        "HITId": _id("hit", answer["stimulus"]),
        "AssignmentId": _id("assignment", answer["submission"]),
        "WorkerId": spreadsheet_safe(answer["participant"]),
        "AssignmentStatus": "Approved" if answer["completed"] and not answer["checks_failed"] else "Submitted",
        "AcceptTime": _time(answer["shown_at"]),
        "SubmitTime": _time(answer["answered_at"]),
        "WorkTimeInSeconds": max(0, round(answer["answered_at"] - answer["shown_at"])),
        "Input.image_url": image_url,
    }
    chosen = (str(option == answer["answer"]).lower() for option in kind.options(classes))
    row.update(zip(kind.columns(classes), chosen))
    row.update({"Platform": answer.get("source") or "",
                "Platform.StudyId": spreadsheet_safe(answer.get("study_id") or ""),
                "Platform.SessionId": spreadsheet_safe(answer.get("session_id") or "")})
    return row


def export_study(study_dir: Path, out: Path | None = None, experiment: str | None = None) -> ExportResult:
    """Write `<key>_results.csv` per experiment with answers (into `out`, a folder, default
    `study/export/`), or one experiment into `out` when it names a .csv file."""
    folder = StudyFolder(study_dir)
    answers, flow = _answers(folder.database)
    study = load_study(folder.root, [experiment] if experiment else None)
    by_key: dict[str, list[dict]] = {}
    checks = []
    for answer in answers:
        if answer["check_answer"] is not None:
            checks.append(answer)
        elif answer["experiment"] in study.experiments:
            stimulus = study.stimuli.get(answer["stimulus"])
            name = stimulus.name if stimulus else Path(answer["stimulus"]).name
            row = export_row(study.experiments[answer["experiment"]], study.classes, answer, name)
            by_key.setdefault(answer["experiment"], []).append(row)
    if not by_key:
        raise NoAnswers(f"{folder.database}: no answers{f' to {experiment}' if experiment else ''} yet")
    paths = _paths(folder, out, sorted(by_key))
    result = ExportResult({}, {})
    for key, path in paths.items():
        result.files[key], result.rows[key] = write_csv(path, by_key[key]), len(by_key[key])
    beside = next(iter(paths.values())).parent
    if checks:
        result.files["checks"] = write_csv(beside / folder.attention_checks.name, [_check_row(c) for c in checks])
        result.rows["checks"] = len(checks)
    result.flow = write_json(beside / folder.flow.name, flow)
    log.info("exported %s", ", ".join(f"{key} ({n})" for key, n in result.rows.items()))
    return result


def _answers(database: Path) -> tuple[list[dict], dict]:
    """The database's answers and participant flow; no database at all is NoAnswers, unless its -wal
    is there without it."""
    wal = database.with_name(database.name + "-wal")
    if not os.path.lexists(database) and not os.path.lexists(wal):
        raise NoAnswers(f"{database}: no such file; nobody has answered yet (start `prunexplain study serve`)")
    if not os.path.lexists(database):
        raise UserError(f"{wal}: a -wal file without its database {database.name}; copy both")
    return read_export(database)


def _paths(folder: StudyFolder, out: Path | None, keys: list[str]) -> dict[str, Path]:
    if out is not None and out.suffix.lower() == ".csv":
        if len(keys) > 1:
            raise UserError(
                f"--out {out}: answers of several experiments ({', '.join(keys)}); give --experiment or a folder"
            )
        return {keys[0]: out}
    if out is None:
        return {key: folder.exported(key) for key in keys}
    return {key: out / folder.exported(key).name for key in keys}


def _check_row(answer: dict) -> dict:
    return {
        "WorkerId": spreadsheet_safe(answer["participant"]), "Experiment": answer["experiment"],
        "Position": answer["position"],
        "Picture": Path(answer["stimulus"]).name, "Expected": answer["check_answer"], "Answer": answer["answer"],
        "Passed": str(bool(answer["passed"])).lower(), "SubmitTime": _time(answer["answered_at"]),
    }
