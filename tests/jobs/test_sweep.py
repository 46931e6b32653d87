"""`prunexplain sweep`: a grid of settings as one job graph, shared dense models, combined results."""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from prunexplain.config import UserError
from prunexplain.jobs.graph import SHARE
from prunexplain.jobs.sweep import _sweep_graph, point_settings, points, read_grid, sweep
from prunexplain.runs import KILL_AFTER, ModelKey, Run
from tests.conftest import TINY

METHOD = "local_magnitude_unstructured"


def _grid(folder, dataset, combine="product", extra="") -> object:
    """A 2x2 grid over fine-tuning settings: every point trains alike, so one dense model serves all."""
    settings = dict(item.split("=", 1) for item in [
        *TINY, f'data.root="{dataset}"', "prune.rates=[2]", f'prune.methods=["{METHOD}"]', "runtime.threads=1",
        "runtime.deterministic=true"])
    tables: dict[str, list[str]] = {}
    for dotted, value in settings.items():
        section, key = dotted.split(".", 1)
        tables.setdefault(section, []).append(f"{key} = {value}")
    (folder / "base.toml").write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in tables.items()))
    grid = folder / "grid.toml"
    grid.write_text(f'name = "tiny"\nbase = "base.toml"\nroot = "{folder / "sweeps"}"\ncombine = "{combine}"\n'
                    '[[axis]]\nkey = "prune.max_epochs"\nvalues = [0, 1]\n'
                    f'[[axis]]\nkey = "prune.learning_rate"\nvalues = [0.001, 0.002]\n{extra}')
    return grid


def test_the_grid_expands_to_its_points_and_refuses_bad_axes(tmp_path, tiny_dataset):
    grid = read_grid(_grid(tmp_path, tiny_dataset))
    assert points(grid) == [{"prune.max_epochs": 0, "prune.learning_rate": 0.001},
                            {"prune.max_epochs": 0, "prune.learning_rate": 0.002},
                            {"prune.max_epochs": 1, "prune.learning_rate": 0.001},
                            {"prune.max_epochs": 1, "prune.learning_rate": 0.002}]
    zipped = read_grid(_grid(tmp_path, tiny_dataset, "zip"))
    assert [p["prune.learning_rate"] for p in points(zipped)] == [0.001, 0.002]
    runs = point_settings(grid, tmp_path / "grid.toml")
    assert [s.run_dir for s in runs] == [tmp_path / "sweeps" / "tiny" / f"point-0{i}" for i in range(4)]
    assert runs[3].prune.max_epochs == 1 and runs[3].prune.learning_rate == 0.002
    bad = _grid(tmp_path, tiny_dataset, "zip", '[[axis]]\nkey = "train.epochs"\nvalues = [1, 2, 3]\n')
    with pytest.raises(UserError, match="combine = 'zip' needs axes of equal length"):
        read_grid(bad)
    wrong = _grid(tmp_path, tiny_dataset, extra='[[axis]]\nkey = "prune.learning_rate"\nvalues = [-1]\n')
    with pytest.raises(UserError, match="grid.toml: point 0 .*prune.learning_rate"):
        point_settings(read_grid(wrong), wrong)


def test_points_that_train_alike_share_one_dense_training(tmp_path, tiny_dataset):
    path = _grid(tmp_path, tiny_dataset)
    jobs = _sweep_graph(point_settings(read_grid(path), path), "prune")
    trains = [job for job, _ in jobs if job.part in ("train", SHARE)]
    assert [job.part for job in trains] == ["train", SHARE, SHARE, SHARE]
    assert all(job.needs == ("point-00: seed 0 train",) for job in trains[1:])


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory, tiny_dataset):
    folder = tmp_path_factory.mktemp("serial_sweep")
    sweep(_grid(folder, tiny_dataset), "serial", until="prune")
    return folder / "sweeps" / "tiny"


def _weights(folder) -> dict[str, dict[str, torch.Tensor]]:
    return {f"{point}/{key}": torch.load(Run(folder / point).checkpoint(key), weights_only=True)["state_dict"]
            for point in ("point-00", "point-01", "point-02", "point-03")
            for key in (ModelKey(), ModelKey.pruned(METHOD, 2.0))}


def test_a_serial_sweep_combines_every_point(serial_sweep):
    with open(serial_sweep / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = [(f"point-0{i}", method) for i in range(4) for method in ("dense", METHOD)]
    assert [(r["point"], r["method"]) for r in rows] == expected
    assert "point-03" in (serial_sweep / "report.html").read_text()
    dense = [os.stat(Run(serial_sweep / f"point-0{i}").dense_checkpoint).st_ino for i in range(4)]
    assert len(set(dense)) == 1  # one training, hard-linked into every point
    weights = _weights(serial_sweep)
    different = weights[f"point-00/{METHOD}/cr_2"], weights[f"point-03/{METHOD}/cr_2"]
    assert any(not torch.equal(different[0][n], different[1][n]) for n in different[0])  # the axes took effect


@pytest.mark.parametrize("backend", ["ray", "slurm"])
def test_a_sweep_on_a_backend_equals_the_serial_one(backend, serial_sweep, tmp_path, tiny_dataset):
    pytest.importorskip({"ray": "ray", "slurm": "submitit"}[backend])
    sweep(_grid(tmp_path, tiny_dataset), backend, workers=2, until="prune",
          overrides=['cluster.executor="local"'])
    mine, expected = _weights(tmp_path / "sweeps" / "tiny"), _weights(serial_sweep)
    assert all(torch.equal(mine[name][k], expected[name][k]) for name in expected for k in expected[name])


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_recomputing_what_finished(tmp_path, tiny_dataset):
    grid = _grid(tmp_path, tiny_dataset)
    command = [sys.executable, "-m", "prunexplain", "sweep", str(grid), "--until", "prune"]
    killed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, KILL_AFTER: f"rate:{METHOD}/cr_2"})
    assert killed.returncode == -signal.SIGKILL
    first = Run(tmp_path / "sweeps" / "tiny" / "point-00")
    stamps = {path: path.stat().st_mtime_ns for path in (first.dense_checkpoint,
                                                          first.checkpoint(ModelKey.pruned(METHOD, 2.0)))}
    assert not Run(tmp_path / "sweeps" / "tiny" / "point-01").checkpoint(ModelKey.pruned(METHOD, 2.0)).exists()
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps  # the finished work was kept
    assert "point-00: seed 0 train: run directory" in done.stdout and "train: done (skipped)" in done.stdout
    assert Run(tmp_path / "sweeps" / "tiny" / "point-03").checkpoint(ModelKey.pruned(METHOD, 2.0)).exists()
    # the rerun computed exactly what was unfinished: the other three points' pruning
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "tiny").glob("point-*/jobs/*.json")]
    assert len(records) == 8 and sorted(r["job"]["name"] for r in records if r["computed"]) == [
        f"point-0{i}: seed 0 prune {METHOD}" for i in (1, 2, 3)]


def test_the_sweep_figure_draws_each_point_from_its_own_dense_model(tmp_path, tiny_dataset):
    from prunexplain.jobs.sweep import _lines, combine
    from prunexplain.runs import write_csv

    path = _grid(tmp_path, tiny_dataset)
    runs = point_settings(read_grid(path), path)[:2]
    for index, settings in enumerate(runs):  # the verdict's table of each point: dense 0.5 / 0.6, 2x lower
        rows = [{"explainer": "gradcam", "metric": "energy_pointing_game", "method": method, "rate": rate,
                 "mean": mean + index / 10, "ci_low": mean - 0.1, "ci_high": mean + 0.1}
                for method, rate, mean in (("dense", 1.0, 0.5), (METHOD, 2.0, 0.4))]
        rows.append({**rows[1], "explainer": "saliency"})  # other explainers stay out of the figure
        write_csv(Run(settings.run_dir).verdict_metrics, rows)
    lines = _lines(runs)
    assert [(r["method"], r["rate"], round(r["mean"], 3)) for r in lines] == [
        (f"point-00 {METHOD}", 1.0, 0.5), (f"point-00 {METHOD}", 2.0, 0.4),
        (f"point-01 {METHOD}", 1.0, 0.6), (f"point-01 {METHOD}", 2.0, 0.5)]
    write_csv(tmp_path / "sweeps" / "tiny" / "points.csv", [{"point": s.run.name} for s in runs])
    written = combine(runs, tmp_path / "sweeps" / "tiny")
    assert tmp_path / "sweeps" / "tiny" / "metrics.png" in written
    assert 'src="metrics.png"' in (tmp_path / "sweeps" / "tiny" / "report.html").read_text()
