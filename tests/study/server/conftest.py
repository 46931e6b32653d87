"""Fixtures of the study-server tests: a hand-built study folder and in-process apps over it."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serverkit import TOKEN, build_study

from prunexplain.config import ServeSettings
from prunexplain.study.server.app import create_app


@pytest.fixture
def run_dir(tmp_path) -> Path:
    build_study(tmp_path / "runs" / "x" / "study")
    return tmp_path / "runs" / "x"


@pytest.fixture
def study_dir(run_dir) -> Path:
    return run_dir / "study"


@pytest.fixture
def admin_env(monkeypatch):
    monkeypatch.setenv("PRUNEXPLAIN_ADMIN_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
def make_client(study_dir, admin_env):
    """`make_client(clock=time.time, **settings)` -> a TestClient whose lifespan (the store) is open;
    `browser(client)` gives another participant's browser (its own cookies) on the same app."""
    stack = contextlib.ExitStack()

    def make(clock=time.time, **settings) -> TestClient:
        values = {"tasks_per_participant": 4, "attention_checks": 0, "answers_per_stimulus": 2, **settings}
        return stack.enter_context(TestClient(create_app(study_dir, ServeSettings(**values), clock=clock)))

    with stack:
        yield make


