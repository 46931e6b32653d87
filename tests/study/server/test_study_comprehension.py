"""The comprehension check (questions from the experiment spec, two tries, exclusion for good with the
tasks released) and the participant flow that the admin page and `study export` report."""

import contextlib
import csv
import json
import re
import sqlite3
import uuid

from serverkit import TOKEN, answer_all, answer_key, browser, join, pass_comprehension, task_form

from prunexplain.experiments import COMPARE, NONE, RENDERINGS, SHOWN_AS
from prunexplain.study.server.catalog import load_study
from prunexplain.study.server.comprehension import MARKED, questions, wrong
from prunexplain.study.server.export import export_study
from prunexplain.study.server.flow import COMPREHENSION, KEYS
from prunexplain.study.server.security import resume_code
from prunexplain.study.server.store import Store, read_flow

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _query(study_dir, sql, params=()):
    with contextlib.closing(sqlite3.connect(study_dir / "study.db")) as db:
        return db.execute(sql, params).fetchall()


def _wrong_answers(client) -> dict[str, str]:
    """The comprehension page's form filled with a wrong choice for every question."""
    page = client.get("/comprehension").text
    key = answer_key(client.app.state.study)
    fields = dict.fromkeys(re.findall(r'<input type="radio" name="([^"]+)"', page))
    return {name: next(v for v in re.findall(rf'name="{re.escape(name)}" value="([^"]*)"', page) if v != key[name])
            for name in fields}


def test_the_questions_come_from_the_experiments_a_participant_does(study_dir):
    study = load_study(study_dir, ["exp1", "exp1_heatmap", "exp2"])
    asked = questions([study.experiments["exp1"], study.experiments["exp2"]])
    assert [q.id for q in asked] == ["exp2-none", "exp1-left", "shown-occlusion"]  # the tasks' order: exp2 first
    exp2, exp1, shown = asked
    assert [c.value for c in exp1.choices] == [o.value for o in COMPARE.choices()]  # the task page's options
    assert exp1.answer == "alg1" and dict((c.value, c.label) for c in exp1.choices)["alg1"] == "Algorithm 1 (left)"
    assert exp2.answer == NONE and [c.value for c in exp2.choices] == [*study.classes, NONE]
    assert "visible" in shown.text and "used most" in dict((c.value, c.label) for c in shown.choices)[shown.answer]
    assert [q.id for q in questions([study.experiments["exp1_heatmap"]])] == ["exp1-left", "shown-heatmap"]
    assert "red" in questions([study.experiments["exp1_heatmap"]])[1].text
    assert set(MARKED) == set(RENDERINGS) == set(SHOWN_AS)  # a new rendering needs its words
    right = {q.id: q.answer for q in asked}
    assert wrong(asked, right) == [] and wrong(asked, {**right, "exp1-left": "alg2"}) == ["exp1-left"]
    assert wrong(asked, {"exp2-none": NONE}) == ["exp1-left", "shown-occlusion"]  # left out is wrong


def test_the_check_comes_between_the_instructions_and_the_tasks(make_client, study_dir):
    client = make_client()
    join(client, "W1", comprehend=False)
    instructions = client.get("/instructions").text
    assert 'href="/comprehension" id="start"' in instructions and "only the parts it used most" in instructions
    assert client.get("/task", follow_redirects=False).headers["location"] == "/comprehension"
    assert client.get("/api/task").status_code == 403
    body = {"submission_id": str(uuid.uuid4()), "position": 0, "answer": "none"}
    assert client.post("/api/answers", json=body).status_code == 403
    page = client.get("/comprehension")
    assert page.status_code == 200 and page.text.count("<fieldset") == 3 and re.search(r"you have 2\s+tries", page.text)
    first = client.post("/comprehension", data=_wrong_answers(client))
    assert first.status_code == 200 and "3 of your answers were not right" in first.text
    assert first.text.count('class="question wrong"') == 3 and "This is your last try" in first.text
    partly = {**answer_key(client.app.state.study)}
    partly = {q: partly[q] for q in ("exp2-none", "exp1-left", "shown-occlusion")}
    missing = client.post("/comprehension", data={"exp2-none": partly["exp2-none"]})
    assert missing.status_code == 422 and "answer every question" in missing.text  # not counted as a try
    passed = client.post("/comprehension", data=partly, follow_redirects=False)
    assert passed.status_code == 303 and passed.headers["location"] == "/task"
    assert _query(study_dir, "SELECT comprehension_attempts, comprehension_passed_at IS NOT NULL, excluded "
                             "FROM participants") == [(2, 1, None)]
    assert client.get("/comprehension", follow_redirects=False).headers["location"] == "/task"  # asked once
    assert 'href="/task" id="start"' in client.get("/instructions").text
    answer_all(client)
    assert "completion-code" in client.get("/done").text


def test_failing_twice_ends_the_study_for_good_and_frees_the_tasks(make_client, study_dir):
    # 12 exp1 stimuli, one answer each: the first participant holds every one of them
    client = make_client(experiments=["exp1"], tasks_per_participant=12, answers_per_stimulus=1)
    first = client.get("/?PROLIFIC_PID=P1&STUDY_ID=S1&SESSION_ID=X1")
    form = {**task_form(first.text), "agree": "yes"}
    del form["options"]
    assert client.post("/consent", data=form, follow_redirects=False).headers["location"] == "/instructions"
    assert join(browser(client), "late").status_code == 503  # every place is held
    held = {row[0] for row in _query(study_dir, "SELECT stimulus FROM tasks WHERE participant = 'P1'")}
    assert len(held) == 12
    once = client.post("/comprehension", data=_wrong_answers(client))
    assert once.status_code == 200 and "not right" in once.text
    ended = client.post("/comprehension", data=_wrong_answers(client))
    assert ended.status_code == 403 and "cannot take part" in ended.text
    assert "return the study on Prolific" in ended.text and "completion-code" not in ended.text
    assert _query(study_dir, "SELECT comprehension_attempts, excluded, study_id, session_id FROM participants") == [
        (2, COMPREHENSION, "S1", "X1")]
    assert _query(study_dir, "SELECT COUNT(*) FROM tasks WHERE participant = 'P1'") == [(0,)]

    late = browser(client)  # the released places go to the next participant at once
    assert join(late, "late").status_code == 303
    assert {row[0] for row in _query(study_dir, "SELECT stimulus FROM tasks WHERE participant = 'late'")} == held

    right = answer_key(client.app.state.study)
    for path in ("/task", "/done", "/instructions", "/comprehension"):
        page = client.get(path, follow_redirects=False)
        assert page.status_code == 403 and "cannot take part" in page.text, path
    assert client.get("/api/task").status_code == 403 and client.get("/api/task").json()["excluded"] == COMPREHENSION
    body = {"submission_id": str(uuid.uuid4()), "position": 0, "answer": "none"}
    assert client.post("/api/answers", json=body).status_code == 403
    assert client.post("/api/comprehension", json={"answers": right}).status_code == 403
    assert client.post("/comprehension", data=right).status_code == 403
    again = browser(client)  # a new browser with the resume code: the same end
    code = resume_code(client.app.state.secret, "P1")
    moved = again.post("/consent", data={"participant": "P1", "source": "prolific", "agree": "yes", "resume": code})
    assert moved.status_code == 403 and "cannot take part" in moved.text
    assert again.get("/api/task").status_code == 403
    relinked = browser(client)  # and with the platform's link again
    assert relinked.post("/consent", data={**form}).status_code == 403

    progress = client.get("/admin/api/progress", headers=BEARER).json()
    assert progress["flow"]["comprehension_failed"] == 1 and progress["flow"]["excluded"][COMPREHENSION] == 1
    assert {r["id"]: r["excluded"] for r in progress["participant_rows"]} == {"P1": COMPREHENSION, "late": None}
    answer_all(late)
    result = export_study(study_dir)
    with open(result.files["exp1"]) as handle:
        assert "P1" not in handle.read()
    assert json.loads(result.flow.read_text())["comprehension_failed"] == 1


def test_the_api_takes_the_check_as_the_page_does(make_client, study_dir):
    client = make_client()
    join(client, "W1", comprehend=False)
    asked = client.get("/api/comprehension").json()
    assert asked["required"] and asked["tries"] == 2 and [q["id"] for q in asked["questions"]] == [
        "exp2-none", "exp1-left", "shown-occlusion"]
    assert all("answer" not in q for q in asked["questions"])
    right = answer_key(client.app.state.study)
    wrong_one = {q["id"]: right[q["id"]] for q in asked["questions"]} | {"exp1-left": "none"}
    assert client.post("/api/comprehension", json={"answers": {"exp1-left": "alg1"}}).status_code == 422
    result = client.post("/api/comprehension", json={"answers": wrong_one}).json()
    assert result == {"passed": False, "wrong": ["exp1-left"], "attempts": 1, "excluded": None}
    assert pass_comprehension(client) and client.get("/api/task").status_code == 200
    assert client.get("/api/comprehension").json()["required"] is False


def test_the_check_can_be_switched_off(make_client, study_dir):
    client = make_client(comprehension=False)
    join(client, "W1", comprehend=False)
    assert 'href="/task" id="start"' in client.get("/instructions").text
    assert client.get("/api/comprehension").json()["required"] is False
    assert client.get("/comprehension", follow_redirects=False).headers["location"] == "/task"
    answer_all(client)
    assert _query(study_dir, "SELECT comprehension_attempts, comprehension_passed_at FROM participants") == [(0, None)]


def test_the_flow_counts_every_participant_once(make_client, study_dir):
    client = make_client(tasks_per_participant=2, attention_checks=1, answers_per_stimulus=5)

    def participant(worker, *, comprehend=True, answers=0, follow_checks=True):
        person = browser(client)
        join(person, worker, comprehend=comprehend)
        for _ in range(answers):
            task = person.get("/api/task").json()
            choice = task["check"] if task["check"] and follow_checks else next(
                o for o in task["options"] if o != task["check"])
            body = {"submission_id": str(uuid.uuid4()), "position": task["position"], "answer": choice}
            assert person.post("/api/answers", json=body).status_code == 200
        return person

    participant("done-1", answers=3)
    participant("done-2", answers=3)
    participant("inattentive", answers=3, follow_checks=False)
    participant("left-midway", answers=1)
    participant("read-only")  # passed the check, never opened a task
    participant("at-instructions", comprehend=False)  # consented, went no further
    failed = participant("failed", comprehend=False)
    for _ in range(2):
        failed.post("/comprehension", data=_wrong_answers(failed))
    flow = client.get("/admin/api/progress", headers=BEARER).json()["flow"]
    assert flow == {
        "consented": 7, "comprehension_passed": 5, "comprehension_failed": 1, "started_tasks": 4, "completed": 3,
        "abandoned": 3, "abandoned_answered": 1, "failed_attention_check": 1, "analysed": 4,
        "excluded": {COMPREHENSION: 1},
    }
    assert list(flow) == list(KEYS)
    assert flow["consented"] == flow["comprehension_failed"] + flow["abandoned"] + flow["completed"]
    assert flow["analysed"] == flow["completed"] + flow["abandoned_answered"]  # whose answers are exported
    overview = client.get("/admin", headers=BEARER).text
    assert '<table id="flow">' in overview and f"{COMPREHENSION} 1" in overview
    result = export_study(study_dir)
    assert json.loads(result.flow.read_text()) == flow == read_flow(study_dir / "study.db")
    exported = {}
    for key in ("exp1", "exp2"):
        with open(result.files[key], newline="") as handle:
            for row in csv.DictReader(handle):
                exported.setdefault(row["WorkerId"], set()).add(row["AssignmentStatus"])
    # the answers handed to the analysis: every completed participant's (an attention check failed or
    # not, as pre-registered) and the partial answers of those who left; none of the failed check's
    assert exported == {"done-1": {"Approved"}, "done-2": {"Approved"}, "inattentive": {"Submitted"},
                        "left-midway": {"Submitted"}}


def test_a_database_without_the_new_columns_gets_them(study_dir):
    with Store(study_dir / "study.db"):
        pass
    with contextlib.closing(sqlite3.connect(study_dir / "study.db")) as db:
        db.execute("INSERT INTO participants (id, source, session, created_at) VALUES ('old', 'mturk', 'x', 1)")
        for column in ("comprehension_attempts", "comprehension_passed_at", "excluded", "study_id", "session_id",
                       "submit_to"):
            db.execute(f"ALTER TABLE participants DROP COLUMN {column}")
        db.commit()
    with Store(study_dir / "study.db") as store:
        assert store.participant_progress()[0]["comprehension_attempts"] == 0
        assert store.flow()["consented"] == 1 and store.flow()["abandoned"] == 1
