"""`prunexplain`: one command per pipeline stage. Commands parse options and call the stage; no logic.

Heavy imports (torch, pandas) happen inside the commands so `--help` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from prunexplain.config import UserError
from prunexplain.experiments import COMPARE, EXPERIMENTS, RECOGNISE
from prunexplain.preflight import STAGES
from prunexplain.runs import Run

app = typer.Typer(
    help="How much can a CNN be pruned before its explanations stop making sense to people?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Get a dataset: the embedded synthetic one, or Imagenette.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", exists=True, dir_okay=False, help="TOML settings file (see examples/)."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", metavar="KEY=VALUE",
        help="Override one setting, e.g. train.epochs=5; KEY=none unsets an optional one. Repeatable.",
    ),
]
NameOption = Annotated[str | None, typer.Option("--name", "-n", help="Run name: writes to runs/<name>.")]
RunOption = Annotated[
    Path | None,
    typer.Option("--run", help="Run directory, e.g. runs/demo; its config.toml is read unless --config is given."),
]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError into one line on stderr and exit status 2, never a traceback."""
    try:
        yield
    except UserError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _settings(config: Path | None, overrides: list[str] | None, name: str | None, reference=None):
    from prunexplain.config import load_settings

    extra = [f'run.name="{name}"'] if name else []
    return load_settings(config, [*extra, *(overrides or [])], reference)


def _stage_settings(run_dir: Path | None, config: Path | None, overrides: list[str] | None, name: str | None,
                    reference=None):
    """Settings of a stage command: an existing run's config.toml (what it holds), then the options.

    `--run DIR` names the run directory; `--name N` the run runs/N (or under run.root of --config).
    A run without config.toml, or an explicit --config, starts from that file or the defaults.
    """
    if run_dir is not None:
        if not run_dir.is_dir():
            raise UserError(f"--run: no such run directory {run_dir}")
        run_dir = run_dir.resolve()  # `--run .` names the folder it is
        where = [f'run.root="{run_dir.parent}"', f'run.name="{run_dir.name}"']
        saved = Run(run_dir).config
        return _settings(config or (saved if saved.exists() else None), [*where, *(overrides or [])], None, reference)
    settings = _settings(config, overrides, name, reference)
    saved = Run(settings.run_dir).config
    if config is None and saved.is_file():
        where = [f'run.root="{settings.run.root}"', f'run.name="{settings.run.name}"']
        return _settings(saved, [*where, *(overrides or [])], None, reference)
    return settings


def _stage(name: str, settings) -> str:
    """Run one stage of the pipeline on the settings' run directory, through its done-markers."""
    from prunexplain.pipeline import run_stage

    return run_stage(settings, Run(settings.run_dir), name)


@data_app.command("synthetic")
def data_synthetic(
    dest: Annotated[Path, typer.Option(help="Folder to write the ImageFolder tree and masks into.")] = Path(
        "data/synthetic"
    ),
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Generate the embedded dataset: 10 shape classes on cluttered backgrounds, with object masks."""
    from prunexplain.data.synthetic import generate

    with user_errors():
        settings = _settings(config, overrides, None)
        info = generate(settings.data.synthetic, settings.data.image_size, dest)
        typer.echo(f"{info.images} images of {len(info.classes)} classes in {dest}")


@data_app.command("imagenette")
def data_imagenette(
    size: Annotated[str, typer.Option(help="Archive: full, 320 or 160 (shorter side in pixels).")] = "320",
    dest: Annotated[Path, typer.Option(help="Folder to download and extract into.")] = Path("data"),
    url: Annotated[str | None, typer.Option(help="Mirror URL of the archive (default: fast.ai's).")] = None,
    md5: Annotated[str | None, typer.Option(help="Expected MD5 with --url (default: the published one).")] = None,
) -> None:
    """Download Imagenette (resumes a partial download, verifies the MD5, extracts safely)."""
    from prunexplain.data.imagenette import download

    with user_errors():
        folder = download(size, dest, url, md5)
        typer.echo(f"Imagenette in {folder}; train with --set data.dataset=imagenette --set data.root=\"{folder}\"")


@app.command()
def train(
    reference: Annotated[
        Path | None,
        typer.Argument(
            metavar="REFERENCE_JSON",
            help="The study's named-run JSON (training_config.json); needs RUN_NAME.",
            exists=True,
        ),
    ] = None,
    reference_run: Annotated[str | None, typer.Argument(metavar="RUN_NAME", help="Run in that JSON.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    name: NameOption = None,
) -> None:
    """Train the classifier of a run (VGG-16 by default); writes runs/<name>/train/.

    Also reads the study's named-run JSON: `prunexplain train training_config.json run8` is the
    original's run (its model and data beneath the JSON's keys: config.REFERENCE_BASE; --config and
    --set change them). On an existing run it starts from the run's config.toml and skips a
    training already done with the same settings. Under `torchrun --nproc_per_node N -m prunexplain
    train ...` it trains with DDP (each process trains; only rank 0 writes).
    """
    import os

    from prunexplain.train import train_stage

    with user_errors():
        if (reference is None) != (reference_run is None):
            raise UserError("give both the reference JSON and a RUN_NAME, e.g. training_config.json run8")
        ref = (reference, reference_run) if reference else None
        settings = _stage_settings(None, config, overrides, name or reference_run, ref)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # DDP: every process must train; rank 0 writes
            from prunexplain.pipeline import record_finished
            from prunexplain.preflight import preflight

            preflight(settings, ["data", "train"])
            result = train_stage(settings, Run(settings.run_dir))
            if result is not None:
                for stage in ("data", "train"):  # train_stage prepared the data too
                    record_finished(settings, Run(settings.run_dir), stage)
                typer.echo(result.summary())
            return
        typer.echo(_stage("train", settings))


@app.command("import-checkpoint")
def import_checkpoint(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="A whole pickled VGG-16, as the original saved "
                                           "its models.", exists=True, dir_okay=False)],
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="Where to write the prunexplain checkpoint.")],
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Load SOURCE although unpickling runs any code it holds; only for files you trust.")
    ] = False,
    classes: Annotated[list[str] | None, typer.Option(
        "--classes", help="Class names in output order; repeatable. Default: Imagenette's for 10 classes.")] = None,
    image_size: Annotated[int, typer.Option(help="Image side the model was trained on (the original's: 224).")] = 224,
    normalize: Annotated[bool, typer.Option(help="Whether it saw ImageNet-normalised images (the original's: no).")
                         ] = False,
) -> None:
    """Rewrite a model the original code saved with torch.save(model) as a prunexplain checkpoint.

    A pruned model's torch.nn.utils.prune masks are folded into its weights and kept as its masks.
    """
    from prunexplain.models import import_pickled_module

    with user_errors():
        meta = import_pickled_module(source, dest, trust_pickle, classes, image_size, normalize)
        model = meta["model"]
        typer.echo(f"{dest}: {model['arch']} (width {model['width']:g}) of {meta['num_classes']} classes, "
                   f"{len(meta['imported']['pruned'])} pruned tensors folded into plain weights")


@app.command()
def prune(
    run_dir: RunOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    name: NameOption = None,
    methods: Annotated[
        list[str] | None, typer.Option("--method", "-m", help="Pruning method; repeatable. Default: the study's two.")
    ] = None,
    rates: Annotated[
        list[float] | None, typer.Option("--rate", "-r", help="Compression rate; repeatable, > 1, increasing.")
    ] = None,
) -> None:
    """Prune the trained model step by step to each compression rate, retraining after each step.

    Methods: local_magnitude_unstructured, local_random_unstructured (the study's),
    global_magnitude_unstructured, local_taylor_unstructured, global_snip_unstructured,
    global_lamp_unstructured; N:M semi-structured (rates 2 or 4): local_magnitude_nm_semistructured;
    structured (whole channels): local_l1_structured, local_random_structured,
    local_l1_group_structured, global_l1_group_structured, local_l2_group_structured,
    global_l2_group_structured, local_fpgm_structured, local_bn_scale_structured, local_taylor_structured.
    Schedules (prune.schedule): iterative (the study's), one_shot, gradual; retraining (prune.retrain):
    finetune (the study's), lr_rewind, weight_rewind (needs train.rewind_epoch). Each other combination
    is its own family, <method>+<schedule>+<regime>.
    Writes runs/<name>/prune/<family>/cr_<rate>/model.pt and results.csv; resumes where it stopped.
    """
    with user_errors():
        extra = [f"prune.methods={list(methods)!r}".replace("'", '"')] if methods else []
        extra += [f"prune.rates={list(rates)!r}"] if rates else []
        settings = _stage_settings(run_dir, config, [*(overrides or []), *extra], name)
        typer.echo(_stage("prune", settings))


@app.command("explain")
def explain_command(
    run_dir: RunOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    name: NameOption = None,
    models: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="'dense' or '<method>/cr_<rate>'; repeatable. Default: all."),
    ] = None,
    images: Annotated[int | None, typer.Option(help="Explain the first N test images.")] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option("--method", help="Explanation method; repeatable (README, Explanations). Default: gradcam."),
    ] = None,
    render: Annotated[bool, typer.Option("--render", help="Also write occlusion and heatmap PNGs.")] = False,
) -> None:
    """Explain every model of a run (dense and each method x rate) on the same test images.

    Writes runs/<name>/explain/<model>/maps.npy, maps-<method>.npy for other methods (and PNGs with --render).
    """
    with user_errors():
        extra = [f'explain.models={list(models)!r}'.replace("'", '"')] if models else []
        extra += [f"explain.images={images}"] if images else []
        extra += [f"explain.methods={json.dumps(list(methods))}"] if methods else []
        extra += ["explain.render=true"] if render else []
        settings = _stage_settings(run_dir, config, [*(overrides or []), *extra], name)
        typer.echo(_stage("explain", settings))


@app.command("evaluate")
def evaluate_command(
    run_dir: RunOption = None, config: ConfigOption = None, overrides: SetOption = None, name: NameOption = None
) -> None:
    """Score the explanations of every model: localisation, faithfulness, agreement with the dense
    model, complexity and a randomisation sanity check. Writes runs/<name>/evaluate/metrics.csv and .png.
    """
    with user_errors():
        settings = _stage_settings(run_dir, config, overrides, name)
        typer.echo(_stage("evaluate", settings))


@app.command("verdict")
def verdict_command(
    run_dir: RunOption = None, config: ConfigOption = None, overrides: SetOption = None, name: NameOption = None
) -> None:
    """Answer the question: per pruning method, up to which compression rate accuracy, each judged
    metric and the study's answers stay non-inferior to the dense model (paired, bootstrap over seeds
    and images, Holm across rates), where they break, and which metrics decide as the people do.
    Writes runs/<name>/verdict.json and verdict/ and prints its sentences and table.
    """
    from prunexplain.verdict.stage import read_verdict, verdict_table

    with user_errors():
        settings = _stage_settings(run_dir, config, overrides, name)
        typer.echo(_stage("verdict", settings))
        typer.echo(verdict_table(read_verdict(Run(settings.run_dir).verdict)))


@app.command("report")
def report_command(
    run_dir: Annotated[Path | None, typer.Option("--run", help="Run directory, e.g. runs/demo.")] = None,
    name: NameOption = None,
    images: Annotated[int | None, typer.Option(help="Example images (rows) in the grid of explanations.")] = None,
    stimuli: Annotated[int | None, typer.Option(help="Study stimuli shown per experiment.")] = None,
) -> None:
    """Write runs/<name>/report.html: one self-contained HTML page of everything the run holds so far
    (settings, training, pruning, metrics, example explanations, study stimuli, analysed answers).
    """
    from prunexplain.config import ReportSettings, from_options
    from prunexplain.report import write_report

    with user_errors():
        settings = _stage_settings(run_dir, None, None, name)
        given = {key: value for key, value in {"images": images, "stimuli": stimuli}.items() if value is not None}
        report = from_options(ReportSettings, **{**settings.report.model_dump(), **given})
        typer.echo(write_report(Run(settings.run_dir), report).summary())


@app.command()
def run(
    config: ConfigOption = None,
    overrides: SetOption = None,
    name: NameOption = None,
    until: Annotated[
        str | None,
        typer.Option(
            help=f"Stop after this stage: {', '.join(STAGES)}."
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="serial (this process), or the run's jobs side by side: local (process pool), ray "
                          "(--address joins a cluster), slurm (submitit; the cluster section of the settings).")
    ] = "serial",
    workers: Annotated[int | None, typer.Option(help="local/ray: jobs at once; default: GPUs, else cores / 2.")] = None,
    address: Annotated[str | None, typer.Option(help="ray: the address of an existing Ray cluster.")] = None,
    retries: Annotated[int, typer.Option(help="times a failed job is run again before the run stops.")] = 0,
) -> None:
    """Run every stage in order over runs/<name>, skipping stages already done with the same settings.

    data -> train -> prune -> explain -> evaluate -> study (stimuli) -> crowd (real answers, else a
    simulated crowd) -> analysis -> seeds (the other replicates of run.seeds) -> verdict (verdict.json) ->
    report (runs/<name>/report.html). Killed at any point, it resumes. With --backend, the independent
    jobs (per seed: training, one pruning chain per method, explaining and scoring) run side by side.
    """
    from prunexplain.pipeline import run_pipeline

    with user_errors():
        settings = _settings(config, overrides, name)
        if backend == "serial":
            report = run_pipeline(settings, Run(settings.run_dir), until)
        else:
            from prunexplain.jobs.backends import run_jobs

            report = run_jobs(settings, backend, workers, address, retries, until)
        typer.echo(report)


@app.command("sweep")
def sweep_command(
    grid: Annotated[Path, typer.Argument(
        help="Grid TOML: name, base config, combine, and per swept setting an axis table (key, values).")],
    overrides: SetOption = None,
    until: Annotated[str | None, typer.Option(help="Stop every point after train, prune or evaluate.")] = None,
    backend: Annotated[str, typer.Option(help="serial, local, ray or slurm (as `run`).")] = "serial",
    workers: Annotated[int | None, typer.Option(help="local/ray: jobs at once.")] = None,
    address: Annotated[str | None, typer.Option(help="ray: the address of an existing Ray cluster.")] = None,
    retries: Annotated[int, typer.Option(help="times a failed job is run again before the sweep stops.")] = 0,
) -> None:
    """Run a grid of settings: one run per point under sweeps/<name>/, all points' jobs as one graph
    (dense models shared between points that train alike), then results.csv, verdicts.csv and a
    report comparing the points. Killed, it resumes without recomputing finished work."""
    from prunexplain.jobs.sweep import sweep

    with user_errors():
        typer.echo(sweep(grid, backend, workers, address, retries, until, overrides or []))


analyze_app = typer.Typer(
    help="Analyse crowd answers: MTurk batch results, the study's preprocessed files or the self-hosted export.",
    no_args_is_help=True,
)
app.add_typer(analyze_app, name="analyze")

AnswerFiles = Annotated[
    list[Path],
    typer.Argument(
        exists=True, dir_okay=False, metavar="FILE", help="Answer CSVs (raw MTurk batch results or preprocessed)."
    ),
]
AnalyzeOut = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Folder for summary.json, workers.csv, items.csv, PNGs. Default: analysis/<exp>."),
]
MinWorkTime = Annotated[
    float | None,
    typer.Option("--min-work-time", help="Also report results without workers whose median work time (s) is lower."),
]
RepeatedItems = Annotated[
    str | None, typer.Option(help="A worker's repeated item (another HIT): keep (the study's count), first, drop.")
]
KnownModels = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="Known model name; repeatable. Default: nonpruned, <rate>pruned."),
]
Bootstrap = Annotated[
    int | None, typer.Option(help="Bootstrap resamples of items for intervals (0: none). Default 1000.")
]
AnalyzeSeed = Annotated[int | None, typer.Option(help="Seed of the bootstrap.")]
Plots = Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")]
Preprocessed = Annotated[
    Path | None,
    typer.Option("--preprocessed", dir_okay=False, help="Also write the kept answers as the study's preprocessed "
                 "CSV (its notebook's columns) to this file."),
]


StimulusKey = Annotated[
    Path | None,
    typer.Option("--key", exists=True, dir_okay=False, help="The study's key.csv, for stimuli with opaque names."),
]


def _analyze(key: str, files, out, min_work_time, repeated_items, models, bootstrap, seed, plots,
             preprocessed, stimulus_key) -> None:
    from prunexplain.analysis.stage import analyze
    from prunexplain.config import AnalysisSettings, from_options

    with user_errors():
        settings = from_options(
            AnalysisSettings,
            min_median_work_time=min_work_time, repeated_items=repeated_items, models=models or None,
            bootstrap=bootstrap, seed=seed, plots=plots,
        )
        kind = EXPERIMENTS[key].kind.name  # the analysis depends on the kind; the folder is the experiment's
        result = analyze(kind, files, settings, out or Path("analysis") / key, preprocessed, key=stimulus_key)
        typer.echo(result.markdown)
        outside = [path for path in result.written if path.parent != result.out_dir]
        inside = [path.name for path in result.written if path.parent == result.out_dir]
        typer.echo(f"Wrote {', '.join(inside)} to {result.out_dir}" + "".join(f"; {p}" for p in outside))


def _analyze_command(key: str, doc: str) -> None:
    """Register `analyze <key>` for an experiment of the spec: all take the same options."""

    def command(
        files: AnswerFiles,
        out: AnalyzeOut = None,
        min_work_time: MinWorkTime = None,
        repeated_items: RepeatedItems = None,
        models: KnownModels = None,
        bootstrap: Bootstrap = None,
        seed: AnalyzeSeed = None,
        plots: Plots = True,
        preprocessed: Preprocessed = None,
        stimulus_key: StimulusKey = None,
    ) -> None:
        _analyze(key, files, out, min_work_time, repeated_items, models, bootstrap, seed, plots, preprocessed,
                 stimulus_key)

    command.__doc__ = doc
    analyze_app.command(key)(command)


_ANALYZE_DOCS = {  # one paragraph each: the help wraps it
    COMPARE.name: "Experiment 1 ({rendering}), which explanation is more reasonable: 'equally reasonable' shares, "
    "preferences per pair with chi-square, binomial and Holm-corrected tests, per-class tables (shares of all "
    "answers, a - b, P(class | equally)), how often each model was shown, Krippendorff's alpha; items.csv counts "
    "the answers per stimulus.",
    RECOGNISE.name: "Experiment 2 ({rendering}), what is on the picture: accuracy per model and class (and pooled "
    "over models), 'none' shares, confusion matrices (per model and pooled), Krippendorff's alpha, Cochran's Q and "
    "McNemar tests on the same images, the study's chi-squares; items.csv counts the answers per stimulus.",
}
for _key, _spec in EXPERIMENTS.items():
    _analyze_command(_key, _ANALYZE_DOCS[_spec.kind.name].format(rendering=_spec.rendering))


study_app = typer.Typer(
    help="Human studies: build the stimuli, publish them to S3, serve the study, export answers, simulate crowds, "
    "predict a study with model-based observers.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")


@study_app.command("simulate")
def study_simulate(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", exists=True, dir_okay=False, help="TOML file; its 'simulate' table holds the settings."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write into.")] = Path("simulated"),
    experiment: Annotated[str | None, typer.Option(help="exp1 (default) or exp2.")] = None,
    images: Annotated[int | None, typer.Option(help="Images per pair (exp1) or per model (exp2).")] = None,
    answers_per_item: Annotated[int | None, typer.Option(help="Assignments per HIT.")] = None,
    workers: Annotated[int | None, typer.Option(help="Size of the worker pool.")] = None,
    spammer_share: Annotated[float | None, typer.Option(help="Share of workers answering at random.")] = None,
    item_correlation: Annotated[float | None, typer.Option(help="How much items differ (0: alike).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulation.")] = None,
    power: Annotated[bool, typer.Option("--power/--no-power", help="Exp1: also run the power analysis.")] = True,
) -> None:
    """Simulate a crowd with a known truth answering in MTurk's batch-results format, and size a study.

    Writes <out>/<exp>_results.csv (for `prunexplain analyze`), truth.json and (exp1) power.json.
    """
    from prunexplain.study.simulate import load_simulate_settings, simulate

    with user_errors():
        settings = load_simulate_settings(
            config, experiment=experiment, images=images, answers_per_item=answers_per_item, workers=workers,
            spammer_share=spammer_share, item_correlation=item_correlation, seed=seed,
        )
        typer.echo(simulate(settings, out, power).markdown())


@study_app.command("predict")
def study_predict(run_dir: Annotated[Path, typer.Option("--run", help="Run directory with a built study, e.g. "
                                                       "runs/demo.")],
                  config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Predict a planned study before paying for it: model-based observers answer the run's stimuli.

    An observer classifier (trained once per run on occluded training images) answers each stimulus,
    with worker noise, side bias and careless workers on top ([crowd] settings). Writes
    runs/<name>/prediction/<experiment>/: the answers in MTurk's format, truth.json (the predicted
    effects), the analysis of the answers, and for experiment 1 power.json (items needed per pair,
    from the predicted effects). Predictions of a model, not of people.
    """
    from prunexplain.pipeline import predict_study

    with user_errors():
        _study_dir(run_dir)
        settings = _stage_settings(run_dir, config, overrides, None)
        typer.echo(predict_study(settings, Run(settings.run_dir)))


@study_app.command("build")
def study_build(
    run_dir: RunOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    name: NameOption = None,
    manifest: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Rebuild from this manifest.json and compare every file."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="With --manifest: folder to rebuild into.")] = None,
) -> None:
    """Build the stimuli of a human study from a run's models, with MTurk files and a manifest.

    N test images per class that every model gets right, experiment 1 panels (occlusion maps and
    heatmaps) and experiment 2 occlusion maps, with opaque file names and study/key.csv to map them
    back (study.stimulus_names="study": the original's names), MTurk input CSVs and HIT layouts, and
    study/manifest.json (with the verified counterbalancing) to trace and rebuild it.
    """
    from prunexplain.study.build import rebuild_study

    with user_errors():
        settings = _stage_settings(run_dir, config, overrides, name)
        run = Run(settings.run_dir)
        if manifest is None:
            typer.echo(_stage("study", settings))
            return
        result = rebuild_study(manifest, run, out or run.study_rebuild)
        typer.echo(result.summary())
        if result.different:
            raise typer.Exit(1)


@study_app.command("publish")
def study_publish(
    run_dir: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="Run directory, e.g. runs/x.")],
    bucket: Annotated[str, typer.Option(help="S3 bucket to upload the stimuli into.")],
    prefix: Annotated[str, typer.Option(help="Key prefix inside the bucket, e.g. study1/.")] = "",
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint (default: AWS).")] = None,
    public_read: Annotated[
        bool, typer.Option("--public-read", help="Upload with the ACL public-read (as the original study did).")
    ] = False,
) -> None:
    """Upload the study's stimuli to S3 for Mechanical Turk.

    Workers' browsers load the images without credentials, so the bucket or its objects must be
    readable by anyone: give the bucket a policy that allows it, or pass --public-read.
    Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or a profile);
    files already there with the same content are skipped.
    """
    from prunexplain.study.mturk import publish

    with user_errors():
        typer.echo(publish(_study_dir(run_dir), bucket, prefix, endpoint_url, public_read).summary())


StudyRun = Annotated[Path, typer.Option("--run", help="Run directory with the study/ of `study build`, e.g. runs/x.")]


def _study_dir(run_dir: Path) -> Path:
    study = Run(run_dir).study
    if not study.manifest.is_file():
        raise UserError(f"{run_dir}: no study/manifest.json; run `prunexplain study build` first")
    return study.root


@study_app.command("preregister")
def study_preregister(
    run_dir: StudyRun,
    serve_config: Annotated[
        Path | None,
        typer.Option("--serve-config", exists=True, dir_okay=False,
                     help="TOML file whose 'serve' table holds the study's serve settings (answers, tasks, checks)."),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Write the study's plan and freeze it before the first answer.

    Writes study/preregistration.md (AsPredicted's questions: hypotheses, outcomes, analyses with the
    verdict's margins and alpha, exclusion rules, sample size and where it came from: the power analysis
    of `study predict` where the run has one) and preregistration.json, and puts the file's SHA-256 into
    study/manifest.json. Refused once anyone has answered; the server then refuses to collect if the file
    changes, and the report names every setting that departs from the plan.
    """
    from prunexplain.study.preregistration import preregister
    from prunexplain.study.server.settings import load_serve_settings

    with user_errors():
        _study_dir(run_dir)
        settings = _stage_settings(run_dir, config, overrides, None)
        typer.echo(preregister(settings, Run(settings.run_dir), load_serve_settings(serve_config)).summary())


@study_app.command("serve")
def study_serve(
    run_dir: StudyRun,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", exists=True, dir_okay=False, help="TOML file; its 'serve' table holds settings."
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    experiments: Annotated[
        list[str] | None, typer.Option("--experiment", "-e", help="Experiment key; repeatable. Default: exp1, exp2.")
    ] = None,
    answers_per_stimulus: Annotated[int | None, typer.Option(help="Distinct participants per stimulus (5).")] = None,
    tasks: Annotated[int | None, typer.Option("--tasks", help="Stimuli per participant (20).")] = None,
    attention_checks: Annotated[int | None, typer.Option(help="Attention checks per participant (2).")] = None,
    completion_code: Annotated[str | None, typer.Option(help="One code for all (default: per participant).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of task orders and attention checks.")] = None,
    consents_per_minute: Annotated[
        float | None, typer.Option(help="Consents per client address and minute (10); raise it for labs behind one.")
    ] = None,
    sessions_per_client: Annotated[
        int | None, typer.Option(help="Unfinished participants per client address (10).")
    ] = None,
    comprehension: Annotated[
        bool | None,
        typer.Option("--comprehension/--no-comprehension",
                     help="Questions about the task after the instructions, two tries (default: on)."),
    ] = None,
    completion_url: Annotated[
        str | None,
        typer.Option(help="Send finished participants there, {code} replaced by their code, e.g. "
                     "https://app.prolific.com/submissions/complete?cc={code}."),
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
) -> None:
    """Run the study yourself: a web server for participants and an admin page.

    Participants get consent, instructions, a comprehension check, tasks and a completion code (with
    --completion-url they are sent back to the platform with it); the admin pages need the token
    from PRUNEXPLAIN_ADMIN_TOKEN or study/admin_token. Answers go to study/study.db.
    """
    from prunexplain.study.server.app import serve
    from prunexplain.study.server.settings import load_serve_settings

    with user_errors():
        settings = load_serve_settings(
            config, host=host, port=port, experiments=experiments, answers_per_stimulus=answers_per_stimulus,
            tasks_per_participant=tasks, attention_checks=attention_checks, completion_code=completion_code, seed=seed,
            consents_per_minute=consents_per_minute, sessions_per_client=sessions_per_client,
            comprehension=comprehension, completion_url=completion_url,
        )
        serve(_study_dir(run_dir), settings, access_log)


@study_app.command("export")
def study_export(
    run_dir: StudyRun,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="A .csv file (one experiment) or a folder. Default: study/export/."),
    ] = None,
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="Only this experiment key.")] = None,
) -> None:
    """Export the self-hosted study's answers as MTurk batch-results CSVs, one per experiment.

    `prunexplain analyze exp1|exp2` reads them unchanged; attention checks go to attention_checks.csv.
    """
    from prunexplain.study.server.export import export_study

    with user_errors():
        typer.echo(export_study(_study_dir(run_dir), out, experiment).summary())


mturk_app = typer.Typer(
    help="Mechanical Turk through its API: create the study's HITs, follow them, collect and approve the answers. "
    "The sandbox unless --live; credentials from the environment.",
    no_args_is_help=True,
)
study_app.add_typer(mturk_app, name="mturk")

LiveOption = Annotated[
    bool, typer.Option("--live", help="Production MTurk: real workers, real money. Default: the sandbox.")
]
MTurkExperiments = Annotated[
    list[str] | None,
    typer.Option("--experiment", "-e", help="Experiment key of the built study; repeatable. Default: all of them."),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@mturk_app.command("create")
def mturk_create(
    run_dir: StudyRun, live: LiveOption = False, experiments: MTurkExperiments = None,
    external: Annotated[
        str | None,
        typer.Option("--external", metavar="URL",
                     help="The self-hosted study's https URL (`study serve` behind HTTPS): one ExternalQuestion HIT "
                     "for the whole study instead of one HIT per stimulus."),
    ] = None,
    participants: Annotated[
        int | None,
        typer.Option(help="Assignments of the --external HIT, one per participant. Default: the "
                     "pre-registered sample of study/preregistration.json."),
    ] = None,
    yes: YesOption = False, config: ConfigOption = None, overrides: SetOption = None,
) -> None:
    """Create one HIT per stimulus (the input CSVs' rows shown with the layouts), or one for the self-hosted study.

    Prints the cost (rewards plus MTurk's fee) and asks before creating. Each HIT is recorded in
    study/hits/EXPERIMENT.csv as it is made, so a create that stopped creates only the rest when run
    again. The image URLs must be public http(s) URLs: `study publish`, then build with study.url_prefix.

    With --external URL: one HIT that shows the self-hosted study, each participant one assignment paid
    mturk.session_reward for the session, recorded in study/hits/external.csv (one per sandbox and live).
    `status` follows it; `collect` and `approve` are not for it: its answers are in the server's database
    (`study export`), and MTurk approves its assignments after mturk.auto_approval_delay_seconds.
    """
    from prunexplain.study import hits

    with user_errors():
        if (participants is not None and external is None) or (external is not None and experiments):
            raise UserError("study mturk create: --participants goes with --external, --experiment without it")
        settings = _stage_settings(run_dir, config, overrides, None)
        folder = Run(_study_dir(run_dir).parent).study
        if external is not None:
            plan = hits.plan_external(folder, settings.mturk, external, participants, live)
        else:
            plan = hits.plan_create(folder, settings.mturk, experiments, live)
        typer.echo(plan.summary())
        if not plan.hits:
            return
        client = hits.connect(live)
        typer.echo(hits.account_balance(client, plan))
        if not yes:
            typer.confirm(f"Create {len(plan.hits)} HITs on MTurk {plan.endpoint} for ${plan.cost.total}?", abort=True)
        typer.echo(hits.create_hits(client, plan, folder).summary())


@mturk_app.command("status")
def mturk_status(run_dir: StudyRun, live: LiveOption = False, experiments: MTurkExperiments = None) -> None:
    """Per experiment and external HIT: HITs, assignments available, pending, completed; work to review, approved,
    rejected."""
    from prunexplain.study import hits

    with user_errors():
        folder = Run(_study_dir(run_dir).parent).study
        typer.echo(hits.status(hits.connect(live), folder, experiments, live).summary())


@mturk_app.command("collect")
def mturk_collect(run_dir: StudyRun, live: LiveOption = False, experiments: MTurkExperiments = None) -> None:
    """Download every submitted assignment as MTurk batch results that `prunexplain analyze` reads.

    Live answers go to study/answers/EXPERIMENT_mturk.csv, where `prunexplain run` takes them as the
    study's; sandbox answers to study/hits/EXPERIMENT_sandbox_answers.csv, never taken for real ones.
    The external HIT's answers are in the study server's database: `study export` writes them.
    """
    from prunexplain.study import hits

    with user_errors():
        folder = Run(_study_dir(run_dir).parent).study
        typer.echo(hits.collect(hits.connect(live), folder, experiments, live).summary())


@mturk_app.command("approve")
def mturk_approve(run_dir: StudyRun, live: LiveOption = False, experiments: MTurkExperiments = None,
                  dry_run: Annotated[bool, typer.Option("--dry-run", help="List the decisions; tell MTurk nothing.")]
                  = False, yes: YesOption = False, config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Approve submitted work, or reject it by the pre-registered exclusion rules.

    Rejected: assignments without a readable answer, and all submitted work of a worker whose median
    work time in the experiment is below min_median_work_time of study/preregistration.json (without
    one, analysis.min_median_work_time, with a warning). Rejections hurt workers' standing, so they
    are confirmed first; the feedback names the rule. Decisions go to study/hits/decisions.csv.
    """
    from prunexplain.study import hits

    with user_errors():
        settings = _stage_settings(run_dir, config, overrides, None)
        folder = Run(_study_dir(run_dir).parent).study
        client = hits.connect(live)
        plan = hits.plan_approval(client, folder, experiments, live, settings.analysis.min_median_work_time)
        typer.echo(plan.summary())
        if plan.rejections and not dry_run and not yes:
            workers = len({d.worker for d in plan.rejections})
            typer.confirm(f"Reject {len(plan.rejections)} assignments of {workers} workers? Rejections lower their "
                          "approval rates", abort=True)
        typer.echo(hits.send_decisions(client, plan, folder, dry_run).summary())


def main() -> None:
    app()
