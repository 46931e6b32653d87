"""`prunexplain run`: every stage in order over one run directory, resumable.

A stage runs unless its done-marker holds the fingerprint of its settings chained with the
fingerprints of the stages before it: a changed setting reruns that stage and every later one,
and a run killed at any point starts again at the first unfinished stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from prunexplain.config import Settings, UserError
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


def _study(settings: Settings, run: Run) -> str:
    from prunexplain.study.build import build_study

    return build_study(settings, run).summary()


def _crowd(settings: Settings, run: Run) -> str:
    from prunexplain.study.crowd import crowd_stage

    return crowd_stage(settings, run).summary()


def _crowd_inputs(run: Run) -> str:
    from prunexplain.study.crowd import answers_fingerprint

    return answers_fingerprint(run)


def _analysis(settings: Settings, run: Run) -> str:
    from prunexplain.analysis.run import analyze_run

    return analyze_run(settings, run).summary()


def _report(settings: Settings, run: Run) -> str:
    from prunexplain.report import write_report

    return write_report(run, settings.report).summary()


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # the settings that decide this stage's output
    function: Callable[[Settings, Run], str]
    inputs: Callable[[Run], str] | None = None  # what else decides it: files people add to the run


STAGES: tuple[Stage, ...] = (
    Stage("data", ("data",), _data),
    Stage("train", ("model", "train"), _train),
    Stage("prune", ("prune",), _prune),
    Stage("explain", ("explain",), _explain),
    Stage("evaluate", ("evaluate",), _evaluate),
    Stage("study", ("study",), _study),
    Stage("crowd", ("crowd",), _crowd, _crowd_inputs),
    Stage("analysis", ("analysis",), _analysis),
    Stage("report", ("report",), _report),
)


def stage_names() -> list[str]:
    return [stage.name for stage in STAGES]


def fingerprints(settings: Settings, run: Run) -> list[str]:
    """Per stage, its settings (and inputs) chained with every earlier stage's: a change anywhere
    upstream changes the fingerprint of every stage after it."""
    chain, upstream = [], ""
    for stage in STAGES:
        upstream = settings.fingerprint(*stage.sections) + (stage.inputs(run) if stage.inputs else "") + upstream
        chain.append(upstream)
    return chain


def run_pipeline(settings: Settings, run: Run, until: str | None = None) -> str:
    """Run the stages not yet done with these settings (through `until`, default all); returns a
    summary of where results are."""
    if until is not None and until not in stage_names():
        raise UserError(f"--until: unknown stage {until!r} (stages: {', '.join(stage_names())})")
    write_text(run.path("config.toml"), settings.to_toml())
    stages = STAGES[: stage_names().index(until) + 1] if until else STAGES
    lines = [f"run directory: {run.root}"]
    for number, (stage, fingerprint) in enumerate(zip(stages, fingerprints(settings, run)), 1):
        if run.is_done(stage.name, fingerprint):
            log.info("[%d/%d] %s: done already, skipped", number, len(stages), stage.name)
            lines.append(f"{stage.name}: done (skipped)")
            continue
        run.clear_done(stage.name)
        log.info("[%d/%d] %s: running", number, len(stages), stage.name)
        lines.append(f"{stage.name}: {stage.function(settings, run)}")
        run.mark_done(stage.name, fingerprint)
    return "\n".join(lines)
