"""Which stimuli a new participant answers, in which order, and where the attention checks go.

A pure function of the current load of every stimulus (answers given plus tasks still reserved), so
it is tested without a database; the store calls it inside the transaction that reserves the tasks,
which keeps concurrent participants from both taking the last free place of a stimulus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from prunexplain.config import ServeSettings
from prunexplain.study.server.catalog import Stimulus, Study


@dataclass(frozen=True)
class Planned:
    """One task of a participant: a stimulus, or (check_answer set) an attention check on its picture."""

    experiment: str
    stimulus: str
    check_answer: str | None = None


def plan_tasks(study: Study, settings: ServeSettings, loads: dict[str, int], rng: random.Random) -> list[Planned]:
    """Up to `tasks_per_participant` stimuli with the fewest answers and reservations first.

    Stimuli that already have `answers_per_stimulus` answers or reservations are never given out.
    Ties are broken at random, so participants arriving together spread over different stimuli.
    Where a kind asks for the class (experiment 2), a participant sees each image once: a second
    occlusion map of the same image would show more of it and no longer test one model's map alone.
    Those tasks come first, because stimuli of kinds that name the class (experiment 1's panels)
    would give it away.
    """
    full = settings.answers_per_stimulus
    candidates = [s for key in settings.experiments for s in study.of(key) if loads.get(s.id, 0) < full]
    rng.shuffle(candidates)
    candidates.sort(key=lambda s: loads.get(s.id, 0))  # stable: random order within equal loads
    chosen: list[Stimulus] = []
    images: set[int] = set()
    for stimulus in candidates:
        if len(chosen) == settings.tasks_per_participant:
            break
        if _asks_class(study, stimulus.experiment):
            if stimulus.image in images:
                continue
            images.add(stimulus.image)
        chosen.append(stimulus)
    rng.shuffle(chosen)
    chosen.sort(key=lambda s: study.experiments[s.experiment].spec.names_class)
    tasks = [Planned(s.experiment, s.id) for s in chosen]
    return _with_checks(study, settings, tasks, rng)


def _asks_class(study: Study, experiment: str) -> bool:
    return study.experiments[experiment].spec.asks_class


def _with_checks(study: Study, settings: ServeSettings, tasks: list[Planned], rng: random.Random) -> list[Planned]:
    """Insert instructed-response items: a picture the participant has no task on, and the option
    they are told to choose whatever the picture shows. A check takes the experiment of the task
    before it, so it keeps the experiment order; never first, so the first task is a real one.
    A check that asks for the class avoids the images the participant is asked about (it would show
    more of them). No two checks show the same image: a participant who notices a repeat would
    learn that the check pictures are not real tasks."""
    if not tasks:
        return tasks
    used = {task.stimulus for task in tasks}
    seen = {study.stimuli[t.stimulus].image for t in tasks if _asks_class(study, t.experiment)}
    checked: set[int] = set()  # images of the checks placed so far
    placed, attempts = 0, 0
    while placed < settings.attention_checks and attempts < 10 * settings.attention_checks:
        attempts += 1  # a place whose experiment has no unseen picture left is drawn again
        position = rng.randint(1, len(tasks))
        experiment = tasks[position - 1].experiment
        asks = _asks_class(study, experiment)
        pool = [s for s in study.of(experiment)
                if s.id not in used and s.image not in checked and not (asks and s.image in seen)]
        if pool:
            picture = rng.choice(pool)
            used.add(picture.id)
            checked.add(picture.image)
            answer = rng.choice(study.experiments[experiment].options)
            tasks.insert(position, Planned(experiment, picture.id, answer))
            placed += 1
    return tasks
