"""Who answers what: k distinct participants per stimulus, fewest answers first, checks in place."""

import contextlib
import random
import sqlite3
from collections import Counter

import pytest

from prunexplain.config import ServeSettings
from prunexplain.experiments import COMPARE, RECOGNISE
from prunexplain.study.server.assign import plan_tasks
from prunexplain.study.server.catalog import load_study
from prunexplain.study.server.store import Holds, Refused, Store


def _start(store, study, settings, participant, hold=3600.0, unstarted=None):
    rng = random.Random(f"{settings.seed}:{participant}")
    holds = Holds(hold, hold if unstarted is None else unstarted)
    return store.start(participant, "mturk", lambda loads: plan_tasks(study, settings, loads, rng), holds)


def _query(store, sql, params=()):
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        return db.execute(sql, params).fetchall()


def _tasks(store, participant):
    sql = "SELECT position, experiment, stimulus, check_answer FROM tasks WHERE participant = ? ORDER BY position"
    return _query(store, sql, (participant,))


def _loads(store):
    return Counter(row[0] for row in _query(store, "SELECT stimulus FROM tasks WHERE check_answer IS NULL"))


def test_fewest_answers_first_and_full_stimuli_never_given(study_dir):
    study = load_study(study_dir, ["exp1"])
    ids = sorted(study.stimuli)
    loads = {ids[0]: 2, ids[1]: 2, ids[2]: 1, ids[3]: 1, **{i: 1 for i in ids[4:9]}}  # ids[9:] are at 0
    settings = ServeSettings(experiments=["exp1"], answers_per_stimulus=2, tasks_per_participant=5, attention_checks=0)
    chosen = [t.stimulus for t in plan_tasks(study, settings, loads, random.Random(0))]
    assert len(chosen) == 5 and len(set(chosen)) == 5
    assert set(ids[9:]) <= set(chosen)  # all three unanswered ones first
    assert ids[0] not in chosen and ids[1] not in chosen  # full
    assert plan_tasks(study, settings, loads, random.Random(0)) == plan_tasks(study, settings, loads, random.Random(0))


def test_balanced_until_every_stimulus_has_k_participants(study_dir):
    study = load_study(study_dir, ["exp1"])  # 12 stimuli
    settings = ServeSettings(experiments=["exp1"], answers_per_stimulus=3, tasks_per_participant=4, attention_checks=0)
    with Store(study_dir / "study.db") as store:
        for n in range(9):  # 9 x 4 = 36 = 12 x 3 places
            assert _start(store, study, settings, f"w{n}") is not None
            counts = [_loads(store).get(s, 0) for s in study.stimuli]
            assert max(counts) - min(counts) <= 1, counts
            assert len({row[2] for row in _tasks(store, f"w{n}")}) == 4
        assert set(_loads(store).values()) == {3} and len(_loads(store)) == 12
        with pytest.raises(Refused):  # nothing left to give while the reservations hold
            _start(store, study, settings, "late")
        assert store.participant_progress()[-1]["id"] == "w8"


def test_experiment2_first_and_each_image_once(study_dir):
    study = load_study(study_dir, ["exp1", "exp2"])
    settings = ServeSettings(answers_per_stimulus=5, tasks_per_participant=8, attention_checks=0)
    with Store(study_dir / "study.db") as store:
        for n in range(6):
            _start(store, study, settings, f"w{n}")
            tasks = _tasks(store, f"w{n}")
            kinds = [study.experiments[row[1]].spec for row in tasks]
            assert kinds == sorted(kinds, key=lambda kind: kind is not RECOGNISE)  # exp2 block, then exp1
            assert set(kinds) == {RECOGNISE, COMPARE}
            images = [study.stimuli[row[2]].image for row in tasks if study.experiments[row[1]].spec is RECOGNISE]
            assert len(images) == len(set(images)) > 0


def test_attention_checks_are_extra_marked_and_on_unseen_pictures(study_dir):
    study = load_study(study_dir, ["exp1", "exp2"])
    settings = ServeSettings(answers_per_stimulus=5, tasks_per_participant=5, attention_checks=2, seed=3)
    with Store(study_dir / "study.db") as store:
        for n in range(5):
            _start(store, study, settings, f"w{n}")
            tasks = _tasks(store, f"w{n}")
            checks = [row for row in tasks if row[3] is not None]
            real = [row for row in tasks if row[3] is None]
            assert len(real) == 5 and len(checks) == 2 and tasks[0][3] is None
            assert not {row[2] for row in checks} & {row[2] for row in real}
            for position, experiment, stimulus, expected in checks:
                assert expected in study.experiments[experiment].options
                assert study.experiments[experiment].spec is study.experiments[tasks[position - 1][1]].spec
        assert sum(_loads(store).values()) == 25  # checks do not count towards k


def test_abandoned_reservations_expire_but_answers_stay(study_dir):
    study = load_study(study_dir, ["exp1"])
    settings = ServeSettings(experiments=["exp1"], answers_per_stimulus=1, tasks_per_participant=12, attention_checks=0)
    now = [1000.0]
    with Store(study_dir / "study.db", clock=lambda: now[0]) as store:
        _start(store, study, settings, "a", hold=60)
        first = store.current("a")
        store.record("a", "00000000-0000-0000-0000-000000000001", first.position, "alg1", lambda k: ("alg1",))
        with pytest.raises(Refused, match="reserved by people taking part") as refused:
            _start(store, study, settings, "b", hold=60)  # all 12 held by a: busy, not finished
        assert refused.value.status == 503
        now[0] += 61
        assert _start(store, study, settings, "c", hold=60) is not None
        given = {row[2] for row in _tasks(store, "c")}
        assert len(given) == 11 and first.stimulus not in given  # a's answer still counts


def test_places_of_participants_who_never_open_a_task_return_quickly(study_dir):
    """A flood of consents that never look at a task holds its places for `start_minutes`, not an hour."""
    study = load_study(study_dir, ["exp1"])
    settings = ServeSettings(experiments=["exp1"], answers_per_stimulus=1, tasks_per_participant=6, attention_checks=0)
    now = [1000.0]
    with Store(study_dir / "study.db", clock=lambda: now[0]) as store:
        _start(store, study, settings, "flood", hold=3600, unstarted=300)
        _start(store, study, settings, "honest", hold=3600, unstarted=300)
        store.current("honest")  # opened a task: holds for the hour
        with pytest.raises(Refused):
            _start(store, study, settings, "late", hold=3600, unstarted=300)
        now[0] += 301
        _start(store, study, settings, "late-2", hold=3600, unstarted=300)
        assert {row[2] for row in _tasks(store, "late-2")} == {row[2] for row in _tasks(store, "flood")}
        assert not store.holds_places("flood", Holds(3600, 300)) and store.holds_places("honest", Holds(3600, 300))


def test_two_attention_checks_never_show_the_same_image(study_dir):
    study = load_study(study_dir, ["exp1", "exp1_heatmap", "exp2"])
    settings = ServeSettings(experiments=["exp1", "exp1_heatmap", "exp2"], tasks_per_participant=2,
                             attention_checks=3)
    for seed in range(200):
        tasks = plan_tasks(study, settings, {}, random.Random(seed))
        images = [study.stimuli[t.stimulus].image for t in tasks if t.check_answer]
        assert len(images) == len(set(images)), (seed, images)


def test_a_database_of_the_previous_version_gets_the_new_columns(study_dir):
    """Participants of an older study.db who had opened a task count as started, so their places hold."""
    study = load_study(study_dir, ["exp1"])
    settings = ServeSettings(experiments=["exp1"], tasks_per_participant=2, attention_checks=0)
    with Store(study_dir / "study.db") as store:
        _start(store, study, settings, "old")
        store.current("old")
    with contextlib.closing(sqlite3.connect(study_dir / "study.db")) as db:
        db.execute("ALTER TABLE participants DROP COLUMN binding")
        db.execute("ALTER TABLE participants DROP COLUMN started_at")
        db.commit()
    with Store(study_dir / "study.db") as store:
        assert store.holds_places("old", Holds(3600, 0))
        columns = [row[1] for row in _query(store, "PRAGMA table_info(participants)")]
        assert columns[-2:] == ["binding", "started_at"]
