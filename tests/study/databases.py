"""Study databases for the crowd and export tests: answered through the real server and Store, copied
the ways people copy a study folder, and broken the ways a copy can be broken."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from fastapi.testclient import TestClient

from prunexplain.config import ServeSettings
from prunexplain.study.server.app import create_app
from prunexplain.study.server.store import Store
from tests.study.server.serverkit import answer_all, build_study, join

SERVE = ServeSettings(experiments=["exp1", "exp2"], tasks_per_participant=4, attention_checks=0)


def study_folder(folder: Path) -> Path:
    """serverkit's hand-built study, with the manifest keys the crowd stage also reads."""
    build_study(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "settings": {}, "files": {}}, indent=1))
    return folder


@contextlib.contextmanager
def serving(study_dir: Path, workers: int = 2) -> Iterator[TestClient]:
    """The study served in-process, with `workers` participants through every task; the store stays
    open (answers in the WAL) until the block ends, then closes as on a server's shutdown."""
    with TestClient(create_app(study_dir, SERVE)) as client:
        for n in range(workers):
            participant = TestClient(client.app)
            join(participant, f"w{n}")
            answer_all(participant)
        yield client


def copy_study(study_dir: Path, to: Path, database: tuple[str, ...] = ("study.db",)) -> Path:
    """The study folder without its database files, plus those named in `database`."""
    shutil.copytree(study_dir, to, ignore=shutil.ignore_patterns("study.db*"))
    for name in database:
        shutil.copy2(study_dir / name, to / name)
    return to


def count_answers(database: Path, with_wal: bool = True) -> int:
    """Answers SQLite finds in `database`, with its -wal or from the file alone (`immutable` skips the WAL)."""
    mode = "mode=ro" if with_wal else "mode=ro&immutable=1"
    with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?{mode}", uri=True)) as db:
        return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path, with its SHA-256 (links by their target)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _directory(path: Path) -> None:
    path.mkdir()


def _dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "gone.db")


def _foreign(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('not a study')")
        db.commit()


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _corrupt(path: Path) -> None:
    """A closed study database whose pages after the first are garbage: its header and table list
    still read, the tables do not."""
    Store(path).close()
    data = path.read_bytes()
    path.write_bytes(data[:4096] + os.urandom(len(data) - 4096))


BROKEN: dict[str, Callable[[Path], None]] = {
    "empty file": _empty, "directory": _directory, "dangling link": _dangling_link, "foreign SQLite file": _foreign,
    "random bytes": _random_bytes, "corrupt SQLite file": _corrupt,
}
