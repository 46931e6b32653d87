"""The crowd stage takes real answers wherever a run has them and stops on a database it cannot read
whole; only a readable database nobody has answered in lets a simulated crowd stand in."""

import contextlib
import json
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import load_settings
from prunexplain.errors import UserError
from prunexplain.pipeline import STAGES, fingerprints
from prunexplain.runs import Run
from prunexplain.study.crowd import answers_fingerprint, crowd_stage
from prunexplain.study.server.store import CLOSED, SERVING, Store
from tests.study.databases import BROKEN, copy_study, count_answers, serving, study_folder

# The hand-built study has no models in the run: its crowd is the published-effects simulation.
OVERRIDES = ["runtime.progress=false", "crowd.workers=6", "crowd.answers_per_item=2", 'crowd.mode="published"']


def _run(root, name="x"):
    settings = load_settings(None, [f'run.root="{root / "runs"}"', f'run.name="{name}"', *OVERRIDES])
    return settings, Run(settings.run_dir)


@pytest.fixture
def answered(tmp_path):
    """A served study with answers, its server still running: (study folder, the open client)."""
    folder = study_folder(tmp_path / "served" / "study")
    with serving(folder) as client:
        yield folder, client


def _in_run(tmp_path, study_dir, database=("study.db",), name="copy"):
    """A run whose study folder is a copy of `study_dir` with the named database files."""
    settings, run = _run(tmp_path, name)
    copy_study(study_dir, run.study.root, database)
    return settings, run


def _sources(run):
    return {key: entry["source"] for key, entry in json.loads(run.study.crowd.read_text()).items()}


def test_a_closed_database_gives_real_answers(tmp_path):
    folder = study_folder(tmp_path / "served" / "study")
    with serving(folder):
        pass
    assert [p.name for p in sorted(folder.glob("study.db*"))] == ["study.db"]  # the WAL went into study.db
    settings, run = _in_run(tmp_path, folder)
    result = crowd_stage(settings, run)
    assert _sources(run) == {"exp1": "real", "exp1_heatmap": "simulated", "exp2": "real"}
    assert result.sources["exp2"]["files"] == [str(run.study.exported("exp2"))]
    assert "no answers to exp1_heatmap" in result.sources["exp1_heatmap"]["reason"]


def test_a_copy_with_its_wal_gives_every_answer(answered, tmp_path):
    folder, client = answered
    assert count_answers(folder / "study.db", with_wal=False) == 0 < count_answers(folder / "study.db")
    settings, run = _in_run(tmp_path, folder, ("study.db", "study.db-wal"))  # no -shm, as people copy
    crowd_stage(settings, run)
    assert _sources(run)["exp2"] == "real"
    exported = sum(len(run.study.exported(key).read_text().splitlines()) - 1 for key in ("exp1", "exp2")
                   if run.study.exported(key).exists())
    assert exported == count_answers(folder / "study.db") == 8


def test_a_copy_without_its_wal_stops_the_stage(answered, tmp_path):
    folder, _ = answered
    settings, run = _in_run(tmp_path, folder)
    with pytest.raises(UserError) as error:
        crowd_stage(settings, run)
    assert str(run.study.database) in str(error.value) and "study.db-wal" in str(error.value)
    assert "\n" not in str(error.value) and not run.study.crowd.exists()


@pytest.mark.parametrize("damage", list(BROKEN))
def test_a_broken_database_stops_the_stage_naming_it(tmp_path, damage):
    settings, run = _run(tmp_path)
    study_folder(run.study.root)
    BROKEN[damage](run.study.database)
    with pytest.raises(UserError) as error:
        crowd_stage(settings, run)
    assert str(error.value).startswith(f"{run.study.database}: ") and "\n" not in str(error.value)
    assert not run.study.crowd.exists() and not run.study.simulated("exp1").exists()


def test_a_foreign_file_is_left_as_it_was(tmp_path):
    settings, run = _run(tmp_path)
    study_folder(run.study.root)
    BROKEN["foreign SQLite file"](run.study.database)
    before = run.study.database.read_bytes()
    with pytest.raises(UserError, match="not the study's"):
        crowd_stage(settings, run)
    assert run.study.database.read_bytes() == before and run.study.database_files() == [run.study.database]


def test_a_database_nobody_answered_in_gives_a_simulated_crowd_and_says_why(tmp_path):
    settings, run = _run(tmp_path)
    study_folder(run.study.root)
    result = crowd_stage(settings, run)  # no database at all
    assert set(_sources(run).values()) == {"simulated"}
    assert "study.db: no such file" in result.sources["exp1"]["reason"]
    Store(run.study.database).close()
    result = crowd_stage(settings, run)
    listed = json.loads(run.study.crowd.read_text())
    assert set(_sources(run).values()) == {"simulated"} and listed == result.sources
    assert listed["exp2"]["reason"] == (f"no answer files exp2*.csv in {run.study.answers}; "
                                        f"{run.study.database}: no answers yet")
    off = settings.model_copy(update={"crowd": settings.crowd.model_copy(update={"simulate": False})})
    assert crowd_stage(off, run).sources == {}


def test_answer_files_go_to_their_own_experiment(tmp_path):
    settings, run = _run(tmp_path)
    study_folder(run.study.root)
    crowd_stage(settings, run)
    run.study.answers.mkdir()
    for name in ("exp1_batch1.csv", "exp1_heatmap_batch1.csv"):
        shutil.copy(run.study.simulated("exp1") / "exp1_results.csv", run.study.answers / name)
    result = crowd_stage(settings, run)
    assert result.sources["exp1"]["files"] == [str(run.study.answers / "exp1_batch1.csv")]
    assert result.sources["exp1_heatmap"]["files"] == [str(run.study.answers / "exp1_heatmap_batch1.csv")]
    assert result.sources["exp2"]["source"] == "simulated"


def test_the_server_records_a_clean_shutdown(tmp_path):
    database = tmp_path / "study.db"
    store = Store(database)
    with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro&immutable=1", uri=True)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone() == (SERVING,)  # in study.db
    store.close()
    store.close()  # closing twice is harmless
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.db"]
    with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro&immutable=1", uri=True)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone() == (CLOSED,)


def test_answers_fingerprint_sees_every_database_file(tmp_path):
    _, run = _run(tmp_path)
    study_folder(run.study.root)
    nothing = answers_fingerprint(run)
    run.study.database.mkdir()
    directory = answers_fingerprint(run)
    run.study.database.rmdir()
    BROKEN["dangling link"](run.study.database)
    link = answers_fingerprint(run)
    assert len({nothing, directory, link}) == 3
    run.study.database.unlink()
    Store(run.study.database).close()
    closed = answers_fingerprint(run)
    wal = run.study.root / "study.db-wal"
    wal.write_bytes(b"")
    assert answers_fingerprint(run) != closed
    shm = run.study.root / "study.db-shm"
    shm.write_bytes(b"1")
    present = answers_fingerprint(run)
    shm.write_bytes(b"22")  # SQLite's index of the WAL, rewritten by readers: its bytes never count
    assert answers_fingerprint(run) == present != closed
    run.study.answers.mkdir()
    (run.study.answers / "exp1_batch1.csv").write_text("HITId\n")
    assert answers_fingerprint(run) != present


def _done_through_study(settings, run) -> None:
    """Mark the stages before the crowd done, as if this run had built its study."""
    for stage, fingerprint in zip(STAGES, fingerprints(settings, run)):
        if stage.name == "crowd":
            return
        run.mark_done(stage.name, fingerprint)


@pytest.mark.parametrize("damage", ["corrupt SQLite file", "empty file", "without its wal"])
def test_run_stops_with_one_line_naming_the_database(tmp_path, damage):
    if damage == "without its wal":
        folder = study_folder(tmp_path / "served" / "study")
        with serving(folder):
            settings, run = _in_run(tmp_path, folder, name="x")
    else:
        settings, run = _run(tmp_path)
        study_folder(run.study.root)
        BROKEN[damage](run.study.database)
    _done_through_study(settings, run)
    options = [item for o in [f'run.root="{tmp_path / "runs"}"', *OVERRIDES] for item in ("--set", o)]
    result = CliRunner().invoke(app, ["run", "--name", "x", *options, "--until", "crowd"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {run.study.database}: ")
    assert "Traceback" not in result.output and not run.study.crowd.exists()
