"""`study export`: MTurk batch-results CSVs that `prunexplain analyze` reads unchanged, end to end."""

import contextlib
import csv
import sqlite3
import uuid

import httpx
import pytest
from serverkit import browser, join, live_server
from typer.testing import CliRunner

from prunexplain.analysis.stage import analyze
from prunexplain.cli import app
from prunexplain.config import AnalysisSettings, ServeSettings, UserError
from prunexplain.study.server.app import create_app
from prunexplain.study.server.export import export_study
from prunexplain.study.server.store import Store
from tests.study.databases import BROKEN, copy_study, count_answers, serving, snapshot

HEAD = ["HITId", "AssignmentId", "WorkerId", "AssignmentStatus", "AcceptTime", "SubmitTime", "WorkTimeInSeconds",
        "Input.image_url"]
PLATFORM = ["Platform", "Platform.StudyId", "Platform.SessionId"]
runner = CliRunner()


def _answer_everything(client, worker, choose, follow_checks=True) -> None:
    """One participant through the JSON API; `choose(task, stimulus)` picks each answer."""
    participant = browser(client)
    join(participant, worker)
    study, store = client.app.state.study, client.app.state.store
    while not (task := participant.get("/api/task").json())["done"]:
        stimulus = study.stimuli[store.current(worker).stimulus]
        if task["check"]:
            answer = task["check"] if follow_checks else next(o for o in task["options"] if o != task["check"])
        else:
            answer = choose(task, stimulus)
        body = {"submission_id": str(uuid.uuid4()), "position": task["position"], "answer": answer}
        assert participant.post("/api/answers", json=body).status_code == 200


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _exp1_choice(task, stimulus):
    return "none" if stimulus.image % 2 else ("alg1" if "nonpruned" in stimulus.name.split("_")[1] else "alg2")


def _exp2_choice(task, stimulus):
    return stimulus.label if stimulus.name.endswith("_nonpruned.png") or stimulus.image % 2 else "none"


def _choose(task, stimulus):
    return _exp1_choice(task, stimulus) if task["experiment"].startswith("exp1") else _exp2_choice(task, stimulus)


@pytest.fixture
def answered(make_client, study_dir):
    """Eight participants on all three experiments, one attention check each; w7 fails its check."""
    client = make_client(experiments=["exp1", "exp1_heatmap", "exp2"], tasks_per_participant=9,
                         answers_per_stimulus=2, attention_checks=1)
    for n in range(8):
        _answer_everything(client, f"w{n}", _choose, follow_checks=n != 7)
    return client


def test_export_is_the_mturk_format_and_analyze_reads_it_unchanged(answered, study_dir, tmp_path):
    result = export_study(study_dir)
    assert set(result.files) == {"exp1", "exp1_heatmap", "exp2", "checks"}
    assert result.flow == study_dir / "export" / "flow.json"
    with sqlite3.connect(study_dir / "study.db") as db:
        counts = dict(db.execute("SELECT experiment, COUNT(*) FROM answers WHERE NOT is_check GROUP BY experiment"))
    assert {key: result.rows[key] for key in counts} == counts and result.rows["checks"] == 8
    exp1, exp2 = _read(result.files["exp1"]), _read(result.files["exp2"])
    assert list(exp1[0]) == HEAD + ["Answer.algorithms.alg1", "Answer.algorithms.alg2", "Answer.algorithms.none",
                                    *PLATFORM]
    classes = answered.app.state.study.classes
    assert list(exp2[0]) == HEAD + [f"Answer.classes.{label}" for label in classes] + ["Answer.classes.none", *PLATFORM]
    for row in exp1 + exp2:
        answers = [value for key, value in row.items() if key.startswith("Answer.")]
        assert set(answers) <= {"true", "false"} and answers.count("true") == 1
        assert "/" not in row["Input.image_url"] and row["Input.image_url"].endswith(".png")
        assert row["AssignmentStatus"] == ("Submitted" if row["WorkerId"] == "w7" else "Approved")
    hits = {}
    for row in exp1:
        assert hits.setdefault(row["Input.image_url"], row["HITId"]) == row["HITId"]  # one HIT per stimulus
    assert len(set(hits.values())) == len(hits) and len({row["AssignmentId"] for row in exp1}) == len(exp1)
    again = export_study(study_dir, tmp_path / "again")
    assert _read(again.files["exp1"]) == exp1  # stable ids
    checks = _read(result.files["checks"])
    assert [c["Passed"] for c in checks if c["WorkerId"] == "w7"] == ["false"] and len(checks) == 8

    settings = AnalysisSettings(bootstrap=0, plots=False)
    summary = analyze("exp1", [result.files["exp1"]], settings, tmp_path / "a1").summary
    assert summary["validation"]["left_out"] == 0 and summary["answers"] == len(exp1)
    expected_none = sum(row["Answer.algorithms.none"] == "true" for row in exp1)
    assert summary["none"] == expected_none
    summary = analyze("exp2", [result.files["exp2"]], settings, tmp_path / "a2").summary
    assert summary["validation"]["left_out"] == 0 and summary["answers"] == len(exp2)
    pruned = [row for row in exp2 if row["Input.image_url"].endswith("_2pruned.png")]
    odd = sum(int(row["Input.image_url"].split("_")[0]) % 2 for row in pruned)
    assert summary["models"]["nonpruned"]["accuracy"] == 1.0
    assert summary["models"]["2pruned"]["correct"] == odd and summary["models"]["2pruned"]["none"] == len(pruned) - odd


def test_export_and_analyze_through_the_cli(answered, run_dir, tmp_path):
    out = tmp_path / "exp2.csv"
    result = runner.invoke(app, ["study", "export", "--run", str(run_dir), "--out", str(out), "-e", "exp2"])
    assert result.exit_code == 0, result.output
    assert f"-> {out}" in result.output and (tmp_path / "attention_checks.csv").exists()
    result = runner.invoke(app, ["analyze", "exp2", str(out), "-o", str(tmp_path / "a"), "--bootstrap", "0",
                                 "--no-plots"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["study", "export", "--run", str(run_dir), "--out", str(tmp_path / "all.csv")])
    assert result.exit_code == 2 and "answers of several experiments (exp1, exp1_heatmap, exp2)" in result.output


def test_export_errors_are_one_line(run_dir, tmp_path):
    result = runner.invoke(app, ["study", "export", "--run", str(run_dir)])
    assert result.exit_code == 2 and "nobody has answered yet" in result.output
    result = runner.invoke(app, ["study", "export", "--run", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path}: no study/manifest.json; run `prunexplain study build` first"
    result = runner.invoke(app, ["study", "serve", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "run `prunexplain study build` first" in result.output
    result = runner.invoke(app, ["study", "serve", "--run", str(run_dir), "--tasks", "0"])
    assert result.exit_code == 2 and "serve.tasks_per_participant" in result.output


def test_export_of_one_experiment(make_client, study_dir):
    client = make_client(experiments=["exp2"])
    _answer_everything(client, "w0", _exp2_choice)
    with pytest.raises(UserError, match="no answers to exp1 yet"):
        export_study(study_dir, experiment="exp1")
    with pytest.raises(UserError, match="no experiment 'exp9'"):
        export_study(study_dir, experiment="exp9")
    result = export_study(study_dir, experiment="exp2")
    assert set(result.files) == {"exp2"} and result.rows["exp2"] == 4


def _spy_on_sqlite(monkeypatch) -> list[str]:
    """Every database the code under test opens, as it names it."""
    opened, connect = [], sqlite3.connect

    def spy(database, *args, **kwargs):
        opened.append(str(database))
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", spy)
    return opened


@pytest.mark.parametrize("copied", [("study.db",), ("study.db", "study.db-wal"),
                                    ("study.db", "study.db-wal", "study.db-shm")])
def test_export_of_a_copy_writes_nothing_into_it(study_dir, tmp_path, monkeypatch, copied):
    """As root, chmod stops no write: the copy must come out byte for byte as it went in, with no new file
    (the -shm aside, SQLite's index of the WAL, which a reader may rewrite), and SQLite opened read-only."""
    with serving(study_dir) as client:
        if len(copied) > 1:  # a copy made while the server runs: the answers are in the -wal only
            copy = copy_study(study_dir, tmp_path / "copy" / "study", copied)
            assert count_answers(copy / "study.db", with_wal=False) == 0
        wanted = {key: n for key, n in _counts(client).items() if n}
    if len(copied) == 1:  # a copy made after the server stopped
        copy = copy_study(study_dir, tmp_path / "copy" / "study", copied)
    before = snapshot(copy)
    opened = _spy_on_sqlite(monkeypatch)
    result = export_study(copy, tmp_path / "out")
    assert {key: result.rows[key] for key in wanted} == wanted and "checks" not in result.files
    after = snapshot(copy)
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if not k.endswith("-shm")} == {
        k: v for k, v in before.items() if not k.endswith("-shm")}
    assert opened and all(name.startswith("file:") and "mode=ro" in name for name in opened)
    monkeypatch.undo()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["study", "export", "--run", str(copy.parent), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{key}_results.csv" for key in wanted), "flow.json"])
    assert set(snapshot(copy)) == set(before)


def _counts(client) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(client.app.state.store.path)) as db:
        return dict(db.execute("SELECT experiment, COUNT(*) FROM answers GROUP BY experiment").fetchall())


@pytest.mark.parametrize("damage", list(BROKEN))
def test_export_of_a_broken_database_is_one_line(run_dir, damage):
    database = run_dir / "study" / "study.db"
    BROKEN[damage](database)
    result = runner.invoke(app, ["study", "export", "--run", str(run_dir)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {database}: ") and result.output.count("\n") == 1
    assert not (run_dir / "study" / "export").exists()


def test_export_of_a_wal_without_its_database(run_dir):
    (run_dir / "study" / "study.db-wal").write_bytes(b"")
    with pytest.raises(UserError, match="a -wal file without its database study.db"):
        export_study(run_dir / "study")


def test_the_server_never_writes_into_a_foreign_database(study_dir, admin_env):
    database = study_dir / "study.db"
    BROKEN["foreign SQLite file"](database)
    before = snapshot(study_dir)
    with pytest.raises(UserError, match="not the study's"):
        create_app(study_dir, ServeSettings())
    with pytest.raises(UserError, match="not the study's"):
        Store(database)
    assert snapshot(study_dir) == before


def test_a_stopped_server_leaves_a_database_whole_without_its_wal(run_dir, tmp_path):
    """SIGTERM ends `prunexplain study serve` through its lifespan: the store records a clean shutdown and
    moves the WAL into study.db, so a copy of study.db alone exports every answer."""
    with live_server(run_dir, "--tasks", "3", "--attention-checks", "0", "--no-comprehension") as (base, _):
        with httpx.Client(base_url=base, timeout=10) as client:
            client.post("/consent", data={"participant": "w0", "source": "mturk", "agree": "yes"})
            assert client.get("/api/comprehension").json()["required"] is False  # switched off
            while not (task := client.get("/api/task").json())["done"]:
                body = {"submission_id": str(uuid.uuid4()), "position": task["position"], "answer": task["options"][0]}
                assert client.post("/api/answers", json=body).json()["status"] == "stored"
        assert (run_dir / "study" / "study.db-wal").exists()
    assert not (run_dir / "study" / "study.db-wal").exists()  # (uvicorn re-raises SIGTERM after its shutdown)
    copy = copy_study(run_dir / "study", tmp_path / "copy" / "study")
    assert sum(export_study(copy, tmp_path / "out").rows.values()) == 3
