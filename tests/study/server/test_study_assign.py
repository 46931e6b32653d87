"""Who answers what: k distinct participants per stimulus, fewest answers first, checks in place."""

import contextlib
import random
import sqlite3
from collections import Counter

from prunexplain.config import ServeSettings
from prunexplain.experiments import COMPARE, RECOGNISE
from prunexplain.study.server.assign import plan_tasks
from prunexplain.study.server.catalog import load_study
from prunexplain.study.server.store import Store


def _start(store, study, settings, participant, hold=3600.0):
    rng = random.Random(f"{settings.seed}:{participant}")
    return store.start(participant, "mturk", lambda loads: plan_tasks(study, settings, loads, rng), hold)


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
        assert _start(store, study, settings, "late") is None  # nothing left to give
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
        assert _start(store, study, settings, "b", hold=60) is None  # all 12 held by a
        now[0] += 61
        assert _start(store, study, settings, "c", hold=60) is not None
        given = {row[2] for row in _tasks(store, "c")}
        assert len(given) == 11 and first.stimulus not in given  # a's answer still counts
