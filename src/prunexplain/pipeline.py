"""`prunexplain run`: every stage in order over one run directory, resumable.

A stage runs unless its done-marker holds the fingerprint of its settings chained with the
fingerprints of the stages before it: a changed setting reruns that stage and every later one,
and a run killed at any point starts again at the first unfinished stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from prunexplain.config import Settings
from prunexplain.runs import Run, write_text

log = logging.getLogger(__name__)


def _data(settings: Settings, run: Run) -> str:
    from prunexplain.data import dataset_root

    return f"dataset in {dataset_root(settings.data, run.root, settings.train.progress)}"


def _train(settings: Settings, run: Run) -> str:
    from prunexplain.train import train_stage

    return train_stage(settings, run).summary()


def _prune(settings: Settings, run: Run) -> str:
    from prunexplain.pruning.schedule import prune_stage

    return prune_stage(settings, run).summary()


def _explain(settings: Settings, run: Run) -> str:
    from prunexplain.explain.stage import explain_stage

    return explain_stage(settings, run).summary()


def _evaluate(settings: Settings, run: Run) -> str:
    from prunexplain.evaluate.stage import evaluate_stage

    return evaluate_stage(settings, run).summary()


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # the settings that decide this stage's output
    function: Callable[[Settings, Run], str]


STAGES: tuple[Stage, ...] = (
    Stage("data", ("data",), _data),
    Stage("train", ("model", "train"), _train),
    Stage("prune", ("prune",), _prune),
    Stage("explain", ("explain",), _explain),
    Stage("evaluate", ("evaluate",), _evaluate),
)


def run_pipeline(settings: Settings, run: Run) -> str:
    """Run the stages not yet done with these settings; returns a summary of where results are."""
    write_text(run.path("config.toml"), settings.to_toml())
    lines, upstream = [f"run directory: {run.root}"], ""
    for stage in STAGES:
        fingerprint = settings.fingerprint(*stage.sections) + upstream
        upstream = fingerprint
        if run.is_done(stage.name, fingerprint):
            log.info("%s: done already, skipped", stage.name)
            lines.append(f"{stage.name}: done (skipped)")
            continue
        run.clear_done(stage.name)
        log.info("%s: running", stage.name)
        lines.append(f"{stage.name}: {stage.function(settings, run)}")
        run.mark_done(stage.name, fingerprint)
    return "\n".join(lines)
