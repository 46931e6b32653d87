"""A participant in headless Chromium against a real server: consent, instructions, the comprehension
check, keyboard and mouse answers, the completion code (and the way back to Prolific with it); then
the answers are looked up in the database."""

import contextlib
import http.server
import sqlite3
import threading
from urllib.parse import parse_qs, urlsplit

import httpx
from serverkit import TOKEN, answer_key, build_study, live_server

from benchmarks.bench_study_server import free_port
from prunexplain.study.server.catalog import load_study
from tests.browser import browser_page

# What the participant does on each task, in turn, and the answer that must get chosen: a key
# pressed, or a click on the option with that index; then Enter.
EXP2_MOVES = [("keys", "n", "none"), ("click", 1, "1-square"), ("keys", "2", "2-triangle")]
EXP1_MOVES = [("keys", "ArrowLeft", "alg1"), ("keys", "e", "none"), ("click", 2, "alg2"), ("keys", "2", "alg2")]


def test_a_participant_completes_the_study_in_a_real_browser(tmp_path):
    run_dir = tmp_path / "run"
    build_study(run_dir / "study", images=4)
    options = ("--tasks", "6", "--attention-checks", "1", "--no-comprehension")
    with live_server(run_dir, *options) as (base, _), browser_page() as page:
        problems = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"{base}/?workerId=BROWSER-1")
        assert page.inner_text("#participant-id") == "BROWSER-1"
        page.click("#consent-button")  # not agreed yet: the form does not go
        assert page.url.endswith("/?workerId=BROWSER-1")
        page.check("#agree")
        page.click("#consent-button")
        page.wait_for_url("**/instructions")
        assert "Compare two algorithms" in page.inner_text("main")
        page.click("#start")  # the comprehension check is off: straight to the tasks
        page.wait_for_url("**/task")
        given, used = _answer_tasks(page)
        page.wait_for_url("**/done")
        code = page.inner_text("#completion-code")
        assert problems == []  # no script errors, nothing blocked by the content security policy
        progress = httpx.get(f"{base}/admin/api/progress", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert progress["participant_rows"][0]["code"] == code and progress["checks"]["passed"] == 1
    with sqlite3.connect(run_dir / "study" / "study.db") as db:
        stored = db.execute("SELECT position, answer FROM answers WHERE participant = 'BROWSER-1' ORDER BY position")
        assert stored.fetchall() == given
    assert len(given) == 7 and {"exp1 keys", "exp1 click", "exp2 keys", "exp2 click", "check"} <= set(used)


def _answer_tasks(page) -> tuple[list[tuple[int, str]], list[str]]:
    """Answer every task as EXP2_MOVES / EXP1_MOVES say (the attention check by clicking what it
    asks for); returns (position, answer) as the page showed them checked before sending, and the
    kinds of move made."""
    given, used, moves = [], [], {"exp1": iter(EXP1_MOVES), "exp2": iter(EXP2_MOVES)}
    while "/task" in page.url:
        position = int(page.get_attribute("input[name=position]", "value"))
        assert page.eval_on_selector("img.stimulus", "img => img.complete && img.naturalWidth > 0")
        values = [radio.get_attribute("value") for radio in page.query_selector_all("input[name=answer]")]
        if page.query_selector("#check"):
            label = page.inner_text("#check").split("\u201c")[1].split("\u201d")[0]
            page.click(f"label.option:has-text('{label}')")
            wanted = page.eval_on_selector(f"label.option:has-text('{label}') input", "radio => radio.value")
            used.append("check")
        else:
            experiment = "exp1" if "alg1" in values else "exp2"
            move, key, wanted = next(moves[experiment])
            used.append(f"{experiment} {move}")
            if move == "keys":
                page.keyboard.press(key)
            else:
                page.click(f"label.option >> nth={key}")
        chosen = page.eval_on_selector("input[name=answer]:checked", "radio => radio.value")
        assert chosen == wanted
        given.append((position, chosen))
        with page.expect_navigation():
            page.keyboard.press("Enter")
    return given, used


# The platforms' study links: a worker's assignment (MTurk) or session (Prolific) binds their session,
# and the same id with another assignment or session is someone else.
PLATFORM_LINKS = [
    ("/?workerId=M1&assignmentId=A1&hitId=H1", "/?workerId=M1&assignmentId=A2&hitId=H1"),
    ("/?PROLIFIC_PID=P1&STUDY_ID=S1&SESSION_ID=X1", "/?PROLIFIC_PID=P1&STUDY_ID=S1&SESSION_ID=X2"),
]


def test_an_honest_participant_resumes_in_the_same_or_another_browser(tmp_path):
    run_dir = tmp_path / "run"
    build_study(run_dir / "study", images=4)
    options = ("--tasks", "4", "--attention-checks", "0", "--consents-per-minute", "60")
    key = answer_key(load_study(run_dir / "study"))
    with live_server(run_dir, *options) as (base, _), browser_page() as page:
        _consent(page, f"{base}/?workerId=R1")
        page.wait_for_url("**/instructions")
        code = page.inner_text("#resume-code")
        page.click("#start")
        _comprehend(page, key)
        _answer_first_option(page)
        page.goto(f"{base}/?workerId=R1")  # the same browser: straight back to the next task
        page.wait_for_url("**/task")
        assert _position(page) == 1 and page.inner_text("#resume-code") == code

        other = page.context.browser.new_context().new_page()
        _consent(other, f"{base}/?workerId=R1")
        assert "already taking part in another browser" in other.inner_text("#message")
        for typed, wanted in (("ABCDE-FGHIJ", "**/consent"), (code.lower(), "**/task")):
            other.fill("#resume", typed)
            other.click("#resume-button")
            other.wait_for_url(wanted)
        assert _position(other) == 1

        for link, someone_else in PLATFORM_LINKS:
            first = page.context.browser.new_context().new_page()
            _consent(first, base + link)
            first.click("#start")
            _comprehend(first, key)
            _answer_first_option(first)
            again = page.context.browser.new_context().new_page()  # the same worker, another browser
            _consent(again, base + link)
            again.wait_for_url("**/task")
            assert _position(again) == 1
            stranger = page.context.browser.new_context().new_page()
            _consent(stranger, base + someone_else)
            assert "already taking part" in stranger.inner_text("#message") and stranger.url.endswith("/consent")


def _consent(page, url: str) -> None:
    page.goto(url)
    page.check("#agree")
    with page.expect_navigation():
        page.click("#consent-button")


def _answer_first_option(page) -> None:
    page.click("label.option >> nth=0")
    with page.expect_navigation():
        page.keyboard.press("Enter")


def _position(page) -> int:
    return int(page.get_attribute("input[name=position]", "value"))


def _comprehend(page, key: dict[str, str], right: bool = True) -> None:
    """Answer the comprehension page: the right choice of every question (`key`), or a wrong one."""
    page.wait_for_url("**/comprehension")
    for name in dict.fromkeys(radio.get_attribute("name") for radio in page.query_selector_all("input[type=radio]")):
        values = [r.get_attribute("value") for r in page.query_selector_all(f"input[name='{name}']")]
        choice = key[name] if right else next(value for value in values if value != key[name])
        page.check(f"input[name='{name}'][value='{choice}']")
    with page.expect_navigation():
        page.click("#check-answers")


@contextlib.contextmanager
def _completion_site():
    """A stand-in for Prolific's completion page on a free local port: yields (URL template, the
    paths of the requests it got)."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            body = b"<!doctype html><title>complete</title><p>Submission complete</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/submissions/complete?cc={{code}}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_prolific_participant_passes_the_check_and_is_sent_back_with_the_code(tmp_path):
    run_dir = tmp_path / "run"
    build_study(run_dir / "study", images=4)
    key = answer_key(load_study(run_dir / "study"))
    link = "/?PROLIFIC_PID=PRO-1&STUDY_ID=STUDY-9&SESSION_ID=SESSION-3"
    with _completion_site() as (url, seen), browser_page() as page:
        with live_server(run_dir, "--tasks", "4", "--attention-checks", "1", "--completion-url", url) as (base, _):
            problems = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            _consent(page, base + link)
            page.wait_for_url("**/instructions")
            assert "only the parts it used most are visible" in page.inner_text("#shown-as")
            page.click("#start")
            _comprehend(page, key, right=False)  # the first try wrong: the page again, saying so
            assert page.url.endswith("/comprehension") and "were not right" in page.inner_text("#message")
            assert len(page.query_selector_all("fieldset.wrong")) == len(page.query_selector_all("fieldset"))
            _comprehend(page, key)  # the second right
            assert page.url.endswith("/task")
            while page.url.endswith("/task"):
                _answer_first_option(page)
            assert page.url.endswith("/done")
            code = page.inner_text("#completion-code")
            assert page.get_attribute("#completion-link", "href") == url.replace("{code}", code)
            page.wait_for_url(url.replace("{code}", code), timeout=15_000)  # the redirect, a few seconds later
            assert "Submission complete" in page.inner_text("body") and problems == []
            progress = httpx.get(f"{base}/admin/api/progress", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    completed = [path for path in seen if path.startswith("/submissions/complete")]  # (and the favicon)
    assert [parse_qs(urlsplit(path).query) for path in completed] == [{"cc": [code]}]
    row = progress["participant_rows"][0]
    assert (row["id"], row["code"], row["comprehension_attempts"], row["comprehension_passed"]) == (
        "PRO-1", code, 2, True)
    assert progress["flow"]["comprehension_passed"] == progress["flow"]["completed"] == 1
    with contextlib.closing(sqlite3.connect(run_dir / "study" / "study.db")) as db:
        assert db.execute("SELECT source, study_id, session_id FROM participants").fetchall() == [
            ("prolific", "STUDY-9", "SESSION-3")]
