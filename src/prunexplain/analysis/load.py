"""Crowd answers from CSV files: one clean table per experiment, every left-out row reported.

Three kinds of file carry the same answers: MTurk's raw batch results (all of MTurk's columns), the
self-hosted study's export (only the columns the analysis needs) and the study's preprocessed files
(the answers plus columns the study's notebook derived from them). All three are read alike; the
derived columns are only checked against the answers, never trusted in their place.

The item, model names and class label come from the stimulus file name in `Input.image_url`, parsed
with the scheme of the experiment's kind (`prunexplain.experiments`; DESIGN.md): experiment 1
`{i}_{left}_{classlabel}_{right}.png`, experiment 2 `{i}_{classlabel}_{model}.png`; a label that is
not file-name safe is there as `file_label(label)`, mapped back through the classes the answer
columns, a preprocessed class column or the study's manifest name (`label_of_file`). The answer
columns, options and preprocessed columns come from the same spec. Rows are numbered as a
spreadsheet shows them: the header is row 1.

Studies built with opaque stimulus names (the default) carry a key, `study/key.csv`: each opaque
file name with its name in the scheme. Given the key (`key`, `read_key`), a file name found there is
read as that name; names in the scheme are read as they are, so one analysis takes both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from prunexplain.config import AnalysisSettings, UserError
from prunexplain.experiments import DENSE_NAME, KINDS, NONE, STUDY_MODEL_HINT, Kind, label_of_file, study_model_rate

log = logging.getLogger(__name__)

REQUIRED = ("HITId", "WorkerId", "Input.image_url")
_OPAQUE = r"[0-9a-f]{20}\.(?:png|jpe?g)"  # study.stimuli.Naming's opaque names
_GIVEN_URL = "Given.image_url"  # Input.image_url as the file has it, where a key renamed its stimulus
_TRUE = {"true", "1", "1.0", "yes", "on", "x"}
_FALSE = {"false", "0", "0.0", "no", "off", ""}
_RAW_MARKERS = ("AssignmentId", "AssignmentStatus", "WorkTimeInSeconds")


@dataclass(frozen=True)
class Problem:
    """One reason a row was left out (or, with row None, a remark about a whole file)."""

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [self.file] + ([f"row {self.row}"] if self.row is not None else [])
        where += [f"column {self.column}"] if self.column else []
        return f"{', '.join(where)}: {self.message}"

    def as_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "column": self.column, "message": self.message}


@dataclass
class SourceFile:
    path: str
    format: str  # raw | export | preprocessed
    rows: int
    kept: int = 0


@dataclass
class Answers:
    """The kept answers of one experiment, one row each, and what was left out and why.

    `frame` columns: file, row, hit, assignment, worker, work_time (seconds, NaN when unknown), url
    (`Input.image_url` as the file has it), item (the stimulus file name), image, label, answer;
    exp1 adds left, right, a, b (the pair in model order), preferred (a model or 'none') and choice
    ('a', 'b' or 'none'); exp2 adds model, correct.
    """

    experiment: str  # the kind's name
    frame: pd.DataFrame
    files: list[SourceFile]
    problems: list[Problem] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    repeated: int = 0  # answers of a worker on an item it had answered in another HIT

    @property
    def left_out(self) -> int:
        return len({(p.file, p.row) for p in self.problems if p.row is not None})

    @property
    def kind(self) -> Kind:
        return KINDS[self.experiment]


def model_sort_key(name: str) -> tuple:
    """'nonpruned' first, then by compression rate, then any other name alphabetically."""
    rate = study_model_rate(name)
    if rate is None:
        return (2, 0.0, name)
    return (0, 0.0, name) if name == DENSE_NAME else (1, rate, name)


def sort_models(names) -> list[str]:
    return sorted(set(names), key=model_sort_key)


def read_answers(
    experiment: str, paths: Sequence[Path], settings: AnalysisSettings | None = None, classes: Sequence[str] = (),
    key: Mapping[str, str] | None = None,
) -> Answers:
    """Read, validate and join the answer files of one experiment; `classes` (a study manifest's) turn
    the file-name forms of labels back into the labels where the files alone do not name them (exp1);
    `key` (`read_key`) turns opaque stimulus names into the scheme's."""
    if not paths:
        raise UserError(f"analyze {experiment}: give at least one CSV file")
    tables = [(str(path), _read_csv(Path(path))) for path in paths]
    return parse_tables(experiment, tables, settings, classes, key)


def read_key(path: Path) -> dict[str, str]:
    """A study's key.csv: each opaque stimulus file name -> its name in the study's scheme."""
    table = _read_csv(Path(path))
    missing = sorted({"file", "name"} - set(table.columns))
    if missing:
        raise UserError(f"{path}: not a stimulus key (no column {', '.join(missing)}); give the study's key.csv")
    return dict(zip(table["file"].str.strip(), table["name"].str.strip()))


def parse_tables(
    experiment: str, tables: Sequence[tuple[str, pd.DataFrame]], settings: AnalysisSettings | None = None,
    classes: Sequence[str] = (), key: Mapping[str, str] | None = None,
) -> Answers:
    """Validate tables read as strings (name, table) and join their good rows; `classes` and `key` as
    in `read_answers`."""
    settings = settings or AnalysisSettings()
    if experiment not in KINDS:
        raise UserError(f"unknown experiment {experiment!r} (known: {', '.join(KINDS)})")
    kind = KINDS[experiment]
    tables = [(name, _expand_label_column(_unkeyed(table.copy(), key or {}), classes)) for name, table in tables]
    labels = _answer_labels(kind, tables)
    known = _known_classes(kind, tables, [*labels, *classes])
    parts, problems, files = [], [], []
    for name, table in tables:
        part, found = _parse_table(kind, name, table, labels, settings, known)
        parts.append(part)
        problems += found
        files.append(SourceFile(name, _format(table), len(table)))
    frame = pd.concat(parts, ignore_index=True)
    frame, found = _drop_duplicates(frame)
    problems += found
    frame, found, repeated = _repeated_items(frame, settings.repeated_items)
    problems += found
    for source in files:
        source.kept = int((frame["file"] == source.path).sum())
    _log_problems(problems)
    if frame.empty:
        first = f"; first: {problems[0]}" if problems else ""
        names = ", ".join(name for name, _ in tables)
        raise UserError(f"{names}: no valid answers left ({len(problems)} problems{first})")
    models = sort_models([*frame["a"], *frame["b"]]) if kind.compares else sort_models(frame["model"])
    if not kind.asks_class:  # the labels are those the file names carry
        labels = sorted(frame["label"].unique(), key=_label_key)
    return Answers(experiment, frame.reset_index(drop=True), files, problems, labels, models, repeated)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a CSV file") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file, expected MTurk batch results (CSV with a header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        raise UserError(f"{path}: not a readable CSV file ({str(error).strip().splitlines()[0]})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _expand_label_column(table: pd.DataFrame, known: Sequence[str] = ()) -> pd.DataFrame:
    """A crowd-classifier layout answers in one column, `Answer.<group>.label`, holding the option:
    spread it into the study's true/false column per option, so both layouts read alike.

    Where a kind asks for the class, its options are the labels chosen, named in the stimulus file
    names (through `label_of_file`, by the chosen and `known` labels) or `known`, and none.
    """
    for kind in KINDS.values():
        column = kind.prefix + "label"
        if column not in table or any(c.startswith(kind.prefix) and c != column for c in table.columns):
            continue
        chosen = table.pop(column).str.strip()
        classes = []
        if kind.asks_class:
            urls = table.get("Input.image_url", pd.Series(dtype=str))
            named = _file_names(urls).str.extract(kind.pattern)["label"].dropna().unique()
            given = {*chosen[chosen != ""], *known} - {NONE}
            classes = sorted({*given, *(label_of_file(n, given) for n in named)} - {NONE}, key=_label_key)
        for option, answer_column in zip(kind.options(classes), kind.columns(classes)):
            table[answer_column] = (chosen == option).map({True: "true", False: "false"})
    return table


def _known_classes(kind: Kind, tables, given: Sequence[str]) -> list[str]:
    """The class labels the files or the caller know: `given` (answer columns, a manifest's classes) and
    a preprocessed file's own class column, which holds the labels themselves."""
    column = next((c for c, ours in kind.preprocessed.items() if ours == "label"), None)
    found = [label for _, table in tables if column in table for label in table[column].str.strip().unique()]
    return list(dict.fromkeys(label for label in [*given, *found] if label))


def _format(table: pd.DataFrame) -> str:
    if any(column in table.columns for column in ("annotation_result", "img_answer", "img_id")):
        return "preprocessed"
    return "raw" if any(column in table.columns for column in _RAW_MARKERS) else "export"


def _label_key(label: str) -> tuple:
    """'2-cassetteplayer' before '10-x': by the leading class index where there is one."""
    head = label.split("-", 1)[0]
    return (0, int(head), label) if head.isdigit() else (1, 0, label)


def _answer_labels(kind: Kind, tables) -> list[str]:
    """The class labels of a kind that asks for the class, from its `Answer.<group>.<label>` columns
    (the same in every file); [] for other kinds."""
    found = None
    for name, table in tables:
        _check_columns(kind, name, table)
        if not kind.asks_class:
            continue
        labels = [c.removeprefix(kind.prefix) for c in table.columns if c.startswith(kind.prefix)]
        labels = sorted((label for label in labels if label not in kind.options()), key=_label_key)
        if found is not None and labels != found:
            raise UserError(f"{name}: its {kind.prefix}* columns differ from the first file's ({', '.join(found)})")
        found = labels
    return found or []


def _check_columns(kind: Kind, name: str, table: pd.DataFrame) -> None:
    columns = set(table.columns)
    ours = any(c.startswith(kind.prefix) for c in columns)
    for other in KINDS.values():
        if other is not kind and not ours and any(c.startswith(other.prefix) for c in columns):
            raise UserError(f"{name}: has {other.prefix}* columns: these are {other.name} results, use "
                            f"`prunexplain analyze {other.name}`")
    needed = [*REQUIRED, *kind.columns()]  # the fixed options' columns; the classes' are counted below
    missing = [c for c in needed if c not in columns]
    if kind.asks_class and sum(c.startswith(kind.prefix) for c in columns) < len(kind.columns()) + 2:
        missing.append(kind.prefix + "<label> (at least two classes)")
    if missing:
        raise UserError(f"{name}: missing column(s) {', '.join(missing)} (is this an MTurk batch-results file?)")


def _parse_table(kind: Kind, name, table, labels, settings, classes) -> tuple[pd.DataFrame, list[Problem]]:
    """The table's rows in the common layout, and the problems of its bad rows (left out)."""
    rows = pd.Series(range(2, len(table) + 2), index=table.index)
    problems: dict[int, list[Problem]] = {}

    def flag(mask: pd.Series, column: str, message) -> None:
        for index in mask[mask].index:
            text = message(index) if callable(message) else message
            problems.setdefault(index, []).append(Problem(name, int(rows[index]), column, text))

    frame = pd.DataFrame(
        {
            "file": name,
            "row": rows,
            "hit": table["HITId"].str.strip(),
            "assignment": table.get("AssignmentId", pd.Series("", index=table.index)).str.strip(),
            "worker": table["WorkerId"].str.strip(),
            "work_time": pd.to_numeric(table.get("WorkTimeInSeconds"), errors="coerce")
            if "WorkTimeInSeconds" in table
            else float("nan"),
            "url": table.get(_GIVEN_URL, table["Input.image_url"]),  # as given: the preprocessed table keeps it
        }
    )
    flag(frame["worker"] == "", "WorkerId", "empty")
    flag(frame["hit"] == "", "HITId", "empty")
    _check_rejected(table, flag)
    frame["answer"] = _answers(kind, table, labels, flag)
    frame = frame.join(_names(kind, table, labels, settings, flag, classes))
    _check_derived(kind, table, frame, flag)
    if problems and len(problems) == len(table):
        _wrong_scheme_hint(kind, name, table)
    bad = list(problems)
    kept = frame.drop(index=bad)
    kept = _add_compare_columns(kind, kept) if kind.compares else _add_recognise_columns(kept)
    return kept, [p for index in sorted(problems) for p in problems[index]]


def _check_rejected(table: pd.DataFrame, flag) -> None:
    """Rejected assignments (MTurk's status, or a requester's mark in the Reject column) do not count."""
    if "AssignmentStatus" in table:
        rejected = table["AssignmentStatus"].str.strip().str.lower() == "rejected"
        flag(rejected, "AssignmentStatus", "rejected assignment")
    if "Reject" in table:
        marked = table["Reject"].str.strip() != ""
        flag(marked, "Reject", lambda i: f"marked for rejection ({table.at[i, 'Reject'].strip()!r})")


def _answers(kind: Kind, table: pd.DataFrame, labels: list[str], flag) -> pd.Series:
    """The one chosen option of each row (alg1/alg2/none or a class label/none); '' where not exactly one."""
    prefix, options = kind.prefix, kind.options(labels)
    chosen = pd.DataFrame(False, index=table.index, columns=options)
    unreadable = pd.Series(False, index=table.index)
    for option in options:
        raw = table[prefix + option].str.strip().str.lower()
        unknown = ~raw.isin(_TRUE | _FALSE)
        column = prefix + option
        flag(unknown, column, lambda i, c=column: f"expected true or false, got {table.at[i, c]!r}")
        chosen[option] = raw.isin(_TRUE)
        unreadable |= unknown
    count = chosen.sum(axis=1)
    flag((count == 0) & ~unreadable, prefix + "*", "no answer")
    several = lambda i: "several answers: " + ", ".join(o for o in options if chosen.at[i, o])  # noqa: E731
    flag(count > 1, prefix + "*", several)
    return chosen.idxmax(axis=1).where(count == 1, "")


def _names(kind: Kind, table, labels, settings, flag, classes) -> pd.DataFrame:
    """Image id, class label and model name(s) parsed from each row's stimulus file name; the label as
    the one of `classes` it stands for (file names hold `file_label`s)."""
    item = _file_names(table["Input.image_url"])
    parts = item.str.extract(kind.pattern)
    url = lambda i: table.at[i, "Input.image_url"]  # noqa: E731
    flag(parts["image"].isna(), "Input.image_url", lambda i: f"{url(i)!r} does not follow {kind.scheme}")
    parts = parts.fillna("")
    parts["label"] = parts["label"].map({name: label_of_file(name, classes) for name in parts["label"].unique()})
    known = set(settings.models)
    is_model = (lambda n: n in known) if known else (lambda n: study_model_rate(n) is not None)
    hint = ", ".join(settings.models) if known else STUDY_MODEL_HINT
    for column in kind.shows:
        names = parts[column]
        unknown = (names != "") & ~names.map(is_model)
        flag(unknown, "Input.image_url", lambda i, c=column: f"unknown model {parts.at[i, c]!r} (known: {hint})")
    if kind.compares:
        first, second = kind.shows
        same = (parts[first] != "") & (parts[first] == parts[second])
        flag(same, "Input.image_url", lambda i: f"the same model {parts.at[i, first]!r} on both sides")
    if kind.asks_class:
        label = lambda i: parts.at[i, "label"]  # noqa: E731
        unknown = (parts["label"] != "") & ~parts["label"].isin(labels)
        flag(unknown, "Input.image_url", lambda i: f"class {label(i)!r} has no {kind.prefix}{label(i)} column")
    return parts.assign(item=item)


def _preferred(kind: Kind, frame: pd.DataFrame, otherwise: str) -> pd.Series:
    """The model each answer prefers: the one shown where its option picks, else `otherwise`."""
    preferred = pd.Series(otherwise, index=frame.index, dtype=object)
    for shown in kind.shows:
        preferred = preferred.mask(frame["answer"] == kind.picking(shown), frame[shown])
    return preferred


def _check_derived(kind: Kind, table: pd.DataFrame, frame: pd.DataFrame, flag) -> None:
    """A preprocessed file's own columns must say what its file name and answer columns say."""
    for column, ours in kind.preprocessed.items():
        if column not in table:
            continue
        differ = (table[column].str.strip() != frame[ours]) & (frame[ours] != "")
        flag(differ, column,
             lambda i, c=column, o=ours: f"says {table.at[i, c]!r}, the answer/file name say {frame.at[i, o]!r}")
    expected = {}
    if kind.asks_class and "correct" in table:
        expected["correct"] = (frame["answer"] == frame["label"]).astype(float).where(frame["label"] != "")
    if kind.compares:
        preferred = _preferred(kind, frame, "")
        for column in table.columns:
            if study_model_rate(column) is not None:
                expected[column] = (preferred == column).astype(float)
    for column, values in expected.items():
        theirs = pd.to_numeric(table[column], errors="coerce")
        differ = (theirs != values) & (frame["answer"] != "") & values.notna()
        flag(differ, column, lambda i, c=column, v=values: f"says {table.at[i, c]!r}, the answer says {v[i]:g}")


def _wrong_scheme_hint(kind: Kind, name: str, table: pd.DataFrame) -> None:
    """Every row bad because the file names follow another kind's scheme: say so, once."""
    items = _file_names(table["Input.image_url"])
    if not len(items) or items.str.match(kind.pattern).any():
        return
    if items.str.fullmatch(_OPAQUE).mean() > 0.5:
        raise UserError(f"{name}: column Input.image_url: opaque stimulus names that no key maps; give the study's "
                        "key.csv (`prunexplain analyze --key`; the analysis stage reads the run's study/key.csv)")
    for other in KINDS.values():
        if other is not kind and items.str.match(other.pattern).mean() > 0.5:
            raise UserError(
                f"{name}: column Input.image_url: file names follow {other.scheme} ({other.name}), not "
                f"{kind.scheme}; use `prunexplain analyze {other.name}`"
            )


def _unkeyed(table: pd.DataFrame, key: Mapping[str, str]) -> pd.DataFrame:
    """The table with each keyed (opaque) stimulus file name in `Input.image_url` replaced by its name
    in the scheme, the URL as given kept in a column of its own."""
    if not key or "Input.image_url" not in table:
        return table
    urls = table["Input.image_url"]
    names = _file_names(urls)
    keyed = names.isin(key.keys())
    table[_GIVEN_URL] = urls
    table["Input.image_url"] = urls.where(~keyed, names.map(key))
    return table


def _file_names(urls: pd.Series) -> pd.Series:
    """The stimulus file name of each URL: no scheme, bucket, folders or query string."""
    return urls.str.strip().str.split("?").str[0].str.rsplit("/", n=1).str[-1]


def _add_compare_columns(kind: Kind, frame: pd.DataFrame) -> pd.DataFrame:
    """The pair in model order (a before b, whichever side they were shown on) and the answer as
    the model it prefers (`preferred`) and as a, b or none (`choice`)."""
    left, right = (frame[shown] for shown in kind.shows)
    rank = {name: i for i, name in enumerate(sort_models([*left, *right]))}
    first = left.map(rank) <= right.map(rank)
    a = left.where(first, right)
    b = right.where(first, left)
    preferred = _preferred(kind, frame, NONE)
    choice = pd.Series(NONE, index=frame.index).mask(preferred == a, "a").mask(preferred == b, "b")
    return frame.assign(a=a, b=b, preferred=preferred, choice=choice)


def _add_recognise_columns(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(correct=frame["answer"] == frame["label"])


def _drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
    """The same assignment twice (same AssignmentId, or one worker twice in one HIT): keep the first.

    MTurk never lets a worker take a HIT twice, so such rows are copies (a batch file given twice,
    or merged by hand); counting them would count one answer twice.
    """
    problems = []
    for keys, column, what in (
        (["assignment"], "AssignmentId", "same AssignmentId"),
        (["worker", "hit"], "WorkerId", "same worker in the same HIT"),
    ):
        usable = frame[keys[0]] != "" if keys == ["assignment"] else pd.Series(True, index=frame.index)
        repeated = frame.duplicated(keys, keep="first") & usable
        if repeated.any():
            first = frame[usable].drop_duplicates(keys).set_index(keys)[["file", "row"]]
            for index in repeated[repeated].index:
                key = tuple(frame.loc[index, keys]) if len(keys) > 1 else frame.at[index, keys[0]]
                origin = first.loc[key]
                problems.append(
                    Problem(
                        frame.at[index, "file"], int(frame.at[index, "row"]), column,
                        f"duplicated assignment ({what} as {origin['file']} row {int(origin['row'])})",
                    )
                )
            frame = frame[~repeated]
    return frame, problems


def _repeated_items(frame: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, list[Problem], int]:
    """A worker who answered the same item in two HITs (the study published items in two batches).

    These are real, paid assignments and the study counted them ('keep'); 'first' keeps the
    worker's first answer only, 'drop' leaves out all of that worker's answers on that item.
    Krippendorff's alpha always takes one answer per worker and item (the first).
    """
    repeated = frame.duplicated(["worker", "item"], keep="first")
    count = int(repeated.sum())
    if count:
        log.warning("%d answers repeat an item their worker answered in another HIT (repeated_items=%s)", count, policy)
    if policy == "keep" or not count:
        return frame, [], count
    leave = frame.duplicated(["worker", "item"], keep=False) if policy == "drop" else repeated
    message = "worker answered item {} in another HIT too (repeated_items=" + policy + ")"
    problems = [Problem(r.file, int(r.row), "WorkerId", message.format(r.item)) for r in frame[leave].itertuples()]
    return frame[~leave], problems, count


def _log_problems(problems: list[Problem], shown: int = 10) -> None:
    for problem in problems[:shown]:
        log.warning("left out: %s", problem)
    if len(problems) > shown:
        log.warning("... and %d more problems (all are listed in summary.json)", len(problems) - shown)
