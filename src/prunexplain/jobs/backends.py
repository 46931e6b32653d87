"""Backends that run a run's job graph (`prunexplain.jobs.graph`) on an existing engine.

`local`: a pool of processes on this machine (one job per GPU, else the cores divided among the
workers); `ray`: Ray tasks (a local Ray, or the cluster at `--address`), training jobs asking for a
GPU where there is one and the others for a share; `slurm`: one submitit job per graph node (Slurm,
or submitit's local executor), requeued on preemption. One driver loop serves all three: it submits
every job whose inputs are finished, waits for the first to end, retries a failed one up to
`retries` times, and stops at the first that keeps failing. Nothing here schedules work itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunexplain.config import Settings, UserError
from prunexplain.jobs.graph import MODELS, Job, execute, job_graph
from prunexplain.runs import Run

log = logging.getLogger(__name__)

BACKENDS = ("serial", "local", "ray", "slurm")


@dataclass
class Engine:
    """How one backend submits a job, waits for the first of some to end, and reads a result."""

    submit: Callable[[Job, Settings], Any]
    wait: Callable[[list[Any]], list[Any]]  # the handles that have ended (at least one)
    result: Callable[[Any], str]  # the job's summary, or its error raised
    close: Callable[[], None] = lambda: None


def run_jobs(settings: Settings, backend: str, workers: int | None = None, address: str | None = None,
             retries: int = 0, until: str | None = None) -> str:
    """Run the run's job graph (through `until`: train, prune or evaluate, else every stage) on
    `backend`; returns each job's summary."""
    from prunexplain.preflight import preflight

    jobs = job_graph(settings, until)
    preflight(settings, ["data", "train", "prune", "explain", "evaluate"] if until else None)
    return run_graph([(job, settings) for job in jobs], backend, Run(settings.run_dir).jobs_dir, workers, address,
                     retries)


def run_graph(jobs: list[tuple[Job, Settings]], backend: str, folder: Path, workers: int | None = None,
              address: str | None = None, retries: int = 0) -> str:
    """Run jobs (each with the settings of its run) on `backend`, each after the jobs it needs; `folder`
    keeps the backend's own files (submitit's logs)."""
    if backend not in BACKENDS:
        raise UserError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "serial":
        return "\n".join(f"{job.name}: {execute(job, settings)}" for job, settings in jobs)
    workers = workers or _default_workers()
    first = jobs[0][1]
    engine = {"local": _local, "ray": _ray, "slurm": _slurm}[backend](first, workers, address, folder)
    try:
        return _drive(jobs, engine, retries)
    finally:
        engine.close()


def _drive(jobs: list[tuple[Job, Settings]], engine: Engine, retries: int) -> str:
    """Submit what is ready, wait for what ends, until every job has finished (or one failed for good)."""
    finished: dict[str, str] = {}
    attempts: dict[str, int] = {}
    running: dict[Any, tuple[Job, Settings]] = {}
    waiting = list(jobs)
    while waiting or running:
        for item in [(j, s) for j, s in waiting if all(n in finished for n in j.needs)]:
            waiting.remove(item)
            job = item[0]
            attempts[job.name] = attempts.get(job.name, 0) + 1
            log.info("submitting %s (attempt %d)", job.name, attempts[job.name])
            running[engine.submit(*item)] = item
        for handle in engine.wait(list(running)):
            item = running.pop(handle)
            job = item[0]
            try:
                finished[job.name] = engine.result(handle)
                log.info("%s: done", job.name)
            except Exception as error:
                if attempts[job.name] > retries:
                    raise UserError(f"job {job.name!r} failed {attempts[job.name]} time(s): {error}") from error
                log.warning("%s failed (%s); retrying", job.name, error)
                waiting.insert(0, item)
    return "\n".join(f"{job.name}: {finished[job.name]}" for job, _ in jobs)


def _default_workers() -> int:
    import torch

    return torch.cuda.device_count() or max(1, (os.cpu_count() or 1) // 2)


def _share_cores(settings: Settings, workers: int) -> Settings:
    """`settings` with each worker's torch threads (`_threads`) in runtime.threads."""
    threads = _threads(settings, workers)
    return settings.model_copy(update={"runtime": settings.runtime.model_copy(update={"threads": threads})})


def _threads(settings: Settings, workers: int) -> int:
    """Each worker's torch threads: runtime.threads, else the cores divided among the workers (two runs
    side by side, each using every core, took 2.3x longer than one after the other)."""
    return settings.runtime.threads or max(1, (os.cpu_count() or 1) // workers)


def _local(settings: Settings, workers: int, address: str | None, folder: Path) -> Engine:
    import torch

    context = multiprocessing.get_context("spawn")  # a forked torch can hang in its thread pools
    gpus = torch.cuda.device_count()
    manager = context.Manager() if gpus else None
    if manager is not None:
        free = manager.Queue()
        for index in range(gpus):
            free.put(index)
        workers = min(workers, gpus)
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                  initializer=_pin_gpu if gpus else None,
                                                  initargs=(free,) if gpus else ())
    def wait(handles):
        done, _ = concurrent.futures.wait(handles, return_when=concurrent.futures.FIRST_COMPLETED)
        return list(done)

    def close() -> None:
        pool.shutdown(cancel_futures=True)
        if manager is not None:
            manager.shutdown()

    return Engine(lambda job, own: pool.submit(execute, job, _share_cores(own, workers)), wait,
                  lambda handle: handle.result(), close)


def _pin_gpu(queue) -> None:
    """A pool worker takes the next free GPU for its life (CUDA_VISIBLE_DEVICES before torch starts)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())


def _ray(settings: Settings, workers: int, address: str | None, folder: Path) -> Engine:
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray: Ray is not installed; pip install 'prunexplain[cluster]'") from None
    import torch

    ray.init(address=address, num_cpus=None if address else workers * _threads(settings, workers),
             ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    gpu = torch.cuda.is_available() or bool(ray.cluster_resources().get("GPU"))
    remote = ray.remote(execute)

    def submit(job: Job, own: Settings):
        share = (1 if job.trains else 0.25 if job.part == MODELS else 0) if gpu else 0
        return remote.options(num_cpus=_threads(own, workers), num_gpus=share, max_retries=0).remote(
            job, _share_cores(own, workers))

    def wait(handles):
        done, _ = ray.wait(handles, num_returns=1)
        return done

    return Engine(submit, wait, ray.get, lambda: None if address else ray.shutdown())


def _slurm(settings: Settings, workers: int, address: str | None, folder: Path) -> Engine:
    try:
        import submitit
    except ImportError:
        raise UserError("--backend slurm: submitit is not installed; pip install 'prunexplain[cluster]'") from None
    cluster = settings.cluster
    local = cluster.executor == "local"
    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster="local" if local else None)
    options = {"timeout_min": cluster.time_minutes, "cpus_per_task": cluster.cpus_per_job, "name": settings.run.name}
    if cluster.executor == "slurm":
        options.update(slurm_partition=cluster.partition, gpus_per_node=cluster.gpus_per_job)
    executor.update_parameters(**{k: v for k, v in options.items() if v is not None})
    share = 1 if cluster.executor == "slurm" else workers  # a Slurm job has its node's cores to itself

    def wait(handles):
        while not (done := [handle for handle in handles if handle.done()]):
            time.sleep(0.5)
        return done

    return Engine(lambda job, own: executor.submit(Resumable(), job, _share_cores(own, share)), wait,
                  lambda handle: handle.result())


class Resumable:
    """One job as a Slurm task that, preempted, is requeued with the same arguments: its rerun skips
    what finished (done-markers, per-rate fingerprints) and goes on from there."""

    def __call__(self, job: Job, settings: Settings) -> str:
        return execute(job, settings)

    def checkpoint(self, job: Job, settings: Settings):
        import submitit

        return submitit.helpers.DelayedSubmission(Resumable(), job, settings)
