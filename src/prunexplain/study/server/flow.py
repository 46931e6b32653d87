"""The participant flow of the self-hosted study (CONSORT-style), counted from study.db.

The consent text promises that nothing but answers, times and the id is recorded, so a visit that
does not consent leaves no trace: the flow starts at consent. Definitions, each a count of
participants (rows of the participants table):

- `consented`: agreed on the consent page and got a session (their tasks were reserved then).
  Participants forgotten when a restart released every task they had, before they answered any
  (store.Store.release), are not counted: they start afresh if they come back.
- `comprehension_passed`: passed the comprehension check (server/comprehension.py).
- `comprehension_failed`: failed it twice; they are thanked and end there (`excluded` in the table).
  With the check switched off (`serve.comprehension = false`) both are 0.
- `started_tasks`: opened at least one task.
- `completed`: answered every task they were given.
- `abandoned`: consented but did not complete and were not excluded by the check: returned the
  study, left, timed out, or are still answering when the flow is counted.
  consented = comprehension_failed + abandoned + completed.
- `abandoned_answered`: those of `abandoned` who answered at least one task: the export writes the
  answers they gave (AssignmentStatus `Submitted`) and `prunexplain analyze` keeps them.
- `failed_attention_check`: completed, but chose another answer than an attention check told them
  to at least once. Reported, not excluded: the pre-registered rule (study/preregistration.py,
  `exclusions.attention_rule`) keeps their answers, and so do the export (`Submitted`, not
  rejected) and the analysis.
- `analysed`: the participants whose answers the export hands to the analysis: the completed and
  the abandoned who answered (the analysis applies its own row rules, e.g. a minimum median work
  time, and reports what they leave out).
- `excluded`: per reason, the consented participants whose answers never reach the analysis:
  `failed comprehension check` (= comprehension_failed; they end before any task). Abandoned
  participants are counted under `abandoned`, not here.
"""

from __future__ import annotations

import sqlite3

COMPREHENSION = "failed comprehension check"
KEYS = ("consented", "comprehension_passed", "comprehension_failed", "started_tasks", "completed", "abandoned",
        "abandoned_answered", "failed_attention_check", "analysed", "excluded")


def participant_flow(db: sqlite3.Connection) -> dict:
    """The counts of the module's docstring, from a study database connection (read only is enough)."""
    row = db.execute(
        """SELECT COUNT(*), COALESCE(SUM(comprehension_passed_at IS NOT NULL), 0),
                  COALESCE(SUM(excluded = :comprehension), 0), COALESCE(SUM(started_at IS NOT NULL), 0),
                  COALESCE(SUM(completed_at IS NOT NULL), 0),
                  COALESCE(SUM(completed_at IS NULL AND excluded IS NULL AND EXISTS (
                      SELECT 1 FROM answers a WHERE a.participant = p.id AND NOT a.is_check)), 0),
                  COALESCE(SUM(completed_at IS NOT NULL AND EXISTS (
                      SELECT 1 FROM answers a WHERE a.participant = p.id AND a.passed = 0)), 0)
           FROM participants p""",
        {"comprehension": COMPREHENSION},
    ).fetchone()
    consented, passed, failed, started, completed, partial, inattentive = row
    return {
        "consented": consented, "comprehension_passed": passed, "comprehension_failed": failed,
        "started_tasks": started, "completed": completed, "abandoned": consented - completed - failed,
        "abandoned_answered": partial, "failed_attention_check": inattentive, "analysed": completed + partial,
        "excluded": {COMPREHENSION: failed},
    }
