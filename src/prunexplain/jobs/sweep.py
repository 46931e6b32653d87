"""`prunexplain sweep GRID.toml`: a base config and axes of settings, one run per point, one job graph.

The grid file:

    name = "finetune"                 # the sweep's folder: sweeps/finetune/ (under `root`, default sweeps)
    base = "demo.toml"                # the base config, relative to the grid file (none: the defaults)
    combine = "product"               # or "zip": the axes' values side by side (equal lengths)
    [[axis]]
    key = "prune.max_epochs"
    values = [1, 2]

Every point is a run folder `sweeps/<name>/point-<i>/`; its jobs join one graph run on the chosen
backend, and points whose data, model and training settings are equal share one dense training per
seed (hard links of the first point's). `sweeps/<name>/points.csv` maps points to their settings,
`results.csv` holds every point's test accuracy and metric means per method and rate, `verdicts.csv`
its breaking points, `metrics.png` one line per point and method, and `report.html` compares them.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prunexplain.config import Settings, UserError, load_settings, read_toml
from prunexplain.evaluate.plot import plot_metrics
from prunexplain.jobs.backends import run_graph
from prunexplain.jobs.graph import SHARE, TRAIN, Job, job_graph
from prunexplain.runs import Run, write_csv, write_text

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Axis(_Strict):
    key: str = Field(description="a setting, dotted: prune.max_epochs")
    values: list[Any] = Field(min_length=1)


class Grid(_Strict):
    name: str = Field(description="the sweep's folder under root")
    base: Path | None = Field(None, strict=False, description="base config, relative to the grid file")
    root: Path = Field(Path("sweeps"), strict=False)
    combine: Literal["product", "zip"] = "product"
    axis: list[Axis] = Field(min_length=1)


def read_grid(path: Path) -> Grid:
    try:
        grid = Grid.model_validate(read_toml(path))
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(map(str, problem["loc"]))
        raise UserError(f"{path}: {where}: {problem['msg']}") from None
    if grid.combine == "zip" and len({len(axis.values) for axis in grid.axis}) > 1:
        raise UserError(f"{path}: combine = 'zip' needs axes of equal length, not "
                        + ", ".join(f"{a.key} ({len(a.values)})" for a in grid.axis))
    return grid


def points(grid: Grid) -> list[dict[str, Any]]:
    """Every point of the grid: a setting -> value per axis."""
    keys = [axis.key for axis in grid.axis]
    rows = zip(*(a.values for a in grid.axis)) if grid.combine == "zip" else itertools.product(
        *(a.values for a in grid.axis))
    return [dict(zip(keys, row)) for row in rows]


def point_settings(grid: Grid, path: Path, overrides: list[str] = ()) -> list[Settings]:
    """Each point's settings: the base config, the command line's overrides, then the point's values."""
    base = (path.parent / grid.base) if grid.base else None
    settings = []
    for index, point in enumerate(points(grid)):
        where = [f'run.root="{grid.root / grid.name}"', f'run.name="point-{index:02d}"']
        values = [f"{key}={json.dumps(value)}" for key, value in point.items()]
        try:
            settings.append(load_settings(base, [*overrides, *values, *where]))
        except UserError as error:
            raise UserError(f"{path}: point {index} ({', '.join(values)}): {error}") from None
    return settings


def sweep(path: Path, backend: str = "serial", workers: int | None = None, address: str | None = None,
          retries: int = 0, until: str | None = None, overrides: list[str] = ()) -> str:
    """Run every point of the grid at `path` as one job graph; write the combined tables and report."""
    from prunexplain.preflight import preflight

    grid = read_grid(Path(path))
    runs = point_settings(grid, Path(path), list(overrides))
    folder = grid.root / grid.name
    for settings in runs:
        preflight(settings, ["data", "train", "prune", "explain", "evaluate"] if until else None)
    write_csv(folder / "points.csv", [{"point": s.run.name, **p} for s, p in zip(runs, points(grid))])
    jobs = _sweep_graph(runs, until)
    summary = run_graph(jobs, backend, folder / "jobs", workers, address, retries)
    written = combine(runs, folder)
    return f"{summary}\nsweep of {len(runs)} points: {', '.join(map(str, written))}"


def _sweep_graph(runs: list[Settings], until: str | None) -> list[tuple[Job, Settings]]:
    """Every point's jobs; a point whose data, model, training and seeds equal an earlier point's links
    that point's dense models instead of training its own."""
    first: dict[str, Settings] = {}
    jobs = []
    for settings in runs:
        key = settings.fingerprint("data", "model", "train", "run.seeds")
        trained_by = first.setdefault(key, settings)
        for job in job_graph(settings, until, prefix=f"{settings.run.name}: "):
            if job.part == TRAIN and trained_by is not settings:
                source = trained_by.replicate(job.seed).run_dir
                job = replace(job, part=SHARE, needs=(f"{trained_by.run.name}: seed {job.seed} train",),
                              source=str(source))
            jobs.append((job, settings))
    return jobs


def combine(runs: list[Settings], folder: Path) -> list[Path]:
    """`results.csv` (per point, method and rate: test top-1 and each metric's mean), `verdicts.csv`
    (per point, method and measure: where it holds and breaks) and the sweep's `report.html`."""
    from prunexplain.verdict.stage import BREAKING, breaking_rows

    results, verdicts = [], []
    for settings in runs:
        run = Run(settings.run_dir)
        results += [{"point": settings.run.name, **row} for row in _results(run)]
        if run.verdict.is_file():
            verdict = json.loads(run.verdict.read_text())
            verdicts += [{"point": settings.run.name, **dict(zip(BREAKING, row))} for row in breaking_rows(verdict)]
    written = [write_csv(folder / "results.csv", results)]
    if verdicts:
        written.append(write_csv(folder / "verdicts.csv", verdicts))
    lines = _lines(runs)
    if lines:
        written.append(plot_metrics(lines, {}, folder / "metrics.png"))
    written.append(write_text(folder / "report.html", _report(folder, runs, results, verdicts, bool(lines))))
    return written


def _results(run: Run) -> list[dict]:
    """One run's test top-1 (its prune tables) and metric means (its evaluate table), per method and rate."""
    rows: dict[tuple[str, float], dict] = {}
    for method, points in run.test_accuracies().items():
        for rate, accuracy in points:
            rows[("dense" if rate == 1 else method, rate)] = {"method": "dense" if rate == 1 else method,
                                                              "rate": rate, "test top-1": accuracy}
    if run.metrics.is_file():
        with open(run.metrics, newline="") as handle:
            for row in csv.DictReader(handle):
                entry = rows.setdefault((row["method"], float(row["rate"])),
                                        {"method": row["method"], "rate": float(row["rate"])})
                entry[f"{row.get('explainer', 'gradcam')} {row['metric']}"] = float(row["mean"])
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    return [{column: row.get(column, "") for column in columns} for row in rows.values()]


def _lines(runs: list[Settings]) -> list[dict]:
    """Every point's measures as lines of one figure, one per point and method, each from its point's
    dense model: the verdict's table (intervals over seeds and images) where a point has one, else its
    evaluate table; the study's explainer (Grad-CAM) and test accuracy, so the figure stays readable."""
    lines = []
    for settings in runs:
        run = Run(settings.run_dir)
        table = run.verdict_metrics if run.verdict_metrics.is_file() else run.metrics
        if not table.is_file():
            continue
        with open(table, newline="") as handle:
            rows = [{**row, **{k: float(row[k]) for k in ("rate", "mean", "ci_low", "ci_high")}}
                    for row in csv.DictReader(handle) if row.get("explainer", "gradcam") in ("gradcam", "-")]
        methods = {row["method"] for row in rows} - {"dense"}
        for row in rows:
            for method in methods if row["method"] == "dense" else [row["method"]]:
                lines.append({**row, "method": f"{settings.run.name} {method}"})
    return lines


def _report(folder: Path, runs: list[Settings], results: list[dict], verdicts: list[dict], figure: bool) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(loader=PackageLoader("prunexplain.jobs"), autoescape=select_autoescape())
    with open(folder / "points.csv", newline="") as handle:
        listed = list(csv.DictReader(handle))
    reports = {s.run.name: Run(s.run_dir).report.relative_to(folder).as_posix() for s in runs
               if Run(s.run_dir).report.is_file()}
    return environment.get_template("sweep.html").render(name=folder.name, points=listed, results=results,
                                                         verdicts=verdicts, reports=reports, figure=figure)
