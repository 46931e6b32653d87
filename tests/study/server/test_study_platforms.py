"""Prolific and MTurk around the self-hosted study: their ids recorded and exported, the completion URL,
an ExternalQuestion HIT (preview, MTurk's frame, the externalSubmit form) and its XML."""

import contextlib
import csv
import re
import sqlite3
import xml.etree.ElementTree as ElementTree

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from serverkit import answer_all, browser, pass_comprehension, task_form
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import ServeSettings
from prunexplain.study.server.export import export_study
from prunexplain.study.server.platforms import EXTERNAL_QUESTION_SCHEMA, external_question, submit_origin
from prunexplain.study.server.security import completion_code

MTURK_LINK = "/?workerId=W1&assignmentId=A1&hitId=H1&turkSubmitTo=https%3A%2F%2Fworkersandbox.mturk.com"


def _participants(study_dir):
    if not (study_dir / "study.db").exists():
        return []
    with contextlib.closing(sqlite3.connect(study_dir / "study.db")) as db:
        return db.execute("SELECT id, source, study_id, session_id, submit_to FROM participants").fetchall()


def _consent_from_link(client, link: str):
    """Open the study link and send its consent form as a browser would."""
    form = task_form(client.get(link).text)
    del form["options"]
    return client.post("/consent", data={**form, "agree": "yes"}, follow_redirects=False)


def _exported(study_dir) -> list[dict]:
    rows = []
    for path in export_study(study_dir).files.values():
        with open(path, newline="") as handle:
            rows += [row for row in csv.DictReader(handle) if "Platform" in row]
    return rows


def test_prolific_ids_are_recorded_exported_and_the_code_goes_back(make_client, study_dir):
    url = "https://app.prolific.com/submissions/complete?cc={code}"
    client = make_client(completion_url=url)
    assert _consent_from_link(client, "/?PROLIFIC_PID=P1&STUDY_ID=S1&SESSION_ID=X1").status_code == 303
    assert pass_comprehension(client)
    answer_all(client)
    done = client.get("/done")
    code = completion_code(None, client.app.state.secret, "P1")
    target = f"https://app.prolific.com/submissions/complete?cc={code}"
    assert f'<meta http-equiv="refresh" content="5; url={target}">' in done.text
    assert f'href="{target}" id="completion-link"' in done.text and f'id="completion-code">{code}<' in done.text
    assert "frame-ancestors 'none'" in done.headers["content-security-policy"]  # not framed: the usual policy
    assert _participants(study_dir) == [("P1", "prolific", "S1", "X1", None)]
    rows = _exported(study_dir)
    assert rows and {(r["WorkerId"], r["Platform"], r["Platform.StudyId"], r["Platform.SessionId"]) for r in rows} == {
        ("P1", "prolific", "S1", "X1")}
    assert len({r["AssignmentId"] for r in rows}) == len(rows)  # still one assignment per answer


def test_a_fixed_code_goes_into_the_url_quoted(make_client):
    client = make_client(completion_url="https://example.org/done?cc={code}&x=1", completion_code="A B&C")
    client.post("/consent", data={"participant": "P2", "source": "prolific", "agree": "yes"})
    pass_comprehension(client)
    answer_all(client)
    assert 'url=https://example.org/done?cc=A%20B%26C&amp;x=1"' in client.get("/done").text


@pytest.mark.parametrize("url, problem", [
    ("ftp://example.org/{code}", "no http(s) URL"), ("https:///nohost", "no http(s) URL"),
    ("https://example.org/?cc={code}&s={study}", "only {code} may stand in braces"),
    ("https://example.org/?cc={code!r}", "only {code} may stand in braces"),
])
def test_a_completion_url_is_checked(url, problem):
    with pytest.raises(ValidationError, match=re.escape(problem)):
        ServeSettings(completion_url=url)


def test_a_bad_completion_url_is_one_line_from_the_cli(run_dir):
    result = CliRunner().invoke(app, ["study", "serve", "--run", str(run_dir), "--completion-url", "ftp://x/{code}"])
    assert result.exit_code == 2 and "serve.completion_url" in result.output and result.output.count("\n") == 1
    assert ServeSettings(completion_url="https://example.org/done").completion_url == "https://example.org/done"


def test_an_mturk_preview_starts_nothing(make_client, study_dir):
    client = make_client(tasks_per_participant=7, attention_checks=2)
    page = client.get("/?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId=H1&turkSubmitTo=https://www.mturk.com")
    assert page.status_code == 200 and "(preview)" in page.text and "9 pictures" in page.text
    assert "Which algorithm is more reasonable?" in page.text and "What is on the picture?" in page.text
    assert "Algorithm 1 (left)" in page.text and "<form" not in page.text
    assert "set-cookie" not in page.headers and _participants(study_dir) == []
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors https://www.mturk.com https://worker.mturk.com https://workersandbox.mturk.com" in policy
    assert "x-frame-options" not in page.headers  # DENY would forbid MTurk's frame
    assert client.get("/api/task").status_code == 401 and client.get("/task", follow_redirects=False).headers[
        "location"] == "/"


def test_an_external_question_hit_runs_in_mturks_frame_and_submits_the_assignment(make_client, study_dir):
    app = make_client(completion_url="https://app.prolific.com/submissions/complete?cc={code}").app
    client = TestClient(app, base_url="https://testserver")  # the HIT's page is https
    page = client.get(MTURK_LINK)
    assert 'name="submit_to" value="https://workersandbox.mturk.com"' in page.text
    assert "frame-ancestors https://www.mturk.com" in page.headers["content-security-policy"]
    consent = _consent_from_link(client, MTURK_LINK)
    cookie = consent.headers["set-cookie"]
    assert all(part in cookie for part in ("HttpOnly", "SameSite=None", "Secure", "Partitioned"))
    assert _participants(study_dir) == [("W1", "mturk", "H1", "A1", "https://workersandbox.mturk.com")]
    assert "frame-ancestors https://www.mturk.com" in client.get("/instructions").headers["content-security-policy"]
    assert pass_comprehension(client)
    answer_all(client)
    done = client.get("/done")
    code = completion_code(None, client.app.state.secret, "W1")
    assert '<form method="post" action="https://workersandbox.mturk.com/mturk/externalSubmit" id="mturk-form">' in (
        done.text)
    assert '<input type="hidden" name="assignmentId" value="A1">' in done.text
    assert f'<input type="hidden" name="code" value="{code}">' in done.text
    assert "http-equiv" not in done.text and "prolific" not in done.text  # the HIT is submitted, not left
    policy = done.headers["content-security-policy"]
    assert "form-action 'self' https://www.mturk.com https://worker.mturk.com https://workersandbox.mturk.com" in policy
    assert "x-frame-options" not in done.headers
    rows = _exported(study_dir)
    assert {(r["Platform"], r["Platform.StudyId"], r["Platform.SessionId"]) for r in rows} == {("mturk", "H1", "A1")}


@pytest.mark.parametrize("submit_to", ["https://evil.example", "http://www.mturk.com", "https://www.mturk.com.evil.example",
                                       "https://www.mturk.com/elsewhere", "https://user@www.mturk.com",
                                       "https://www.mturk.com:8443", "javascript:alert(1)"])
def test_a_foreign_turk_submit_to_is_ignored(make_client, study_dir, submit_to):
    assert submit_origin(submit_to) is None
    client = make_client()
    link = MTURK_LINK.replace("https%3A%2F%2Fworkersandbox.mturk.com", submit_to.replace("&", "%26"))
    page = client.get(link)
    assert 'name="submit_to" value=""' in page.text and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]
    form = {**task_form(page.text), "agree": "yes", "submit_to": submit_to}  # a forged form: ignored as well
    del form["options"]
    assert client.post("/consent", data=form, follow_redirects=False).status_code == 303
    pass_comprehension(client)
    answer_all(client)
    done = client.get("/done")
    assert "mturk-form" not in done.text and "completion-code" in done.text
    assert "frame-ancestors 'none'" in done.headers["content-security-policy"]
    assert _participants(study_dir)[0][4] is None


def test_the_sandbox_and_production_servers_are_taken():
    assert submit_origin("https://www.mturk.com/") == "https://www.mturk.com"
    assert submit_origin("https://workersandbox.mturk.com") == "https://workersandbox.mturk.com"


def test_the_external_question_xml():
    url = "https://study.example.org/?batch=1&x=<y>"
    xml = external_question(url, frame_height=800)
    root = ElementTree.fromstring(xml.encode())
    assert root.tag == f"{{{EXTERNAL_QUESTION_SCHEMA}}}ExternalQuestion"
    assert root.find(f"{{{EXTERNAL_QUESTION_SCHEMA}}}ExternalURL").text == url
    assert root.find(f"{{{EXTERNAL_QUESTION_SCHEMA}}}FrameHeight").text == "800"
    assert "&amp;x=&lt;y&gt;" in xml and external_question("https://a.example/").count("<FrameHeight>0<") == 1
    for bad, height in (("http://study.example.org/", 0), ("https:///x", 0), ("https://a.example/", -1)):
        with pytest.raises(ValueError):
            external_question(bad, height)


def test_a_second_browser_of_an_mturk_worker_keeps_the_first_ids(make_client, study_dir):
    client = make_client()
    _consent_from_link(client, "/?workerId=W2&assignmentId=A2&hitId=H2")
    other = browser(client)
    _consent_from_link(other, "/?workerId=W2&assignmentId=A2&hitId=H2")  # resumed by its binding
    assert _participants(study_dir) == [("W2", "mturk", "H2", "A2", None)]
