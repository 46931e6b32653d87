"""A run as a graph of independent jobs, for backends that run them side by side.

Per replicate (seed; one without `run.seeds`): dense training, then one pruning chain per method
(each rate starts from the previous one), then the replicate's explanations and metrics; after every
replicate, the run's own remaining stages (study, crowd, analysis, seeds, verdict, report). Every job
goes through the same done-markers and per-rate fingerprints as `prunexplain run`, so a job that
finished earlier, in any backend, is skipped in seconds, and serial and parallel runs share every
result.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from prunexplain.config import Settings, UserError, json_digest
from prunexplain.runs import Run, write_json

log = logging.getLogger(__name__)

TRAIN, SHARE, PRUNE, MODELS, REST = "train", "share", "prune", "models", "rest"


@dataclass(frozen=True)
class Job:
    name: str  # unique in its graph: "seed 0 train", "seed 0 prune local_magnitude_unstructured", ...
    part: str  # TRAIN, PRUNE, MODELS or REST
    seed: int
    needs: tuple[str, ...] = ()
    method: str | None = None
    source: str | None = None  # SHARE: the replicate folder whose trained model (and dataset) this one links

    @property
    def trains(self) -> bool:
        """Whether it trains a network (a GPU's worth of work; explaining and the rest need a share)."""
        return self.part in (TRAIN, PRUNE)


UNTIL = ("train", "prune", "evaluate")  # where a graph may stop: after each replicate's training, pruning or metrics


def job_graph(settings: Settings, until: str | None = None, prefix: str = "") -> list[Job]:
    """The run's jobs (through `until`, one of UNTIL; None: every stage), each after the jobs it reads
    (`needs`), in an order that runs them serially; `prefix` before every name (a sweep's point)."""
    from prunexplain.pruning.schedule import variants

    if until is not None and until not in UNTIL:
        raise UserError(f"--until with a backend: one of {', '.join(UNTIL)}, or none for every stage")
    jobs, last = [], []
    for seed in settings.replicate_seeds():
        train = Job(f"{prefix}seed {seed} train", TRAIN, seed)
        chains = [Job(f"{prefix}seed {seed} prune {method}", PRUNE, seed, (train.name,), method)
                  for method in variants(settings.prune)] if until != "train" else []
        models = Job(f"{prefix}seed {seed} explain and evaluate", MODELS, seed,
                     tuple(c.name for c in chains) or (train.name,))
        jobs += [train, *chains, *([models] if until in (None, "evaluate") else [])]
        last.append(models.name)
    if until is not None:
        return jobs
    return [*jobs, Job(f"{prefix}study, analysis, verdict and report", REST, settings.train.seed, tuple(last))]


def execute(job: Job, settings: Settings) -> str:
    """Run one job in this process, recording its provenance in `jobs/<name>.json` of the run."""
    import torch

    from prunexplain.pipeline import run_pipeline
    from prunexplain.pruning.schedule import prune_methods

    if settings.runtime.threads is not None:  # this process's share of the cores, from the first line on
        torch.set_num_threads(settings.runtime.threads)
    own = settings.replicate(job.seed)
    run = Run(own.run_dir)
    record = _provenance(job, settings)
    started = time.time()
    tail = _LogTail()
    logging.getLogger().addHandler(tail)
    log.info("%s: started on %s (pid %d)", job.name, record["host"], record["pid"])
    try:
        if job.part == SHARE:
            _link_training(Path(job.source), run)
        if job.part in (TRAIN, SHARE):
            summary = run_pipeline(own, run, until="train")
        elif job.part == PRUNE and _stage_done(own, run, "prune"):
            summary = f"{job.method}: done (skipped)"  # rewriting its tables would put the stage out of date
        elif job.part == PRUNE:
            rows = prune_methods(own, run, [job.method])
            summary = f"{job.method}: {len(rows[job.method]) - 1} rates in {run.prune_results(job.method)}"
        elif job.part == MODELS:
            summary = run_pipeline(own, run, until="evaluate")
        else:
            summary = run_pipeline(settings, run)
    except BaseException as error:
        _record(settings, job, {**record, "started": started, "ended": time.time(), "status": "failed",
                                "error": f"{type(error).__name__}: {error}", "log_tail": list(tail.lines)})
        raise
    finally:
        logging.getLogger().removeHandler(tail)
    computed = _computed(job, run, summary, started)
    _record(settings, job, {**record, "started": started, "ended": time.time(), "status": "done",
                            "computed": computed})
    return summary


def _computed(job: Job, run: Run, summary: str, started: float) -> bool:
    """Whether the job computed anything, or found all of it finished: a stage that ran (its summary is
    not "done (skipped)"), or a pruned checkpoint written since the job started."""
    if job.part == PRUNE:
        return any(path.stat().st_mtime >= started for key, path in run.models().items()
                   if not key.dense and key.method == job.method)
    return any(not line.endswith("(skipped)") for line in summary.splitlines()[1:])


class _LogTail(logging.Handler):
    """The last log lines of one job, for the record of a failure."""

    def __init__(self, lines: int = 40) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _link_training(source: Path, run: Run) -> None:
    """Hard links of another run's dataset, decoded images and trained model (equal data, model and
    train settings): its done-markers then hold here too, and the train stage is skipped."""
    for stage in ("data", "cache", "train"):
        if (source / stage).is_dir() and not run.stage_dir(stage).exists():
            shutil.copytree(source / stage, run.stage_dir(stage), copy_function=os.link)


def _stage_done(settings: Settings, run: Run, name: str) -> bool:
    from prunexplain.pipeline import STAGES, fingerprints, stage_names

    index = stage_names().index(name)
    return run.is_done(name, fingerprints(settings, run, STAGES[: index + 1])[index])


def _provenance(job: Job, settings: Settings) -> dict:
    """What made a job's results: code, settings, seed, packages, machine."""
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"job": asdict(job), "commit": _commit(), "settings": json_digest(settings.model_dump(
        mode="json", exclude={"runtime"})), "seed": job.seed, "host": platform.node(), "pid": os.getpid(),
        "device": device, "threads": torch.get_num_threads(),
        "packages": {name: _version(name) for name in ("prunexplain", "torch", "torchvision", "ray", "submitit")}}


def _record(settings: Settings, job: Job, record: dict) -> Path:
    return write_json(Run(settings.run_dir).job_record(job.name), record)


def job_records(settings: Settings) -> dict[str, dict]:
    """Every recorded job of the run, by name."""
    records = [json.loads(path.read_text()) for path in sorted(Run(settings.run_dir).jobs_dir.glob("*.json"))]
    return {record["job"]["name"]: record for record in records}


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
