"""A run's job graph, and the local, Ray and Slurm (submitit's local executor) backends against serial."""

import json

import numpy as np
import pytest
import torch

from prunexplain.config import UserError
from prunexplain.jobs.backends import Engine, _drive, run_jobs
from prunexplain.jobs.graph import Job, job_graph, job_records
from prunexplain.pipeline import run_pipeline
from prunexplain.runs import ModelKey, Run
from tests.conftest import tiny_settings

METHODS = '["local_magnitude_unstructured", "local_random_unstructured"]'
SAME = ["run.seeds=[0, 1]", "prune.rates=[2]", f"prune.methods={METHODS}", "evaluate.sanity=false",
        "evaluate.meta_images=0", "runtime.threads=1", "runtime.deterministic=true", 'runtime.device="cpu"']


def _settings(root, dataset, *more):
    return tiny_settings(root, dataset, *SAME, *more)


def test_the_graph_has_per_seed_training_one_chain_per_method_then_the_models_then_the_rest(tmp_path, tiny_dataset):
    jobs = {job.name: job for job in job_graph(_settings(tmp_path, tiny_dataset))}
    assert len(jobs) == 2 * 4 + 1
    assert jobs["seed 1 prune local_random_unstructured"].needs == ("seed 1 train",)
    assert jobs["seed 0 explain and evaluate"].needs == ("seed 0 prune local_magnitude_unstructured",
                                                         "seed 0 prune local_random_unstructured")
    assert jobs["study, analysis, verdict and report"].needs == ("seed 0 explain and evaluate",
                                                                 "seed 1 explain and evaluate")
    only = job_graph(_settings(tmp_path, tiny_dataset), until="prune")
    assert [job.part for job in only] == ["train", "prune", "prune"] * 2
    with pytest.raises(UserError, match="--until with a backend: one of train, prune, evaluate"):
        job_graph(_settings(tmp_path, tiny_dataset), until="study")


class _Engine:
    """Runs each job at once, failing the named ones the given number of times first."""

    def __init__(self, failures: dict[str, int]):
        self.failures, self.order = dict(failures), []

    def engine(self) -> Engine:
        def submit(job: Job, settings):
            self.order.append(job.name)
            return job

        def result(job: Job) -> str:
            if self.failures.get(job.name, 0) > 0:
                self.failures[job.name] -= 1
                raise RuntimeError("the node went away")
            return f"{job.name} ok"

        return Engine(submit, lambda handles: handles[:1], result)


def test_the_driver_runs_each_job_after_its_inputs_and_retries_a_failed_one():
    jobs = [(job, None) for job in (Job("a", "train", 0), Job("b", "prune", 0, ("a",)), Job("c", "prune", 0, ("a",)),
                                    Job("d", "models", 0, ("b", "c")))]
    fake = _Engine({"b": 1})
    assert _drive(jobs, fake.engine(), retries=1).splitlines() == ["a: a ok", "b: b ok", "c: c ok", "d: d ok"]
    assert fake.order == ["a", "b", "c", "b", "d"]  # b again after its failure, d only after both
    with pytest.raises(UserError, match="job 'b' failed 1 time\\(s\\): the node went away"):
        _drive(jobs, _Engine({"b": 1}).engine(), retries=0)


@pytest.fixture(scope="module")
def serial(tmp_path_factory, tiny_dataset):
    """Both seeds' replicates through evaluate, one stage after another in this process."""
    settings = _settings(tmp_path_factory.mktemp("serial"), tiny_dataset)
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="evaluate")
    run_pipeline(settings.replicate(1), Run(run.replicate(1)), until="evaluate")
    return run


def _same_results(run: Run, reference: Run, scores: bool) -> None:
    """Bit for bit: every checkpoint's weights (and every per-image score), of both replicates."""
    for seed in (None, 1):
        mine, theirs = (r if seed is None else Run(r.replicate(seed)) for r in (run, reference))
        keys = list(theirs.models())
        assert list(mine.models()) == keys and len(keys) == 3
        for key in keys:
            a, b = (torch.load(r.checkpoint(key), weights_only=True)["state_dict"] for r in (mine, theirs))
            assert all(torch.equal(a[name], b[name]) for name in b), key
        if scores:
            computed, expected = dict(np.load(mine.scores)), dict(np.load(theirs.scores))
            assert computed.keys() == expected.keys()
            assert all(np.array_equal(computed[k], expected[k], equal_nan=True) for k in expected)


# Ray and submitit through pruning only: the explanations and metrics are the same code in the same
# kind of process as the local pool's, whose run goes through evaluate (the suite's time is bounded).
@pytest.mark.parametrize("backend, until", [("local", "evaluate"), ("ray", "prune"), ("slurm", "prune")])
def test_a_backend_computes_what_serial_computes(backend, until, serial, tmp_path, tiny_dataset):
    if backend == "ray":
        pytest.importorskip("ray", reason="the cluster extra: pip install 'prunexplain[cluster]'")
    if backend == "slurm":
        pytest.importorskip("submitit", reason="the cluster extra: pip install 'prunexplain[cluster]'")
    settings = _settings(tmp_path, tiny_dataset, 'cluster.executor="local"')
    summary = run_jobs(settings, backend, workers=2, until=until)
    assert "seed 1 prune local_random_unstructured: local_random_unstructured: 1 rates" in summary
    run = Run(settings.run_dir)
    _same_results(run, serial, scores=until == "evaluate")
    records = job_records(settings)
    assert len(records) == (8 if until == "evaluate" else 6) and all(r["status"] == "done" for r in records.values())
    record = records["seed 1 train"]
    assert record["seed"] == 1 and record["threads"] == 1 and record["ended"] >= record["started"]
    assert record["packages"]["torch"] == torch.__version__.split("+")[0] or record["packages"]["torch"]
    # a second run finds every job finished and recomputes nothing
    stamp = Run(run.replicate(1)).checkpoint(ModelKey.pruned("local_random_unstructured", 2.0)).stat().st_mtime_ns
    again = run_jobs(settings, backend, workers=2, until=until)
    assert again.count("train: done (skipped)") >= 2 and "train: test top-1" not in again
    assert Run(run.replicate(1)).checkpoint(ModelKey.pruned("local_random_unstructured", 2.0)).stat().st_mtime_ns \
        == stamp
    assert json.loads(run.job_record("seed 1 train").read_text())["status"] == "done"
    assert not any(record["computed"] for record in job_records(settings).values())  # every job found it done


def test_a_failed_job_is_recorded_with_its_error_and_log_tail(tmp_path, tiny_dataset):
    import logging

    from prunexplain.jobs.graph import execute

    settings = _settings(tmp_path, tiny_dataset)
    job = Job("seed 0 prune local_random_unstructured", "prune", 0, ("seed 0 train",), "local_random_unstructured")
    logging.getLogger("prunexplain").setLevel(logging.INFO)
    try:
        with pytest.raises(UserError, match="no trained model"):
            execute(job, settings)
    finally:
        logging.getLogger("prunexplain").setLevel(logging.NOTSET)
    record = json.loads(Run(settings.run_dir).job_record(job.name).read_text())
    assert record["status"] == "failed" and "UserError" in record["error"] and record["seed"] == 0
    assert any(f"{job.name}: started on" in line for line in record["log_tail"]) and record["settings"]
    assert not any(type(h).__name__ == "_LogTail" for h in logging.getLogger().handlers)  # removed after use


def test_a_preempted_slurm_job_is_requeued_with_the_same_job_and_settings(tmp_path, tiny_dataset):
    """submitit calls `checkpoint` on preemption or timeout and resubmits what it returns; the rerun skips
    what finished through the done-markers (as every test of a rerun above shows)."""
    submitit = pytest.importorskip("submitit")
    from prunexplain.jobs.backends import Resumable

    settings = _settings(tmp_path, tiny_dataset)
    job = Job("seed 0 train", "train", 0)
    again = Resumable().checkpoint(job, settings)
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert isinstance(again.function, Resumable) and again.args == (job, settings)
