"""The study's answers in SQLite: `runs/<name>/study/study.db`.

Durability: WAL journal. An answer's transaction commits with `synchronous=FULL` (the WAL is
fsynced), and the server acknowledges the answer only after that, so acknowledged answers survive
even a power cut. Other writes (sessions, reservations, "shown" times) commit with NORMAL: they reach
the operating system at once, so a killed server (even SIGKILL) keeps them, and the next answer's
fsync makes everything before it durable too, as the WAL is written in order. This halves the
fsyncs per task (one, not two), which bound the throughput (a few ms each on a virtual disk).

Idempotency: each answer carries a submission id (UNIQUE); a retried submission finds its row and
gets the same acknowledgement without a second row. UNIQUE(participant, position) and
UNIQUE(participant, stimulus) make a second answer to one task, or one stimulus shown to a
participant twice, impossible whatever the code above does.

Participants: besides their session and times, the comprehension check (attempts, when passed,
`excluded` and why: a participant excluded never gets tasks again) and the platform's ids (study,
session, MTurk's server to submit to). The study's first answer writes the frozen pre-registration's
hash into `meta` in its own transaction (`at_first_answer`).

One connection behind a lock: writes are serialised anyway by SQLite, and a Python lock costs less
than SQLite's busy-wait when the server's threads contend.

Copies: while the server runs (and after it is killed) recent answers sit in `study.db-wal`, so
`study.db` alone is not the study. The store records its state in `meta`: `serving` from the moment
it opens (checkpointed into study.db at once) and `closed` when it closes, after which it moves the
whole WAL into study.db (`wal_checkpoint(TRUNCATE)`). Hence the rule `read_only` applies: a database
in WAL mode (header bytes 18/19 = 2) without its -wal file is whole only when it says `closed`; one
that says `serving` (or nothing: older or foreign) may have been copied while a server ran or after
one was killed, and is refused rather than read as a study with fewer answers. The rule errs on the
safe side once: another SQLite program that opened the database after a crash merged and removed
the -wal, so the file is whole but still says `serving`; starting and stopping the server once (it
only warns) marks it closed. `read_only` opens a database without writing to it or beside it, so
the export and the crowd stage work on a read-only copy of the study folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prunexplain.errors import UserError
from prunexplain.runs import fault_point
from prunexplain.study.server.assign import Planned
from prunexplain.study.server.flow import COMPREHENSION, participant_flow

log = logging.getLogger(__name__)

# meta 'state': what study.db alone says about its -wal (see the module's docstring)
SERVING, CLOSED = "serving", "closed"
_TABLES = ("meta", "participants", "tasks", "answers")
_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS participants (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    session TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    completed_at REAL,
    binding TEXT,
    started_at REAL,
    comprehension_attempts INTEGER NOT NULL DEFAULT 0,
    comprehension_passed_at REAL,
    excluded TEXT,
    study_id TEXT,
    session_id TEXT,
    submit_to TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    participant TEXT NOT NULL REFERENCES participants(id),
    position INTEGER NOT NULL,
    experiment TEXT NOT NULL,
    stimulus TEXT NOT NULL,
    check_answer TEXT,
    reserved_at REAL NOT NULL,
    shown_at REAL,
    PRIMARY KEY (participant, position),
    UNIQUE (participant, stimulus)
);
CREATE INDEX IF NOT EXISTS tasks_by_stimulus ON tasks(stimulus);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    submission TEXT NOT NULL UNIQUE,
    participant TEXT NOT NULL,
    position INTEGER NOT NULL,
    experiment TEXT NOT NULL,
    stimulus TEXT NOT NULL,
    answer TEXT NOT NULL,
    is_check INTEGER NOT NULL,
    passed INTEGER,
    shown_at REAL NOT NULL,
    answered_at REAL NOT NULL,
    UNIQUE (participant, position),
    UNIQUE (participant, stimulus),
    FOREIGN KEY (participant, position) REFERENCES tasks(participant, position)
);
"""


# Columns added after the first release, with how to fill them in older databases.
_ADDED = {
    "binding": ("TEXT", None),
    "started_at": ("REAL", "(SELECT MIN(shown_at) FROM tasks t WHERE t.participant = participants.id)"),
    "comprehension_attempts": ("INTEGER NOT NULL DEFAULT 0", None),
    "comprehension_passed_at": ("REAL", None),
    "excluded": ("TEXT", None),  # why the participant may not answer (flow.COMPREHENSION); NULL: may
    "study_id": ("TEXT", None),  # MTurk hitId, Prolific STUDY_ID
    "session_id": ("TEXT", None),  # MTurk assignmentId, Prolific SESSION_ID
    "submit_to": ("TEXT", None),  # MTurk's checked turkSubmitTo origin (ExternalQuestion HITs)
}
COMPREHENSION_TRIES = 2

# A task holds its stimulus while the participant is in the study: `reservation_minutes` from consent
# once they have seen a task, only `start_minutes` for one who never opened a task (consents made to
# lock the study, or people who left at the instructions). Parameters: (:held, :unstarted) cutoffs.
_HOLDS = "((t.reserved_at > :held AND p.started_at IS NOT NULL) OR t.reserved_at > :unstarted)"


class Refused(Exception):
    """A request the store turns down; `status` is the HTTP status the app answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Task:
    participant: str
    position: int
    total: int
    number: int  # 1-based place among the participant's tasks (positions may have gaps, see `release`)
    experiment: str
    stimulus: str
    check_answer: str | None


@dataclass(frozen=True)
class Ack:
    """What the server tells a participant about one submission; a retry gets the same one."""

    status: str  # stored | duplicate
    position: int
    done: bool


@dataclass(frozen=True)
class Session:
    """A participant's new session token; `resumed` when the participant was already in the study."""

    token: str
    resumed: bool


@dataclass(frozen=True)
class Standing:
    """What the app needs to know about the participant of a session, read in one query."""

    id: str
    source: str
    started: bool  # has opened a task
    passed: bool  # passed the comprehension check
    attempts: int  # comprehension attempts so far
    excluded: str | None  # why they may not answer, e.g. flow.COMPREHENSION
    submit_to: str | None  # MTurk's server to post the code to (ExternalQuestion HITs)
    session_id: str | None  # the platform's session: MTurk's assignmentId, Prolific's SESSION_ID


@dataclass(frozen=True)
class Platform:
    """The platform's ids a participant came with: `study` (MTurk hitId, Prolific STUDY_ID), `session`
    (MTurk assignmentId, Prolific SESSION_ID), `submit_to` (MTurk's checked turkSubmitTo)."""

    study: str | None = None
    session: str | None = None
    submit_to: str | None = None


@dataclass(frozen=True)
class Holds:
    """Seconds a reservation holds after consent: for participants who have seen a task, and for
    those who have not (yet)."""

    started: float
    unstarted: float

    def cutoffs(self, now: float) -> dict[str, float]:
        return {"held": now - self.started, "unstarted": now - self.unstarted}


def _digest(token: str) -> str:
    """Session tokens are kept hashed: a copy of study.db does not let anyone act as a participant."""
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """The study database; open it with `with Store(path) as store:` so it is always closed."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time,
                 at_first_answer: dict[str, str] | None = None) -> None:
        """`at_first_answer`: meta entries written in the transaction of the study's first answer
        (the frozen pre-registration's hash), when the database has no answer yet."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_existing(self.path)
        if not self.path.exists():  # it holds the study's secret: private, as its -wal and -shm files
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._stored = 0  # answers this process stored: the fault-injection point `answer:<n>` counts them
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            _add_columns(db)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(32),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('state', ?)", (SERVING,))
            first = db.execute("SELECT 1 FROM answers LIMIT 1").fetchone() is None
        self._at_first_answer = dict(at_first_answer or {}) if first else {}
        with self._lock:  # study.db itself must say 'serving' before any answer goes into the WAL
            self._checkpoint()
        _make_private(self.path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Record a clean shutdown and move the WAL into study.db, so the file alone is the whole study."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('state', ?)", (CLOSED,))
                self._checkpoint()
            finally:
                self._db.close()

    def _checkpoint(self) -> None:
        """Copy the WAL into study.db and empty it (the caller holds the lock). A reader holding an
        old snapshot can stop it short: study.db then still says 'serving' at close, which errs on
        the safe side; at open it would keep an old 'closed', hence the warning."""
        busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("%s: another connection kept the WAL from being checkpointed; copy the database "
                        "together with its -wal file", self.path)

    @contextlib.contextmanager
    def _transaction(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock before reading what it decides on.
        `durable`: the commit returns only once the WAL is on disk."""
        with self._lock:
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (a full disk) may leave it open
                    self._db.execute("ROLLBACK")
                raise
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def _read(self, sql: str, params: tuple | dict = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @property
    def secret(self) -> bytes:
        """Per-study secret: keys of stimulus URLs and per-participant completion codes derive from it."""
        return bytes.fromhex(self._read("SELECT value FROM meta WHERE key = 'secret'")[0][0])

    def integrity(self) -> str:
        return self._read("PRAGMA integrity_check")[0][0]

    # --- participants -------------------------------------------------------------------------

    def session_participant(self, token: str | None) -> str | None:
        if not token:
            return None
        rows = self._read("SELECT id FROM participants WHERE session = ?", (_digest(token),))
        return rows[0][0] if rows else None

    def standing(self, token: str | None) -> Standing | None:
        """The participant whose session `token` is, with what decides which pages they may see."""
        if not token:
            return None
        rows = self._read(
            """SELECT id, source, started_at IS NOT NULL, comprehension_passed_at IS NOT NULL,
                      comprehension_attempts, excluded, submit_to, session_id FROM participants WHERE session = ?""",
            (_digest(token),))
        return _standing(rows[0]) if rows else None

    def known(self, participant: str) -> bool:
        return bool(self._read("SELECT 1 FROM participants WHERE id = ?", (participant,)))

    def start(
        self, participant: str, source: str, plan: Callable[[dict[str, int]], list[Planned]], holds: Holds,
        binding: str | None = None, trusted: bool = False, platform: Platform = Platform(),
    ) -> Session | None:
        """Begin a participant's session, or resume it; None when no stimulus is left to give out.

        Resuming a known id needs proof that it is the same person: `trusted` (the app saw their
        session cookie or resume code) or the platform `binding` their first consent came with
        (MTurk's assignment, Prolific's session); otherwise Refused(409), so knowing someone's id is
        not enough to take over their session. Refused(503) when every free place is only held by
        open reservations. Tasks are reserved in the same transaction that counts loads. The
        `platform` ids are recorded at the first consent; a resumed session fills only those missing."""
        token, now = secrets.token_urlsafe(24), self._clock()
        bound = _digest(binding) if binding else None
        with self._transaction() as db:
            row = db.execute("SELECT binding FROM participants WHERE id = ?", (participant,)).fetchone()
            if row is not None:
                if not (trusted or (row[0] is not None and row[0] == bound)):
                    raise Refused(409, "this participant id is already taking part in another browser")
                db.execute(
                    """UPDATE participants SET session = ?, study_id = COALESCE(study_id, ?),
                       session_id = COALESCE(session_id, ?), submit_to = COALESCE(submit_to, ?) WHERE id = ?""",
                    (_digest(token), platform.study, platform.session, platform.submit_to, participant))
                return Session(token, resumed=True)
            tasks = plan(self._loads(db, holds.cutoffs(now)))
            if not tasks:
                if plan(self._loads(db, {"held": math.inf, "unstarted": math.inf})):
                    raise Refused(503, "every free picture is reserved by people taking part right now")
                return None
            db.execute(
                "INSERT INTO participants (id, source, session, created_at, binding, study_id, session_id, submit_to) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (participant, source, _digest(token), now, bound, platform.study, platform.session, platform.submit_to),
            )
            db.executemany(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, NULL)",
                [(participant, i, t.experiment, t.stimulus, t.check_answer, now) for i, t in enumerate(tasks)],
            )
        return Session(token, resumed=False)

    @staticmethod
    def _loads(db: sqlite3.Connection, cutoffs: dict[str, float]) -> dict[str, int]:
        """Per stimulus: answers given plus reservations that still hold (checks not counted)."""
        rows = db.execute(
            f"""SELECT t.stimulus, COUNT(*) FROM tasks t JOIN participants p ON p.id = t.participant
               LEFT JOIN answers a ON a.participant = t.participant AND a.position = t.position
               WHERE t.check_answer IS NULL AND (a.id IS NOT NULL OR {_HOLDS})
               GROUP BY t.stimulus""",
            cutoffs,
        )
        return dict(rows.fetchall())

    def holds_places(self, participant: str, holds: Holds) -> bool:
        """Whether the participant is unfinished and their reservations still hold."""
        rows = self._read(
            f"""SELECT 1 FROM participants p JOIN tasks t ON t.participant = p.id
                WHERE p.id = :id AND p.completed_at IS NULL AND {_HOLDS} LIMIT 1""",
            {"id": participant, **holds.cutoffs(self._clock())},
        )
        return bool(rows)

    def release(self, served: set[str]) -> int:
        """Give back the unanswered tasks whose stimulus is not served (an experiment left out at a
        restart, a stimulus gone from the manifest), so nobody is stuck on a task the server cannot
        show. A participant left with nothing to answer has finished if they answered anything (they
        did all the study still asks of them) and is forgotten otherwise (they start afresh).
        Returns the number of tasks released; answers are never touched."""
        now = self._clock()
        with self._transaction() as db:
            open_tasks = db.execute(
                """SELECT t.participant, t.position, t.stimulus FROM tasks t WHERE NOT EXISTS (
                       SELECT 1 FROM answers a WHERE a.participant = t.participant AND a.position = t.position)"""
            ).fetchall()
            gone = [(participant, position) for participant, position, stimulus in open_tasks if stimulus not in served]
            db.executemany("DELETE FROM tasks WHERE participant = ? AND position = ?", gone)
            for participant in {participant for participant, _ in gone}:
                if self._first_open(db, participant) is not None:
                    continue
                if db.execute("SELECT 1 FROM answers WHERE participant = ?", (participant,)).fetchone():
                    db.execute("UPDATE participants SET completed_at = ? WHERE id = ?", (now, participant))
                else:
                    db.execute("DELETE FROM participants WHERE id = ?", (participant,))
        return len(gone)

    def comprehension(self, participant: str, passed: bool) -> Standing:
        """Record one attempt at the comprehension check. The COMPREHENSION_TRIES-th failed attempt
        excludes the participant (flow.COMPREHENSION) and gives their unanswered tasks back at once,
        so others get those stimuli. An attempt after passing, or after exclusion, changes nothing."""
        now = self._clock()
        with self._transaction() as db:
            attempts, done, excluded = db.execute(
                "SELECT comprehension_attempts, comprehension_passed_at IS NOT NULL, excluded FROM participants "
                "WHERE id = ?", (participant,)).fetchone()
            if not done and excluded is None:
                attempts += 1
                if passed:
                    db.execute("UPDATE participants SET comprehension_attempts = ?, comprehension_passed_at = ? "
                               "WHERE id = ?", (attempts, now, participant))
                elif attempts >= COMPREHENSION_TRIES:
                    db.execute("UPDATE participants SET comprehension_attempts = ?, excluded = ? WHERE id = ?",
                               (attempts, COMPREHENSION, participant))
                    released = db.execute(
                        """DELETE FROM tasks WHERE participant = ? AND NOT EXISTS (SELECT 1 FROM answers a
                           WHERE a.participant = tasks.participant AND a.position = tasks.position)""",
                        (participant,)).rowcount
                    log.info("participant %r failed the comprehension check; released %d tasks", participant,
                             released)
                else:
                    db.execute("UPDATE participants SET comprehension_attempts = ? WHERE id = ?",
                               (attempts, participant))
            row = db.execute(
                """SELECT id, source, started_at IS NOT NULL, comprehension_passed_at IS NOT NULL,
                          comprehension_attempts, excluded, submit_to, session_id FROM participants WHERE id = ?""",
                (participant,)).fetchone()
        return _standing(row)

    # --- tasks and answers --------------------------------------------------------------------

    def current(self, participant: str) -> Task | None:
        """The participant's first unanswered task (None when all are answered); marks it shown."""
        with self._transaction() as db:
            row = self._first_open(db, participant)
            if row is None:
                return None
            position, experiment, stimulus, check_answer, shown_at = row
            if shown_at is None:
                now = self._clock()
                db.execute("UPDATE tasks SET shown_at = ? WHERE participant = ? AND position = ?",
                           (now, participant, position))
                db.execute("UPDATE participants SET started_at = ? WHERE id = ? AND started_at IS NULL",
                           (now, participant))
            total, number = db.execute(
                "SELECT COUNT(*), SUM(position <= ?) FROM tasks WHERE participant = ?", (position, participant)
            ).fetchone()
        return Task(participant, position, total, number, experiment, stimulus, check_answer)

    @staticmethod
    def _first_open(db: sqlite3.Connection, participant: str) -> tuple | None:
        return db.execute(
            """SELECT t.position, t.experiment, t.stimulus, t.check_answer, t.shown_at FROM tasks t
               WHERE t.participant = ? AND NOT EXISTS (
                   SELECT 1 FROM answers a WHERE a.participant = t.participant AND a.position = t.position)
               ORDER BY t.position LIMIT 1""",
            (participant,),
        ).fetchone()

    def record(
        self, participant: str, submission: str, position: int, answer: str, options: Callable[[str], tuple[str, ...]]
    ) -> Ack:
        """Store one answer in one transaction, or refuse it; a known submission id is acknowledged again."""
        with self._transaction(durable=True) as db:
            seen = db.execute(
                "SELECT participant, position FROM answers WHERE submission = ?", (submission,)
            ).fetchone()
            if seen is not None:
                if seen[0] != participant:
                    raise Refused(409, "this submission id belongs to another participant")
                return Ack("duplicate", seen[1], self._first_open(db, participant) is None)
            task = db.execute(
                "SELECT experiment, stimulus, check_answer, shown_at, reserved_at FROM tasks "
                "WHERE participant = ? AND position = ?",
                (participant, position),
            ).fetchone()
            if task is None:
                raise Refused(404, f"you have no task {position}")
            experiment, stimulus, check_answer, shown_at, reserved_at = task
            if answer not in options(experiment):
                raise Refused(422, f"{answer!r} is not an answer of this task")
            current = self._first_open(db, participant)
            if current is None or current[0] > position:
                raise Refused(409, f"task {position} is already answered")
            if current[0] != position:
                raise Refused(409, f"answer task {current[0]} first")
            now = self._clock()
            passed = None if check_answer is None else int(answer == check_answer)
            db.execute(
                "INSERT INTO answers (submission, participant, position, experiment, stimulus, answer, is_check, "
                "passed, shown_at, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (submission, participant, position, experiment, stimulus, answer, int(check_answer is not None),
                 passed, shown_at or reserved_at, now),
            )
            first = self._at_first_answer
            if first:  # the study's first answer: what it was collected under
                db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", list(first.items()))
            done = self._first_open(db, participant) is None
            if done:
                db.execute("UPDATE participants SET completed_at = ? WHERE id = ?", (now, participant))
        self._at_first_answer = {}
        self._stored += 1
        fault_point(f"answer:{self._stored}")  # committed, not yet acknowledged
        return Ack("stored", position, done)

    def experiments_of(self, participant: str) -> list[str]:
        rows = self._read("SELECT DISTINCT experiment FROM tasks WHERE participant = ?", (participant,))
        return [row[0] for row in rows]

    def is_done(self, participant: str) -> bool:
        rows = self._read("SELECT completed_at FROM participants WHERE id = ?", (participant,))
        return bool(rows) and rows[0][0] is not None

    # --- admin and export ---------------------------------------------------------------------

    def stimulus_progress(self, holds: Holds) -> dict[str, tuple[int, int]]:
        """Per stimulus with any task: (answers, open reservations that still hold)."""
        rows = self._read(
            f"""SELECT t.stimulus, COUNT(a.id), SUM(a.id IS NULL AND {_HOLDS}) FROM tasks t
               JOIN participants p ON p.id = t.participant
               LEFT JOIN answers a ON a.participant = t.participant AND a.position = t.position
               WHERE t.check_answer IS NULL GROUP BY t.stimulus""",
            holds.cutoffs(self._clock()),
        )
        return {stimulus: (answers, held or 0) for stimulus, answers, held in rows}

    def participant_progress(self) -> list[dict]:
        """One dict per participant: id, source, times, tasks, answered, checks, checks_passed,
        comprehension attempts, whether they passed it, why they are excluded (None: they are not)."""
        rows = self._read(
            """SELECT p.id, p.source, p.created_at, p.completed_at,
                      (SELECT COUNT(*) FROM tasks t WHERE t.participant = p.id),
                      (SELECT COUNT(*) FROM answers a WHERE a.participant = p.id),
                      (SELECT COUNT(*) FROM answers a WHERE a.participant = p.id AND a.is_check),
                      (SELECT COUNT(*) FROM answers a WHERE a.participant = p.id AND a.passed = 1),
                      p.comprehension_attempts, p.comprehension_passed_at IS NOT NULL, p.excluded
               FROM participants p ORDER BY p.created_at"""
        )
        keys = ("id", "source", "created_at", "completed_at", "tasks", "answered", "checks", "checks_passed",
                "comprehension_attempts", "comprehension_passed", "excluded")
        return [dict(zip(keys, row)) for row in rows]

    def flow(self) -> dict:
        """The participant flow (flow.participant_flow)."""
        with self._lock:
            return participant_flow(self._db)

    def answer_rows(self) -> list[dict]:
        """Every answer with what the export needs about its participant."""
        with self._lock:
            return _answer_rows(self._db)


def _standing(row: tuple) -> Standing:
    participant, source, started, passed, attempts, excluded, submit_to, session_id = row
    return Standing(participant, source, bool(started), bool(passed), attempts, excluded, submit_to, session_id)


def _add_columns(db: sqlite3.Connection) -> None:
    """Bring a database written by an older server up to the current participants table."""
    present = {row[1] for row in db.execute("PRAGMA table_info(participants)")}
    for name, (kind, fill) in _ADDED.items():
        if name not in present:
            db.execute(f"ALTER TABLE participants ADD COLUMN {name} {kind}")
            if fill:
                db.execute(f"UPDATE participants SET {name} = {fill}")


def _make_private(database: Path) -> None:
    """study.db and its -wal and -shm hold the study's secret and every answer: owner only, also
    when an older version or a copy left them readable by others."""
    for path in (database, _beside(database, "-wal"), _beside(database, "-shm")):
        if path.is_file() and path.stat().st_mode & 0o077:
            log.warning("%s was readable by others; set its mode to 0600", path)
            path.chmod(0o600)


def _answer_rows(db: sqlite3.Connection) -> list[dict]:
    rows = db.execute(
        """SELECT a.participant, a.position, a.experiment, a.stimulus, a.answer, t.check_answer, a.passed,
                  a.shown_at, a.answered_at, a.submission, p.completed_at IS NOT NULL,
                  (SELECT COUNT(*) FROM answers c WHERE c.participant = a.participant AND c.passed = 0),
                  p.source, p.study_id, p.session_id
           FROM answers a JOIN participants p ON p.id = a.participant
           JOIN tasks t ON t.participant = a.participant AND t.position = a.position ORDER BY a.id"""
    ).fetchall()
    keys = ("participant", "position", "experiment", "stimulus", "answer", "check_answer", "passed", "shown_at",
            "answered_at", "submission", "completed", "checks_failed", "source", "study_id", "session_id")
    return [dict(zip(keys, row)) for row in rows]


# --- reading a database (or a copy of one) without writing ----------------------------------------


def check_existing(path: Path) -> None:
    """Before a server adds to `path`: anything there must be a whole study database (or an empty
    file), so it never writes its schema into a foreign file or carries on from a WAL-less copy."""
    path = Path(path)
    if os.path.lexists(path) and not (path.is_file() and path.stat().st_size == 0):
        with read_only(path, whole=False):
            pass


def read_answers(path: Path) -> list[dict]:
    """Every answer of the study database at `path` (as `Store.answer_rows`), read only."""
    with read_only(path) as db:
        return _answer_rows(db)


def read_flow(path: Path) -> dict:
    """The participant flow of the study database at `path` (flow.participant_flow), read only."""
    with read_only(path) as db:
        return participant_flow(db)


def read_export(path: Path) -> tuple[list[dict], dict]:
    """Every answer and the participant flow, read only from one snapshot (a running server may
    add answers meanwhile: the flow counts the same participants the answers come from)."""
    with read_only(path) as db:
        db.execute("BEGIN")
        try:
            return _answer_rows(db), participant_flow(db)
        finally:
            db.execute("ROLLBACK")


def recorded(path: Path) -> tuple[int, dict[str, str]]:
    """(answers, meta table) of the study database a server is about to carry on from, read only and
    checked as `check_existing` does; (0, {}) when there is none yet (no file, or an empty one)."""
    path = Path(path)
    if not os.path.lexists(path) or (path.is_file() and path.stat().st_size == 0):
        return 0, {}
    with read_only(path, whole=False) as db:
        answers = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        return answers, dict(db.execute("SELECT key, value FROM meta").fetchall())


@contextlib.contextmanager
def read_only(path: Path, whole: bool = True) -> Iterator[sqlite3.Connection]:
    """The study database at `path`, opened without writing to it or creating files beside it; a
    file that is not a whole study database is a UserError naming it: missing, not a file (a
    directory, a dangling link), empty, not SQLite, corrupt, without the study's tables, or in WAL
    mode without its -wal while not closed by the server (the rule in the module's docstring; with
    `whole` False only a warning, for a server that carries on from such a file deliberately)."""
    path = Path(path)
    real = _regular_file(path)
    wal_mode = 2 in _header(real, path)[18:20]  # the file format's write/read versions: 2 is WAL
    wal = _beside(real, "-wal")
    if os.path.lexists(wal) and not wal.is_file():
        raise UserError(f"{wal}: not a file; a database's -wal must be a plain file")
    try:
        with _connect(real) as db:
            _check_tables(db, path)
            if wal_mode and not wal.exists() and not _closed(db):
                if whole:
                    raise UserError(_UNCLOSED.format(path=path, wal=wal.name))
                log.warning("%s: no %s beside it and no server closed it; if it is a copy made while a server ran, "
                            "it lacks the answers given since the last checkpoint", path, wal.name)
            _check_integrity(db, path)
            yield db
    except sqlite3.DatabaseError as error:
        raise UserError(f"{path}: not a readable SQLite database ({error})") from None


def _beside(path: Path, suffix: str) -> Path:
    """SQLite's companion file of a database: -wal or -shm."""
    return path.with_name(path.name + suffix)


def _regular_file(path: Path) -> Path:
    """The file `path` names (links followed, as SQLite follows them), or a UserError saying what it is."""
    if not os.path.lexists(path):
        raise UserError(f"{path}: no such file")
    if path.is_symlink() and not path.exists():
        raise UserError(f"{path}: a link to {os.readlink(path)}, which does not exist")
    if not path.is_file():
        raise UserError(f"{path}: not a file (a directory?); it should be the study's SQLite database")
    return path.resolve()


def _header(real: Path, path: Path) -> bytes:
    try:
        with open(real, "rb") as handle:
            header = handle.read(100)
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    if not header:
        raise UserError(f"{path}: empty file; it should be the study's SQLite database")
    if len(header) < 100 or not header.startswith(_MAGIC):
        raise UserError(f"{path}: not an SQLite database")
    return header


@contextlib.contextmanager
def _connect(real: Path) -> Iterator[sqlite3.Connection]:
    """Open read-only, measured on a read-only folder (SQLite 3.40):
    - no -wal: `immutable=1`, the only way that needs no -shm (`mode=ro` alone creates one, or fails);
    - -wal and -shm: `mode=ro` in place, which also sees a running server's latest answers (SQLite may
      rewrite the -shm, its index of the -wal, which holds no data);
    - -wal without -shm (a copy): a private temporary copy of both, since in place `mode=ro` would
      create the -shm (or fail in a read-only folder) and `immutable=1` ignores the -wal, answers and all.
    No server holds a database without its -shm, so that copy cannot catch one mid-write."""
    wal, shm = _beside(real, "-wal"), _beside(real, "-shm")
    with contextlib.ExitStack() as stack:
        if not wal.exists():
            uri = f"{real.as_uri()}?mode=ro&immutable=1"
        elif shm.exists():
            uri = f"{real.as_uri()}?mode=ro"
        else:
            copy = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prunexplain-db-"))) / real.name
            shutil.copyfile(real, copy)
            shutil.copyfile(wal, _beside(copy, "-wal"))
            uri = f"{copy.as_uri()}?mode=ro"
        db = stack.enter_context(contextlib.closing(sqlite3.connect(uri, uri=True)))
        yield db


def _check_tables(db: sqlite3.Connection, path: Path) -> None:
    found = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = [table for table in _TABLES if table not in found]
    if missing:
        raise UserError(f"{path}: an SQLite database, but not the study's (no table {', '.join(missing)})")


_UNCLOSED = (
    "{path}: no {wal} beside it and no server closed it (copied while one ran, or after one was killed), so answers "
    "may be missing; copy {wal} with it, or if nothing is missing start and stop `prunexplain study serve` once"
)


def _closed(db: sqlite3.Connection) -> bool:
    """study.db says a server closed it last (after moving its whole WAL into it)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    return row is not None and row[0] == CLOSED


def _check_integrity(db: sqlite3.Connection, path: Path) -> None:
    result = db.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise UserError(f"{path}: corrupt SQLite database ({result})")
