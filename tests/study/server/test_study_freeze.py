"""A frozen pre-registration holds the study server: changed before the first answer, it must be frozen
again; changed after it, the server refuses to collect; the first answer records what it was."""

import contextlib
import hashlib
import json
import sqlite3

import pytest
from fastapi.testclient import TestClient
from serverkit import join
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import ServeSettings, UserError
from prunexplain.study.server.app import PREREGISTERED, create_app

SETTINGS = ServeSettings(tasks_per_participant=2, attention_checks=0)


def _preregister(study_dir, text="# Plan\nHypothesis: pruned maps are as reasonable as dense ones.\n") -> str:
    path = study_dir / "preregistration.md"
    path.write_text(text)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = json.loads((study_dir / "manifest.json").read_text())
    manifest["preregistration"] = {"file": "preregistration.md", "sha256": digest, "frozen_at": "2026-01-01T00:00:00"}
    (study_dir / "manifest.json").write_text(json.dumps(manifest))
    return digest


def _answer_once(study_dir) -> None:
    with TestClient(create_app(study_dir, SETTINGS)) as client:
        join(client, "W1")
        task = client.get("/api/task").json()
        body = {"submission_id": "00000000-0000-4000-8000-000000000001", "position": task["position"],
                "answer": task["options"][0]}
        assert client.post("/api/answers", json=body).json()["status"] == "stored"


def _meta(study_dir) -> dict:
    with contextlib.closing(sqlite3.connect(study_dir / "study.db")) as db:
        return dict(db.execute("SELECT key, value FROM meta"))


def _serve(run_dir):
    return CliRunner().invoke(app, ["study", "serve", "--run", str(run_dir), "--port", "1"])


def test_a_changed_plan_stops_the_server_after_the_first_answer(run_dir, study_dir, admin_env):
    digest = _preregister(study_dir)
    with TestClient(create_app(study_dir, SETTINGS)) as client:  # consent only: nothing is answered yet
        join(client, "W0")
    assert PREREGISTERED not in _meta(study_dir)
    _answer_once(study_dir)
    assert _meta(study_dir)[PREREGISTERED] == digest  # recorded with the first answer
    create_app(study_dir, SETTINGS)  # unchanged: fine
    (study_dir / "preregistration.md").write_text("# Plan\nHypothesis: something else.\n")
    with pytest.raises(UserError, match="after the first answer; restore the pre-registered file"):
        create_app(study_dir, SETTINGS)
    result = _serve(run_dir)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: {study_dir / 'preregistration.md'}: changed (frozen SHA-256 {digest[:12]}")
    (study_dir / "preregistration.md").unlink()
    with pytest.raises(UserError, match="is gone after the first answer"):
        create_app(study_dir, SETTINGS)


def test_a_plan_frozen_again_after_the_first_answer_is_refused(run_dir, study_dir, admin_env):
    first = _preregister(study_dir)
    _answer_once(study_dir)
    _preregister(study_dir, "# Plan\nHypothesis: changed, and the hash with it.\n")  # file and manifest agree
    with pytest.raises(UserError, match=f"frozen again after the first answer \\(SHA-256 {first[:12]}"):
        create_app(study_dir, SETTINGS)
    result = _serve(run_dir)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "manifest.json" in result.output


def test_a_plan_changed_before_any_answer_must_be_frozen_again(run_dir, study_dir, admin_env):
    _preregister(study_dir)
    with TestClient(create_app(study_dir, SETTINGS)) as client:
        join(client, "W0")  # a consent is no answer
    (study_dir / "preregistration.md").write_text("# Plan, edited\n")
    result = _serve(run_dir)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "since it was frozen; run `prunexplain study preregister` again before collecting" in result.output
    _preregister(study_dir, "# Plan, edited\n")  # frozen again: the server starts
    with TestClient(create_app(study_dir, SETTINGS)) as client:
        assert client.get("/healthz").json() == {"ok": True}


def test_a_study_without_a_preregistration_records_none(study_dir, admin_env):
    _answer_once(study_dir)
    assert PREREGISTERED not in _meta(study_dir)
