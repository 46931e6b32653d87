"""The run directory: where each stage reads and writes, with atomic writes and done-markers.

A file either exists whole or not at all (temp file in the same folder, fsync, rename), so a run
killed at any moment leaves nothing half-written. A stage that finished writes `<stage>/.done`
holding the fingerprint of its settings; `run` skips a stage whose marker matches.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

_DONE = ".done"


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: Path, value: Any) -> Path:
    return write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows of dicts with the same keys, header from the first row's keys."""
    with atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def write_with(path: Path, save: Callable[[IO[bytes]], None]) -> Path:
    """Atomic write through a library's save function that takes a binary file (torch.save, np.save)."""
    with atomic_open(path, "wb") as handle:
        save(handle)
    return Path(path)


def append_json_array(path: Path, item: Any) -> Path:
    """Append to a file that stays one valid JSON array (the study's results file was not)."""
    path = Path(path)
    items = json.loads(path.read_text()) if path.exists() else []
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON array")
    return write_json(path, [*items, item])


class Run:
    """One run directory, `runs/<name>/`; stages get their paths from here."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def is_done(self, stage: str, fingerprint: str) -> bool:
        marker = self.path(stage, _DONE)
        return marker.exists() and marker.read_text().strip() == fingerprint

    def mark_done(self, stage: str, fingerprint: str) -> None:
        write_text(self.path(stage, _DONE), fingerprint + "\n")

    def clear_done(self, stage: str) -> None:
        self.path(stage, _DONE).unlink(missing_ok=True)
