"""`prunexplain run` and the stage commands: stages in order over one run directory, resumable.

A stage runs unless its done-marker holds the fingerprint of its settings chained with the
fingerprints of the stages before it, and its outputs are still the ones it recorded: a changed
setting reruns that stage and every later one, a run killed at any point starts again at the first
unfinished stage, and a finished stage keeps its marker until a rerun of it completes. `[runtime]`
settings (device, progress, workers, caches) are in no fingerprint: changing them reruns nothing.

`config.toml` always describes what the run holds: each finished stage records the settings it
computed with, and those win over what a later, perhaps killed, invocation asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from prunexplain.config import Settings, UserError
from prunexplain.preflight import preflight
from prunexplain.runs import Run, fault_point, write_json, write_text

log = logging.getLogger(__name__)


def _data(settings: Settings, run: Run) -> str:
    from prunexplain.data import dataset_root

    return f"dataset in {dataset_root(settings.data, run, settings.runtime.progress)}"


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


def _seeds(settings: Settings, run: Run) -> str:
    """Every other seed of `run.seeds` as a replicate of its own through `evaluate` (each resumable on
    its own, under `seeds/<seed>/`): what the verdict's intervals over training randomness need."""
    others = settings.replicate_seeds()[1:]
    for number, seed in enumerate(others, 1):
        log.info("seed %d (%d of %d other seeds): replicate in %s", seed, number, len(others), run.replicate(seed))
        run_pipeline(settings.replicate(seed), Run(run.replicate(seed)), until="evaluate")
    if not others:
        return "one seed (run.seeds names no other): intervals over images only"
    return f"replicates of seeds {', '.join(map(str, others))} in {run.replicate(others[0]).parent}"


def _verdict(settings: Settings, run: Run) -> str:
    from prunexplain.verdict.stage import verdict_stage

    return verdict_stage(settings, run).summary()


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
    Stage("seeds", ("run.seeds",), _seeds),
    Stage("verdict", ("verdict",), _verdict),
    Stage("report", ("report",), _report),
)


def stage_names() -> list[str]:
    return [stage.name for stage in STAGES]


def fingerprints(settings: Settings, run: Run, stages: tuple[Stage, ...] = STAGES) -> list[str]:
    """Per stage (of the first `stages`), its settings (and inputs) chained with every earlier stage's:
    a change anywhere upstream changes the fingerprint of every stage after it."""
    chain, upstream = [], ""
    for stage in stages:
        upstream = settings.fingerprint(*stage.sections) + (stage.inputs(run) if stage.inputs else "") + upstream
        chain.append(upstream)
    return chain


def computed_settings(settings: Settings, run: Run) -> Settings:
    """`settings` with each finished stage's sections as that stage recorded them: what the run holds."""
    values = settings.model_dump(mode="json")
    for stage in STAGES:
        record = run.record(stage.name)
        if record is not None:
            values.update({name: value for name, value in record.get("settings", {}).items() if name in values})
    return Settings.model_validate(values)


def _write_config(settings: Settings, run: Run) -> None:
    write_text(run.config, computed_settings(settings, run).to_toml())


def _execute(settings: Settings, run: Run, number: int, total: int, stage: Stage, fingerprint: str) -> str:
    """Run one stage, record it done and invalidate every later stage (they were computed from its
    previous outputs)."""
    log.info("[%d/%d] %s: running", number, total, stage.name)
    summary = stage.function(settings, run)
    _record(settings, run, stage, fingerprint)
    return summary


def _record(settings: Settings, run: Run, stage: Stage, fingerprint: str) -> None:
    sections = {name: settings.section(name) for name in stage.sections}
    run.mark_done(stage.name, fingerprint, sections)
    for later in STAGES[stage_names().index(stage.name) + 1 :]:
        run.clear_done(later.name)
    _write_config(settings, run)
    fault_point(f"stage:{stage.name}")


def record_finished(settings: Settings, run: Run, name: str) -> None:
    """Record a stage that ran outside `run_stage` as done (a DDP training, where every process
    trains and only rank 0 writes)."""
    index = stage_names().index(name)
    _record(settings, run, STAGES[index], fingerprints(settings, run, STAGES[: index + 1])[index])


def run_pipeline(settings: Settings, run: Run, until: str | None = None) -> str:
    """Run the stages not yet done with these settings (through `until`, default all); returns a
    summary of where results are."""
    if until is not None and until not in stage_names():
        raise UserError(f"--until: unknown stage {until!r} (stages: {', '.join(stage_names())})")
    stages = STAGES[: stage_names().index(until) + 1] if until else STAGES
    preflight(settings, [stage.name for stage in stages])
    _write_config(settings, run)
    lines = [f"run directory: {run.root}"]
    for number, (stage, fingerprint) in enumerate(zip(stages, fingerprints(settings, run, stages)), 1):
        if run.is_done(stage.name, fingerprint):
            log.info("[%d/%d] %s: done already, skipped", number, len(stages), stage.name)
            lines.append(f"{stage.name}: done (skipped)")
            continue
        lines.append(f"{stage.name}: {_execute(settings, run, number, len(stages), stage, fingerprint)}")
    return "\n".join(lines)


def run_stage(settings: Settings, run: Run, name: str) -> str:
    """One stage, as its own command: through the same done-markers as `run`.

    Every earlier stage must be done with these settings (a fresh run's data stage is run first);
    where one was computed with other settings, nothing runs and the first differing setting is
    named, so a stage never mixes, say, a model trained on one dataset with another dataset.
    """
    preflight(settings, [name] if run.record("data") else ["data", name])
    index = stage_names().index(name)
    chain = fingerprints(settings, run, STAGES[: index + 1])
    for stage, fingerprint in zip(STAGES[:index], chain):
        if run.is_done(stage.name, fingerprint):
            continue
        if stage.name == "data" and run.record("data") is None:
            _execute(settings, run, 1, 1, stage, fingerprint)
            continue
        raise UserError(_not_ready(settings, run, stage, name))
    stage = STAGES[index]
    if run.is_done(name, chain[index]):
        return f"{name}: done already with these settings (skipped)"
    return _execute(settings, run, 1, 1, stage, chain[index])


def _not_ready(settings: Settings, run: Run, stage: Stage, wanted: str) -> str:
    record = run.record(stage.name)
    if record is None:
        return (f"{wanted}: the run {run.root} has no finished {stage.name} stage; "
                f"run `prunexplain run --until {wanted}`")
    recorded = record.get("settings", {})
    for section in stage.sections:
        now, then = _fields(section, settings.section(section)), _fields(section, recorded.get(section, {}))
        for key in sorted(set(now) | set(then)):
            if now.get(key) != then.get(key):
                return (f"{wanted}: {key} = {now.get(key)!r}, but the run's {stage.name} stage was computed "
                        f"with {then.get(key)!r} ({run.config}); drop the override or rerun `prunexplain run` with it")
    return (f"{wanted}: the run's {stage.name} stage is out of date (its outputs changed since it finished, or an "
            f"earlier stage changed); run `prunexplain run --until {wanted}`")


def _fields(name: str, value) -> dict[str, object]:
    """A section's values by qualified name (`train.seed`); a stage's single field (`run.seeds`) as itself."""
    return {f"{name}.{key}": v for key, v in value.items()} if isinstance(value, dict) else {name: value}


def predict_study(settings: Settings, run: Run) -> str:
    """`study predict`: model-based observers answer the run's built study (`study.observers.predict`,
    with the power each pair's predicted effect implies), the analysis stage's `analyze` reads their
    answers as it reads people's, and `prediction/prediction.json` lists where everything is."""
    from prunexplain.analysis.stage import analyze
    from prunexplain.study.observers import predict
    from prunexplain.study.simulate import SimulationResult

    observed = predict(settings, run)
    listing, parts = {}, []
    for key, result in observed.items():
        folder = run.prediction.answers(key)
        analysed = analyze(result.kind, [result.results], settings.analysis, run.prediction.analysis(key),
                           key=run.study.key_if_any())
        listing[key] = {"kind": result.kind, "source": "observers", "files": [str(result.results)],
                        "truth": str(folder.truth), "analysis": str(run.prediction.analysis(key)),
                        "power": str(folder.power) if result.power else None}
        table = SimulationResult(result.kind, result.results, result.truth, result.power).markdown()
        where = f"{run.prediction.analysis(key)} ({analysed.summary['answers']} answers)"
        parts.append(f"## {key}: predicted by model-based observers, not people\n\n{table}\n"
                     f"Analysis of these answers: {where}")
    write_json(run.prediction.summary, listing)
    return "\n\n".join(parts) + f"\n\nPrediction listed in {run.prediction.summary}"
