import os
import signal
import subprocess
import sys
import time

import pytest

from prunexplain.config import UserError
from prunexplain.models import load_checkpoint
from prunexplain.pipeline import run_pipeline
from prunexplain.runs import Run
from tests.conftest import TINY, tiny_settings


def test_run_skips_finished_stages_and_reruns_changed_ones(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset)
    run = Run(settings.run_dir)
    report = run_pipeline(settings, run, until="evaluate")
    assert "train: test top-1" in report and str(run.root) in report
    assert "local_random_unstructured: test top-1 1x" in report and run.path("prune", "accuracy.png").exists()
    assert "explain: 5 models x 4 images" in report and run.path("explain", "dense", "maps.npy").exists()
    assert "evaluate: " in report and run.path("evaluate", "metrics.csv").exists()
    assert "study" not in report and not run.path("study").exists()
    model = run.path("train", "model.pt")
    stamp = model.stat().st_mtime_ns
    again = run_pipeline(settings, run, until="evaluate")
    assert "train: done (skipped)" in again and "prune: done (skipped)" in again
    assert model.stat().st_mtime_ns == stamp
    changed = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1")
    report = run_pipeline(changed, run, until="evaluate")
    assert "data: done (skipped)" in report and "train: test top-1" in report
    assert "prune: local_magnitude_unstructured" in report  # downstream of train: reruns too
    assert model.stat().st_mtime_ns != stamp
    assert "epochs = 1" in run.path("config.toml").read_text()
    with pytest.raises(UserError, match="--until: unknown stage 'fit'"):
        run_pipeline(settings, run, until="fit")


def _prunexplain_run(tmp_path, dataset, *extra):
    """`prunexplain run` in a child process (its own process group, so SIGKILL takes it whole)."""
    sets = [f"--set={item}" for item in [*TINY, f'run.root="{tmp_path / "runs"}"', f'data.root="{dataset}"', *extra]]
    command = [sys.executable, "-m", "prunexplain", "run", "--until", "prune", *sets]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=tmp_path)


def _kill_when(process, ready, after: float = 0.0, timeout: float = 120) -> None:
    """SIGKILL the run `after` seconds past the moment `ready()` turns true."""
    start = time.monotonic()
    while not ready():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() - start < timeout, "the run never reached the point to kill it at"
        time.sleep(0.05)
    time.sleep(after)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _no_temp_files(run: Run) -> bool:
    return not [p for p in run.root.rglob("*.tmp")]


@pytest.mark.slow
def test_a_run_killed_in_training_or_pruning_resumes_without_redoing_work(tmp_path, tiny_dataset):
    extra = ("train.epochs=40", "train.patience=40", "prune.rates=[2, 4, 8]", "prune.max_epochs=3")
    run = Run(tmp_path / "runs" / "demo")
    history = run.path("train", "history.csv")
    process = _prunexplain_run(tmp_path, tiny_dataset, *extra)
    _kill_when(process, run.path("data", ".done").exists, after=1.0)  # training has begun
    assert not run.path("train", ".done").exists() and not history.exists() and _no_temp_files(run)

    first_rate = run.path("prune", "local_magnitude_unstructured", "cr_2", "model.pt")
    process = _prunexplain_run(tmp_path, tiny_dataset, *extra)
    _kill_when(process, first_rate.exists)
    assert run.path("train", ".done").exists() and not run.path("prune", ".done").exists() and _no_temp_files(run)
    trained = run.path("train", "model.pt").stat().st_mtime_ns
    finished = first_rate.stat().st_mtime_ns

    process = _prunexplain_run(tmp_path, tiny_dataset, *extra)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "data: done (skipped)" in output and "train: done (skipped)" in output
    assert "local_magnitude_unstructured 2x: done already" in output
    assert run.path("train", "model.pt").stat().st_mtime_ns == trained and first_rate.stat().st_mtime_ns == finished
    assert run.path("prune", ".done").exists() and _no_temp_files(run)
    for rate in (2, 4, 8):
        load_checkpoint(run.path("prune", "local_random_unstructured", f"cr_{rate}", "model.pt"))
