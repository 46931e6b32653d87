"""`study preregister`: the study's plan written down and frozen before the first answer.

Writes `study/preregistration.md` (for people: AsPredicted's questions answered from the run's
settings) and `study/preregistration.json` (the same as data), and freezes the markdown: its SHA-256
goes into the study's manifest. The study server refuses to collect when the file no longer has
that hash (`check_frozen`), and the report compares the analysis that was run with the plan.
Torch-free: the server imports it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prunexplain.config import read_json
from prunexplain.errors import UserError
from prunexplain.runs import StudyFolder


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file, None when there is no such file."""
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


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
