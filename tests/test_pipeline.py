import os
import signal
import subprocess
import sys
import tomllib

import pytest
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import UserError
from prunexplain.models import load_checkpoint
from prunexplain.pipeline import run_pipeline
from prunexplain.runs import KILL_AFTER, ModelKey, Run
from tests.conftest import TINY, tiny_settings

RUNTIME = [
    'runtime.device="cpu"', "runtime.progress=true", "runtime.num_workers=1", "runtime.threads=1",
    "runtime.cache=false", "runtime.amp=false", "runtime.channels_last=false",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_dataset):
    """A run finished up to evaluate, and the stamps of every file in it."""
    root = tmp_path_factory.mktemp("finished")
    settings = tiny_settings(root, tiny_dataset, "evaluate.sanity=false")
    run = Run(settings.run_dir)
    report = run_pipeline(settings, run, until="evaluate")
    assert "train: test top-1" in report and "explain: 5 models x 4 images" in report
    return settings, run, root


def _stamps(run: Run) -> dict[str, int]:
    return {str(p.relative_to(run.root)): p.stat().st_mtime_ns for p in run.root.rglob("*") if p.is_file()
            and p.name not in ("config.toml",) and not p.name.startswith(".")}


def test_changing_how_work_runs_reruns_nothing(finished, tiny_dataset, tmp_path):
    settings, run, root = finished
    before = _stamps(run)
    extra = [f'runtime.cache_dir="{tmp_path / "cache"}"', f'runtime.results_path="{tmp_path / "r.json"}"',
             f'runtime.model_path="{tmp_path / "m.pt"}"']
    for item in [*RUNTIME, *extra]:
        report = run_pipeline(tiny_settings(root, tiny_dataset, "evaluate.sanity=false", item), run, until="evaluate")
        assert report.count("done (skipped)") == 5, (item, report)
    # older files naming runtime keys in their stage sections still work, with a deprecation line
    older = tiny_settings(root, tiny_dataset, "evaluate.sanity=false", "train.progress=false", "data.cache=false")
    report = run_pipeline(older, run, until="evaluate")
    assert report.count("done (skipped)") == 5
    assert _stamps(run) == before


def test_a_changed_setting_reruns_its_stage_and_the_later_ones(finished, tiny_dataset, tmp_path):
    settings, run, root = finished
    dense = run.dense_checkpoint.stat().st_mtime_ns
    report = run_pipeline(tiny_settings(root, tiny_dataset, "evaluate.sanity=false", "evaluate.steps=5"), run,
                          until="evaluate")
    assert report.count("done (skipped)") == 4 and "evaluate: " in report
    assert run.dense_checkpoint.stat().st_mtime_ns == dense
    assert tomllib.loads(run.config.read_text())["evaluate"]["steps"] == 5
    run_pipeline(settings, run, until="evaluate")  # back to the fixture's settings
    with pytest.raises(UserError, match="--until: unknown stage 'fit'"):
        run_pipeline(settings, run, until="fit")


def test_a_stage_command_refuses_settings_the_run_was_not_computed_with(finished, tiny_dataset):
    settings, run, root = finished
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--run", str(run.root), "--set", "data.image_size=48"])
    assert result.exit_code == 2 and "data.image_size = 48" in result.output and "computed with 32" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["prune", "--run", str(run.root), "--set", "train.seed=3"])
    assert result.exit_code == 2 and "train.seed = 3" in result.output
    other = root / "other-data"  # another dataset: refused, never generated and fine-tuned on
    result = runner.invoke(app, ["prune", "--run", str(run.root), "--set", f'data.root="{other}"'])
    assert result.exit_code == 2 and "data.root = " in result.output and not other.exists()
    # with the run's own settings, the stage command goes through the markers: nothing to do
    result = runner.invoke(app, ["explain", "--run", str(run.root)])
    assert result.exit_code == 0 and "done already" in result.output


def test_a_replaced_output_is_not_taken_as_finished(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset, "prune.rates=[2]",
                             'prune.methods=["local_magnitude_unstructured"]')
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="train")
    trained = run.dense_checkpoint.read_bytes()
    run.dense_checkpoint.write_bytes(trained)  # same bytes, but written by someone else
    report = run_pipeline(settings, run, until="train")
    assert "train: test top-1" in report  # retrained rather than trusting a file it did not write


def _prunexplain_run(tmp_path, dataset, kill_after, *extra):
    """`prunexplain run` in a child process, SIGKILLed by the fault-injection point `kill_after`."""
    sets = [f"--set={item}" for item in [*TINY, f'run.root="{tmp_path / "runs"}"', f'data.root="{dataset}"', *extra]]
    command = [sys.executable, "-m", "prunexplain", "run", "--until", "prune", *sets]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, KILL_AFTER: kill_after})


@pytest.mark.slow
def test_a_killed_run_resumes_and_its_config_describes_what_was_computed(tmp_path, tiny_dataset):
    run = Run(tmp_path / "runs" / "demo")
    extra = ("prune.rates=[2, 4]", 'prune.methods=["local_magnitude_unstructured"]')
    killed = _prunexplain_run(tmp_path, tiny_dataset, "stage:train", *extra)
    assert killed.returncode == -signal.SIGKILL and run.record("train") and not run.record("prune")

    killed = _prunexplain_run(tmp_path, tiny_dataset, "rate:local_magnitude_unstructured/cr_2", *extra)
    assert killed.returncode == -signal.SIGKILL and "train: done (skipped)" not in killed.stdout  # killed: no summary
    first = run.checkpoint(ModelKey("local_magnitude_unstructured", 2.0))
    assert first.exists() and not run.checkpoint(ModelKey("local_magnitude_unstructured", 4.0)).exists()
    trained, finished = run.dense_checkpoint.stat().st_mtime_ns, first.stat().st_mtime_ns

    # a rerun asking for 5 epochs, killed during its first epoch: config.toml still describes the model it holds
    killed = _prunexplain_run(tmp_path, tiny_dataset, "epoch:train/0", "train.epochs=5", *extra)
    assert killed.returncode == -signal.SIGKILL
    assert tomllib.loads(run.config.read_text())["train"]["epochs"] == 2
    assert run.dense_checkpoint.stat().st_mtime_ns == trained

    # the original settings again: nothing finished is recomputed, pruning goes on at 4x
    done = _prunexplain_run(tmp_path, tiny_dataset, "", *extra)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "data: done (skipped)" in done.stdout and "train: done (skipped)" in done.stdout
    assert "local_magnitude_unstructured 2x: done already" in done.stderr
    assert first.stat().st_mtime_ns == finished and run.dense_checkpoint.stat().st_mtime_ns == trained
    load_checkpoint(run.checkpoint(ModelKey("local_magnitude_unstructured", 4.0)))
    assert not list(run.root.rglob("*.tmp"))
