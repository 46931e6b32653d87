"""The study server's HTTP behaviour through FastAPI's TestClient: sessions, answers, admin, safety."""

import os
import sqlite3
import uuid

import pytest
from fastapi.testclient import TestClient
from serverkit import TOKEN, answer_all, browser, build_study, join, task_form

from prunexplain.config import ServeSettings, UserError
from prunexplain.study.server import admin
from prunexplain.study.server.app import create_app
from prunexplain.study.server.security import completion_code

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _rows(study_dir, sql="SELECT participant, position, answer FROM answers"):
    with sqlite3.connect(study_dir / "study.db") as db:
        return db.execute(sql).fetchall()


def _post(client, position, answer, submission=None):
    body = {"submission_id": str(submission or uuid.uuid4()), "position": position, "answer": answer}
    return client.post("/api/answers", json=body)


def test_a_participant_consents_answers_everything_and_gets_the_code(make_client, study_dir):
    client = make_client(tasks_per_participant=4, attention_checks=1)
    page = client.get("/?workerId=W1")
    assert page.status_code == 200 and 'name="participant" value="W1"' in page.text and 'value="mturk"' in page.text
    consent = join(client, "W1")
    assert consent.status_code == 303 and consent.headers["location"] == "/instructions"
    assert "httponly" in consent.headers["set-cookie"].lower()
    assert "How it works" in client.get("/instructions").text
    posts = answer_all(client)
    assert [p.headers["location"] for p in posts] == ["/task"] * 4 + ["/done"]
    done = client.get("/done")
    code = completion_code(None, client.app.state.store.secret, "W1")
    assert f'id="completion-code">{code}<' in done.text and len(code) == 10
    assert [row[:2] for row in _rows(study_dir)] == [("W1", position) for position in range(5)]
    assert client.get("/", follow_redirects=True).url.path == "/done"  # coming back: the code again


def test_ids_come_from_the_url_or_are_generated(make_client, study_dir):
    client = make_client()
    assert 'value="prolific"' in client.get("/?PROLIFIC_PID=P77").text
    join(client, "")
    other = browser(client)
    join(other, "P77", "prolific")
    rows = dict(_rows(study_dir, "SELECT id, source FROM participants"))
    anonymous = [key for key in rows if key != "P77"]
    assert rows["P77"] == "prolific" and anonymous[0].startswith("anon-") and rows[anonymous[0]] == "generated"
    assert client.get("/?workerId=bad%0Aid").status_code == 422
    assert join(browser(client), "bad\nid").status_code == 422


def test_consent_is_required(make_client, study_dir):
    client = make_client()
    response = client.post("/consent", data={"participant": "W1", "source": "mturk"})
    assert response.status_code == 422 and "agree" in response.text
    assert _rows(study_dir, "SELECT * FROM participants") == []
    assert client.get("/task", follow_redirects=False).headers["location"] == "/"
    assert client.get("/api/task").status_code == 401
    assert _post(client, 0, "alg1").status_code == 401


@pytest.mark.parametrize("answer", ["alg3", "9-heart", "0-disk ", "ALG1", "x" * 65, ""])
def test_answers_outside_the_options_are_refused(make_client, study_dir, answer):
    client = make_client(experiments=["exp1"])
    join(client, "W1")
    assert _post(client, 0, answer).status_code == 422
    form = task_form(client.get("/task").text)
    data = {"submission_id": form["submission_id"], "position": form["position"], "answer": answer}
    response = client.post("/task", data=data)
    assert response.status_code == 422
    assert _rows(study_dir) == []


def test_malformed_submissions_are_refused(make_client, study_dir):
    client = make_client()
    join(client, "W1")
    assert client.post("/api/answers", json={"submission_id": "1", "position": 0, "answer": "none"}).status_code == 422
    assert _post(client, -1, "none").status_code == 422
    assert client.post("/api/answers", content=b"{", headers={"content-type": "application/json"}).status_code == 422
    assert _rows(study_dir) == []


def test_a_retried_submission_is_stored_once(make_client, study_dir):
    client = make_client(experiments=["exp1"])
    join(client, "W1")
    submission = uuid.uuid4()
    first, again = _post(client, 0, "alg2", submission), _post(client, 0, "alg2", submission)
    assert first.json() == {"status": "stored", "position": 0, "done": False}
    assert again.json() == {"status": "duplicate", "position": 0, "done": False}
    assert _post(client, 0, "alg1").status_code == 409  # the same task, another submission
    assert _post(client, 2, "alg1").status_code == 409  # skipping task 1
    assert _post(client, 99, "alg1").status_code == 404
    other = browser(client)
    join(other, "W2")
    assert _post(other, 0, "alg1", submission).status_code == 409  # someone else's submission id
    form = task_form(client.get("/task").text)
    data = {"submission_id": form["submission_id"], "position": form["position"], "answer": "none"}
    assert [client.post("/task", data=data, follow_redirects=False).status_code for _ in range(2)] == [303, 303]
    assert _rows(study_dir) == [("W1", 0, "alg2"), ("W1", 1, "none")]


def test_admin_needs_the_token_and_participants_never_see_admin_pages(make_client):
    client = make_client(attention_checks=1)
    join(client, "W1")
    answer_all(client)
    admin_paths = [route.path for route in admin.router.routes if "GET" in route.methods]
    assert {"/admin", "/admin/stimuli", "/admin/api/progress"} <= set(admin_paths)
    for path in admin_paths:
        assert client.get(path).status_code == 401  # a participant's session is no admin session
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert "W1" not in client.get(path).text
    progress = client.get("/admin/api/progress", headers=BEARER).json()
    assert progress["participants"] == {"started": 1, "completed": 1}
    assert progress["checks"]["answered"] == 1 and progress["participant_rows"][0]["id"] == "W1"
    assert sum(e["answers"] for e in progress["experiments"]) == 4
    manager = browser(client)
    assert manager.post("/admin/login", data={"token": "nope"}).status_code == 401
    assert manager.post("/admin/login", data={"token": TOKEN}).url.path == "/admin"
    overview = manager.get("/admin")
    assert overview.status_code == 200 and "<td>W1</td>" in overview.text
    assert manager.get("/admin/stimuli").text.count("<tr>") == 1 + 12 + 12


def test_the_api_gives_a_participant_only_their_own_task(make_client):
    client = make_client()
    join(client, "W1")
    _post(client, 0, client.get("/api/task").json()["options"][0])
    other = browser(client)
    join(other, "W2")
    task = other.get("/api/task").json()
    assert task["position"] == 0 and set(task) == {
        "done", "position", "total", "experiment", "question", "image", "check", "options"}
    for path in ("/api/task", "/task", "/instructions"):
        assert "W1" not in other.get(path).text


def test_attention_check_pass_rates(make_client):
    client = make_client(tasks_per_participant=2, attention_checks=1)
    for worker, follow in (("good", True), ("bad", False)):
        participant = browser(client)
        join(participant, worker)
        while not (task := participant.get("/api/task").json())["done"]:
            wrong = next(option for option in task["options"] if option != task["check"])
            answer = task["check"] if (task["check"] and follow) else wrong
            assert _post(participant, task["position"], answer).status_code == 200
    progress = client.get("/admin/api/progress", headers=BEARER).json()
    assert progress["checks"] == {"answered": 2, "passed": 1, "pass_rate": 0.5}
    assert {r["id"]: r["checks_passed"] for r in progress["participant_rows"]} == {"good": 1, "bad": 0}


def test_admin_token_file_is_created_private_and_the_variable_wins(study_dir, monkeypatch):
    monkeypatch.delenv("PRUNEXPLAIN_ADMIN_TOKEN", raising=False)
    app = create_app(study_dir, ServeSettings())
    path = study_dir / "admin_token"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert app.state.admin_token == path.read_text().strip() and len(app.state.admin_token) >= 40
    assert create_app(study_dir, ServeSettings()).state.admin_token == app.state.admin_token
    with TestClient(app):
        assert os.stat(study_dir / "study.db").st_mode & 0o777 == 0o600  # it holds the study's secret
    monkeypatch.setenv("PRUNEXPLAIN_ADMIN_TOKEN", "from-the-environment")
    assert create_app(study_dir, ServeSettings()).state.admin_token == "from-the-environment"


def test_ids_and_texts_are_escaped_on_every_page(make_client):
    client = make_client(tasks_per_participant=1)
    evil = "<script>alert('x')</script>&\"'"
    page = client.get("/", params={"workerId": evil})
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#34;&#39;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    join(client, evil)
    answer_all(client)
    for path in ("/admin", "/admin/stimuli"):
        text = client.get(path, headers=BEARER).text
        assert "<script>alert" not in text
    assert "&lt;script&gt;alert" in client.get("/admin", headers=BEARER).text


def test_stimuli_are_served_only_from_the_study_folder(make_client, study_dir, tmp_path):
    client = make_client(tasks_per_participant=1)
    join(client, "W1")
    image = client.get("/api/task").json()["image"]
    assert image.startswith("/stimuli/") and ".png" not in image  # opaque: the name would unblind exp1
    stimulus = client.app.state.store.current("W1").stimulus
    response = client.get(image)
    assert response.status_code == 200 and response.content == (study_dir / stimulus).read_bytes()
    assert browser(client).get(image).status_code == 404  # no session, no pictures
    for path in ("/stimuli/../study.db", "/stimuli/..%2Fstudy.db", "/stimuli/%2e%2e%2fmanifest.json",
                 f"/stimuli/{stimulus}", "/stimuli/admin_token", "/stimuli/..%2F..%2F..%2Fetc%2Fpasswd",
                 "/stimuli/%2Fetc%2Fpasswd"):
        response = client.get(path)
        assert response.status_code == 404 and b"root:" not in response.content and TOKEN not in response.text
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not for participants")
    (study_dir / stimulus).unlink()
    (study_dir / stimulus).symlink_to(outside)
    assert client.get(image).status_code == 404


def test_a_manifest_pointing_outside_the_folder_is_refused(tmp_path, admin_env):
    folder = build_study(tmp_path / "study")
    (tmp_path / "escape.png").write_bytes(b"x")
    text = (folder / "manifest.json").read_text().replace('"exp1/0_', '"../escape.png", "was": "exp1/0_', 1)
    (folder / "manifest.json").write_text(text)
    with pytest.raises(UserError, match=r"stimulus '\.\./escape\.png' is not an image file inside"):
        create_app(folder, ServeSettings())
    with pytest.raises(UserError, match="no experiment 'exp9'"):
        create_app(build_study(tmp_path / "other"), ServeSettings(experiments=["exp9"]))


def test_a_full_study_turns_new_participants_away(make_client, study_dir):
    client = make_client(experiments=["exp1"], tasks_per_participant=12, answers_per_stimulus=1)
    join(client, "first")
    busy = join(browser(client), "early")  # every place only reserved: come back later, not "finished"
    assert busy.status_code == 503 and "try again in about 10 minutes" in busy.text and busy.headers["retry-after"]
    answer_all(client)
    late = browser(client)
    response = join(late, "late")
    assert response.status_code == 200 and "enough answers" in response.text and "set-cookie" not in response.headers
    assert [row[0] for row in _rows(study_dir, "SELECT id FROM participants")] == ["first"]
