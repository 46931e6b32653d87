"""The run directory as code: every file of `runs/<name>/` has one named accessor here.

Stages never join run-file names themselves; they ask a `Run` (or, for the human study, which can be
served and exported from a copied folder, a `StudyFolder`). A model of a run is a `ModelKey`: the
dense model, or a pruning method at a compression rate, with one text form (`dense`,
`<method>/cr_<rate>`) and one parser.

A file either exists whole or not at all (temp file in the same folder, fsync, rename), so a run
killed at any moment leaves nothing half-written. A stage that finished writes `<stage>/.done`, a
JSON record of the fingerprint and the settings it computed with and of its output files (size and
modification time of each): a stage counts as done only while its outputs are the ones it recorded,
so a killed rerun with other settings that replaced some of them is never taken as finished.
This module imports no torch: the study server and the analysis use it too.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prunexplain.errors import UserError

DENSE = "dense"
_RATE = re.compile(r"^cr_(?P<rate>\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class ModelKey:
    """The dense model (`method` None) or a pruning method's model at compression rate `rate`."""

    method: str | None = None
    rate: float = 1.0

    @classmethod
    def parse(cls, text: str) -> ModelKey:
        """`dense` or `<method>/cr_<rate>`; anything else is a UserError naming the text."""
        if text == DENSE:
            return cls()
        method, _, rate = str(text).partition("/")
        match = _RATE.match(rate)
        if not method or not match or not _safe_name(method) or float(match["rate"]) <= 1:
            raise UserError(f"{text!r} is not a model of a run: give 'dense' or '<method>/cr_<rate>' with rate > 1")
        return cls(method, float(match["rate"]))

    @classmethod
    def pruned(cls, method: str, rate: float) -> ModelKey:
        if not math.isfinite(rate) or rate <= 1:
            raise UserError(f"rate {rate!r} of {method}: a compression rate is a finite number > 1")
        return cls(method, float(rate))

    @property
    def dense(self) -> bool:
        return self.method is None

    @property
    def rate_folder(self) -> str:
        """`cr_2`, `cr_1.25`: the shortest name that reads back as exactly this rate (a rate like
        1/0.9 keeps all its digits, or its folder would parse as another rate)."""
        short = f"{self.rate:g}"
        return f"cr_{short if float(short) == self.rate else repr(self.rate)}"

    @property
    def parts(self) -> tuple[str, ...]:
        """Folder names under a stage's folder: ('dense',) or (method, 'cr_<rate>')."""
        return (DENSE,) if self.dense else (self.method, self.rate_folder)

    def sort_key(self) -> tuple:
        """Dense first, then by method name, then by rate."""
        return (not self.dense, self.method or "", self.rate)

    def __str__(self) -> str:
        return "/".join(self.parts)


def _of_method(stem: str, method: str, suffix: str = "") -> str:
    """A file or folder of one explanation method: `maps.npy` for Grad-CAM (the study's, and the
    name runs had before other methods), `maps-<method>.npy` for every other."""
    return f"{stem}{suffix}" if method == "gradcam" else f"{stem}-{method}{suffix}"


def same_rate(rate: float, other: float) -> bool:
    """Whether two compression rates are one: tables write rates as the study did (`:g`, six digits:
    1/0.9 is 1.11111), a model's folder keeps them whole."""
    return math.isclose(rate, other, rel_tol=1e-5)


def scores_key(explainer: str, key: ModelKey, metric: str) -> str:
    """The name of one model's per-image scores of one metric and explainer in `Run.scores`."""
    return f"{explainer}|{key}|{metric}"


def _safe_name(name: str) -> bool:
    """A name that is one plain folder: no separators, no '.', '..' or hidden names."""
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._+-]*", name)) and name not in (".", "..")


def sorted_keys(keys) -> list[ModelKey]:
    return sorted(keys, key=ModelKey.sort_key)


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in blocks: ties later results to the exact file (a checkpoint, a
    stimulus, a frozen plan) they came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StudyFolder:
    """The human study's folder (`<run>/study/`): stimuli, MTurk files, manifest and answers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"StudyFolder({str(self.root)!r})"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def selection(self) -> Path:
        return self.root / "selection.csv"

    def stimuli(self, experiment: str) -> Path:
        """Folder of one experiment's PNGs."""
        return self.root / experiment

    def stimulus(self, relative: str) -> Path:
        """A file named in the manifest, relative to the study folder."""
        return self.root / relative

    def relative(self, path: Path) -> str:
        """How the manifest names a file of this folder: its path relative to the folder, with '/'."""
        return Path(path).relative_to(self.root).as_posix()

    def input_csv(self, experiment: str) -> Path:
        return self.root / f"{experiment}_input.csv"

    def layout(self, experiment: str) -> Path:
        return self.root / "layouts" / f"{experiment}.html"

    @property
    def key(self) -> Path:
        """Opaque stimulus names -> what they show (`study.stimulus_names = "opaque"`): the analysis'
        way back from a blind file name to its image, class and models."""
        return self.root / "key.csv"

    def key_if_any(self) -> Path | None:
        """The key where the stimuli have opaque names; None where they are named in the scheme."""
        return self.key if self.key.is_file() else None

    @property
    def preregistration(self) -> Path:
        """`study preregister`'s document for people; its SHA-256 is frozen in the manifest."""
        return self.root / "preregistration.md"

    @property
    def preregistration_data(self) -> Path:
        """The same pre-registration as data: what the report compares the analysis with."""
        return self.root / "preregistration.json"

    def hits(self, experiment: str) -> Path:
        """The MTurk HITs `study mturk create` made for one experiment (HITId per stimulus URL)."""
        return self.root / "hits" / f"{experiment}.csv"

    def mturk_answers(self, experiment: str) -> Path:
        """`study mturk collect`: the answers to one experiment's live HITs (MTurk's batch-results format),
        among the real answers the crowd stage reads."""
        return self.answers / f"{experiment}_mturk.csv"

    def sandbox_answers(self, experiment: str) -> Path:
        """`study mturk collect` in the sandbox: test answers, kept out of answers/ so that no analysis
        takes them for the study's."""
        return self.root / "hits" / f"{experiment}_sandbox_answers.csv"

    @property
    def hit_decisions(self) -> Path:
        """`study mturk approve`: per assignment approve or reject, the rule, and whether MTurk was told."""
        return self.root / "hits" / "decisions.csv"

    @property
    def database(self) -> Path:
        return self.root / "study.db"

    def database_files(self) -> list[Path]:
        """The database and its SQLite companions (-wal, -shm) that exist."""
        return sorted(p for p in self.root.glob("study.db*") if p.is_file())

    @property
    def admin_token(self) -> Path:
        return self.root / "admin_token"

    @property
    def answers(self) -> Path:
        """Folder where people put real answer files (MTurk batch results)."""
        return self.root / "answers"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def exported(self, experiment: str) -> Path:
        return self.export / f"{experiment}_results.csv"

    @property
    def attention_checks(self) -> Path:
        return self.export / "attention_checks.csv"

    @property
    def flow(self) -> Path:
        """The self-hosted study's participant flow (started, consented, ... excluded and why)."""
        return self.export / "flow.json"

    def simulated(self, experiment: str) -> Path:
        """A simulated crowd's answers to one experiment (published effects or model-based observers)."""
        return self.root / "simulated" / experiment

    @property
    def observer(self) -> Path:
        """The observers' classifier (`study.observers`): a cache of the crowd stage, kept while its
        fingerprint (in the checkpoint's meta) matches, so it is trained once per run."""
        return self.root / "observer" / "model.pt"

    @property
    def crowd(self) -> Path:
        """Which answers (real or simulated) each experiment has: what the analysis reads."""
        return self.root / "crowd.json"

    def built_files(self) -> list[Path]:
        """What `study build` writes: manifest, selection, MTurk inputs and layouts, the key, the stimuli."""
        return [self.manifest, self.selection, *self.root.glob("*_input.csv"), *self.root.glob("layouts/*.html"),
                *self.root.glob("key.csv"), *self.root.glob("*/*.png")]

    def crowd_files(self) -> list[Path]:
        """What the crowd stage writes: crowd.json and the simulated crowds' answers."""
        return [self.crowd, *self.root.glob("simulated/**/*")]


class AnalysisFolder:
    """One experiment's analysis (`<run>/analysis/<experiment>/`, or `analyze --out`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def items(self) -> Path:
        """Answers per stimulus and option: what the verdict pairs image by image."""
        return self.root / "items.csv"

    @property
    def workers(self) -> Path:
        return self.root / "workers.csv"

    def figure(self, name: str) -> Path:
        """A plot, e.g. `preferences` or `confusion_2pruned` (or a name the summary lists)."""
        return self.root / (name if name.endswith(".png") else f"{name}.png")


class SimulationFolder:
    """A simulated crowd's answers (`<run>/study/simulated/<experiment>/`, or `study simulate --out`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def results(self, kind: str) -> Path:
        """Answers in MTurk's batch-results format, named after the experiment kind."""
        return self.root / f"{kind}_results.csv"

    @property
    def truth(self) -> Path:
        return self.root / "truth.json"

    @property
    def power(self) -> Path:
        return self.root / "power.json"


class PredictionFolder:
    """`study predict`: the observers' answers to a planned study, their analysis and the power they
    imply (`<run>/prediction/`); kept apart from `study/` so a prediction is never taken for answers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def answers(self, experiment: str) -> SimulationFolder:
        """One experiment's predicted answers (MTurk format), predicted truth and power."""
        return SimulationFolder(self.root / experiment)

    def analysis(self, experiment: str) -> Path:
        """One experiment's analysis of the predicted answers (what `analyze` writes)."""
        return self.root / experiment / "analysis"

    @property
    def summary(self) -> Path:
        return self.root / "prediction.json"


class Run:
    """One run directory, `runs/<name>/`: the only place that knows its file names."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    # settings and markers
    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def record(self, stage: str) -> dict[str, Any] | None:
        """What a finished stage recorded (fingerprint, settings, outputs), or None."""
        return _read_marker(self.stage_dir(stage) / ".done")

    def is_done(self, stage: str, fingerprint: str) -> bool:
        """Finished with this fingerprint, and its outputs are still the ones it wrote."""
        record = self.record(stage)
        return record is not None and record.get("fingerprint") == fingerprint and record.get("outputs") == (
            self.output_stamps(stage)
        )

    @contextlib.contextmanager
    def amending(self, stage: str) -> Iterator[None]:
        """A command that deliberately rewrites a finished stage's output (`study preregister` its
        manifest) keeps the stage finished: its recorded stamps follow the change, where they were
        the outputs' before it (a stage already out of date stays out of date)."""
        record = self.record(stage)
        current = record is not None and record.get("outputs") == self.output_stamps(stage)
        yield
        if current:
            write_json(self.stage_dir(stage) / ".done", {**record, "outputs": self.output_stamps(stage)})

    def mark_done(self, stage: str, fingerprint: str, settings: dict[str, Any] | None = None) -> None:
        record = {"fingerprint": fingerprint, "settings": settings or {}, "outputs": self.output_stamps(stage)}
        write_json(self.stage_dir(stage) / ".done", record)

    def clear_done(self, stage: str) -> None:
        (self.stage_dir(stage) / ".done").unlink(missing_ok=True)

    def stage_outputs(self, stage: str) -> list[Path]:
        """The files a pipeline stage writes (markers and temp files aside)."""
        if stage in ("train", "prune", "explain", "evaluate", "analysis"):
            files = list(self.stage_dir(stage).rglob("*"))
        else:
            files = {"study": self.study.built_files(), "crowd": self.study.crowd_files(), "seeds": self.replicated(),
                     "verdict": [self.verdict, *self.verdict_dir.glob("*")], "report": [self.report]}.get(stage, [])
        return sorted(p for p in files if p.is_file() and not p.name.startswith("."))

    def output_stamps(self, stage: str) -> dict[str, list[int]]:
        """Size and modification time of each output file: cheap, and changed by any rewrite."""
        stamps = {}
        for path in self.stage_outputs(stage):
            stat = path.stat()
            stamps[str(path.relative_to(self.root))] = [stat.st_size, stat.st_mtime_ns]
        return stamps

    # data
    def replicate(self, seed: int) -> Path:
        """The folder of seed `seed`'s replicate (with `run.seeds`): a run folder of its own."""
        return self.root / "seeds" / str(seed)

    @property
    def jobs_dir(self) -> Path:
        """Per job of a backend's run its provenance: code, settings, seed, machine, times, failures."""
        return self.root / "jobs"

    def job_record(self, job: str) -> Path:
        return self.jobs_dir / f"{re.sub(r'[^A-Za-z0-9._+-]+', '_', job)}.json"

    def replicated(self) -> list[Path]:
        """What the replicates under `seeds/` hold for the verdict: per seed its per-image scores, its
        prune tables and per-image test answers."""
        return [path for pattern in ("*/evaluate/scores.npz", "*/prune/*/results.csv", "*/prune/*/test_correct.json")
                for path in (self.root / "seeds").glob(pattern)]

    @property
    def synthetic_data(self) -> Path:
        """Where the embedded dataset is generated when `data.root` is not set."""
        return self.root / "data" / "synthetic"

    @property
    def cache_dir(self) -> Path:
        """The decoded-image cache of the run (unless `runtime.cache_dir`): never inside a dataset
        folder, which may be read-only or shared."""
        return self.root / "cache"

    # train
    @property
    def dense_checkpoint(self) -> Path:
        return self.root / "train" / "model.pt"

    @property
    def rewind_checkpoint(self) -> Path:
        """The dense model's weights after `train.rewind_epoch` epochs, for weight rewinding."""
        return self.root / "train" / "rewind.pt"

    @property
    def train_history(self) -> Path:
        return self.root / "train" / "history.csv"

    @property
    def train_result(self) -> Path:
        return self.root / "train" / "result.json"

    # prune
    def checkpoint(self, key: ModelKey) -> Path:
        return self.dense_checkpoint if key.dense else self.root / "prune" / key.method / key.rate_folder / "model.pt"

    def removed_checkpoint(self, key: ModelKey) -> Path:
        """The physically smaller model of a structured method's rate, beside its masked checkpoint."""
        return self.checkpoint(key).with_name("model_removed.pt")

    def prune_results(self, method: str) -> Path:
        return self.root / "prune" / method / "results.csv"

    def prune_per_class(self, method: str) -> Path:
        return self.root / "prune" / method / "per_class.csv"

    def prune_correct(self, method: str) -> Path:
        """Per rate (`:g`; "1": the dense model) a string of "1" (right) and "0" per test image, in the test
        split's order: whether each model's top-1 is right, what the verdict pairs between models."""
        return self.root / "prune" / method / "test_correct.json"

    def test_correct(self, method: str) -> dict[float, list[int]]:
        """`prune_correct(method)` read back: per rate (1.0: dense) each test image's 1 (right) or 0; {}
        where the prune stage predates it."""
        path = self.prune_correct(method)
        if not path.is_file():
            return {}
        return {float(rate): [int(c) for c in answers] for rate, answers in json.loads(path.read_text()).items()}

    def prune_tables(self) -> dict[str, Path]:
        """Every pruning method's results table, by method."""
        return {p.parent.name: p for p in sorted((self.root / "prune").glob("*/results.csv"))}

    def test_accuracies(self) -> dict[str, list[tuple[float, float]]]:
        """Per pruning method its (rate, test top-1) pairs from its results table, the dense row first.
        The table writes rates as the study did (`:g`, six digits), so match a `ModelKey.rate` to them
        with a relative tolerance."""
        curves = {}
        for method, table in self.prune_tables().items():
            with open(table, newline="") as handle:
                rows = list(csv.DictReader(handle))
            curves[method] = [(float(r["sparsity"]), float(r["test_top1_accuracy"])) for r in rows]
        return curves

    @property
    def accuracy_plot(self) -> Path:
        return self.root / "prune" / "accuracy.png"

    def models(self) -> dict[ModelKey, Path]:
        """The run's checkpoints: dense, then each method's rates in increasing order."""
        found = {ModelKey(): self.dense_checkpoint} if self.dense_checkpoint.is_file() else {}
        for path in (self.root / "prune").glob("*/cr_*/model.pt"):
            match = _RATE.match(path.parent.name)
            if match and float(match["rate"]) > 1:
                found[ModelKey(path.parent.parent.name, float(match["rate"]))] = path
        return {key: found[key] for key in sorted_keys(found)}

    # explain
    @property
    def explained_images(self) -> Path:
        """Which test images every model is explained on (one row each)."""
        return self.root / "explain" / "images.csv"

    def explain_dir(self, key: ModelKey) -> Path:
        return self.root.joinpath("explain", *key.parts)

    def maps(self, key: ModelKey, method: str = "gradcam") -> Path:
        return self.explain_dir(key) / _of_method("maps", method, ".npy")

    def predictions(self, key: ModelKey) -> Path:
        return self.explain_dir(key) / "predictions.npy"

    def render(self, key: ModelKey, index: int, kind: str, method: str = "gradcam") -> Path:
        """A rendered PNG of one explained image: kind is 'occlusion' or 'heatmap'; `png/` for
        Grad-CAM, `png-<method>/` for the other methods, as their maps."""
        return self.explain_dir(key) / _of_method("png", method) / f"{index}_{kind}.png"

    def explainers(self) -> list[str]:
        """The explanation methods whose maps of the dense model exist, Grad-CAM first."""
        folder = self.explain_dir(ModelKey())
        found = ["gradcam"] if (folder / "maps.npy").is_file() else []
        return found + sorted(p.stem.removeprefix("maps-") for p in folder.glob("maps-*.npy"))

    def explained_models(self, method: str = "gradcam") -> list[ModelKey]:
        """Models of the run whose maps of `method` exist."""
        return [key for key in self.models() if self.maps(key, method).is_file()]

    # evaluate
    @property
    def metrics(self) -> Path:
        return self.root / "evaluate" / "metrics.csv"

    @property
    def metrics_plot(self) -> Path:
        return self.metrics_plot_of("gradcam")

    @property
    def verdict(self) -> Path:
        """The answer: per method up to which rate accuracy and each metric hold (prunexplain.verdict)."""
        return self.root / "verdict.json"

    @property
    def verdict_dir(self) -> Path:
        """The verdict's tables and figures: every measure over seeds and images, collapsed models marked."""
        return self.root / "verdict"

    @property
    def verdict_metrics(self) -> Path:
        return self.verdict_dir / "metrics.csv"

    def verdict_plot(self, explainer: str) -> Path:
        return self.verdict_dir / _of_method("metrics", explainer, ".png")

    @property
    def scores(self) -> Path:
        """Every metric's per-image scores (`scores_key`), which the verdict pairs image by image."""
        return self.root / "evaluate" / "scores.npz"

    @property
    def meta_evaluation(self) -> Path:
        """Per explainer and metric its noise resilience and agreement with the others (evaluate.meta)."""
        return self.root / "evaluate" / "meta.csv"

    @property
    def agreement_plot(self) -> Path:
        return self.root / "evaluate" / "agreement.png"

    def metrics_plot_of(self, explainer: str) -> Path:
        """The metrics figure of one explanation method: `metrics.png` for Grad-CAM, as its maps."""
        return self.root / "evaluate" / _of_method("metrics", explainer, ".png")

    # study, analysis, report
    @property
    def study(self) -> StudyFolder:
        return StudyFolder(self.root / "study")

    def analysis(self, experiment: str) -> Path:
        """Folder of one experiment's analysis (summary.json, tables, plots)."""
        return self.root / "analysis" / experiment

    @property
    def analysis_source(self) -> Path:
        return self.root / "analysis" / "source.json"

    def analysis_summaries(self) -> dict[str, Path]:
        folders = sorted(p for p in (self.root / "analysis").glob("*") if AnalysisFolder(p).summary.is_file())
        return {p.name: AnalysisFolder(p).summary for p in folders}

    def analysis_file(self, experiment: str, name: str) -> Path:
        """A file an experiment's summary names (its figures), relative to its analysis folder."""
        return AnalysisFolder(self.analysis(experiment)).figure(name)

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def prediction(self) -> PredictionFolder:
        """Where `study predict` writes (the observers' answers, their analysis and power)."""
        return PredictionFolder(self.root / "prediction")

    @property
    def study_rebuild(self) -> Path:
        """Default folder of `study build --manifest`: a rebuild to compare with study/."""
        return self.root / "study-rebuild"

    @property
    def retired(self) -> Path:
        """Outputs of models no longer in the run's settings, kept aside rather than deleted."""
        return self.root / "retired"

    def retire(self, key: ModelKey, stamp: str | None = None) -> list[Path]:
        """Move every output of a model (checkpoint folder, maps) under `retired/<stamp>/`."""
        stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
        moved = []
        for folder in (self.checkpoint(key).parent, self.explain_dir(key)):
            if key.dense or not folder.exists():
                continue
            target = self.retired / stamp / folder.relative_to(self.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(target))
            moved.append(target)
        return moved


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def safe_run_name(name: str) -> bool:
    return _safe_name(name)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on success it replaces `path`, on error it is removed.

    A full disk or a read-only folder becomes a UserError naming the path; the previous file, if
    any, is untouched.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        if error.errno in _STORAGE_ERRORS:
            kept = "the previous file is kept" if path.exists() else "nothing was written there"
            raise UserError(f"{path}: cannot write ({os.strerror(error.errno)}); {kept}") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: Path, value: Any) -> Path:
    return write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows of dicts with the same keys, header from the first row's keys."""
    with atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def write_with(path: Path, save: Callable[[IO[bytes]], None]) -> Path:
    """Atomic write through a library's save function that takes a binary file (torch.save, np.save)."""
    with atomic_open(path, "wb") as handle:
        save(handle)
    return Path(path)


def append_json_array(path: Path, item: Any) -> Path:
    """Append to a file that stays one valid JSON array (the study's results file was not)."""
    path = Path(path)
    items = json.loads(path.read_text()) if path.exists() else []
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a JSON array")
    return write_json(path, [*items, item])


KILL_AFTER = "PRUNEXPLAIN_KILL_AFTER"


def fault_point(name: str) -> None:
    """Fault injection for tests: SIGKILL this process here when `$PRUNEXPLAIN_KILL_AFTER` names
    this point (e.g. `stage:train`, `rate:local_magnitude_unstructured/cr_2`, `answer:3`), so a kill
    test stops a run exactly where it means to instead of sleeping and hoping."""
    if os.environ.get(KILL_AFTER) == name:
        os.kill(os.getpid(), 9)
