"""`prunexplain study mturk`: the built study's HITs on Mechanical Turk through its API (boto3).

- `plan_create` / `create_hits`: one HIT per row of each experiment's input CSV, its Question the
  experiment's layout (`study/layouts/<experiment>.html`) as an HTMLQuestion with `${image_url}`
  filled in, the settings of `[mturk]` (reward, assignments, durations, qualifications). Each HIT is
  recorded in `study/hits/<experiment>.csv` as soon as MTurk made it, so an interrupted create
  resumes with the rows still missing; each request carries a UniqueRequestToken derived from its
  content, so a HIT made just before a crash (made, not yet recorded) is found again, not made twice.
- `plan_external`: instead, the self-hosted study (`study serve` behind HTTPS) as ONE ExternalQuestion
  HIT, one assignment per participant (the pre-registered sample), paid `session_reward` for a whole
  session; recorded in `study/hits/external.csv`, at most one per endpoint. `status` follows it; its
  answers are in the server's database (`study export`), so `collect` and `approve` leave it alone
  (MTurk approves its assignments after `auto_approval_delay_seconds`).
- `status`: per experiment the HITs' assignments (available, pending, completed) and the submitted
  work (awaiting review, approved, rejected).
- `collect`: every submitted assignment in MTurk's batch-results format (the columns `prunexplain
  analyze` reads, the answer as the study's true/false column per option): live HITs into
  `study/answers/<experiment>_mturk.csv`, sandbox HITs beside their records (test answers never
  become the study's).
- `plan_approval` / `send_decisions`: approve submitted work, or reject it by the pre-registered
  exclusion rules (`preregistration.exclusion_rules`), with the rule named in the feedback.

The sandbox (no money, test workers) unless `live`; sandbox and live records never mix. Credentials
come from the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile). Every MTurk
error becomes one UserError line. Torch-free.

What a worker submits: the layout is a `crowd-form` whose radio buttons are named `<group>.label`
(mturk.py). A crowd-form sends all its fields as one answer, `taskAnswers`, whose FreeText is a
JSON array of one object of field values; `answer_fields` flattens it to dotted names, so the
answer is `fields["algorithms.label"] == "alg1"` (a nested `{"algorithms": {"label": ...}}` or a
per-option boolean reads the same).
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import logging
import re
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from xml.etree import ElementTree

from tqdm import tqdm

from prunexplain.config import MTurkSettings, QualificationSetting, read_json
from prunexplain.errors import UserError
from prunexplain.experiments import Kind, kind
from prunexplain.runs import StudyFolder, write_csv
from prunexplain.study.server.platforms import external_question

log = logging.getLogger(__name__)

ENDPOINTS = {
    "sandbox": "https://mturk-requester-sandbox.us-east-1.amazonaws.com",
    "live": "https://mturk-requester.us-east-1.amazonaws.com",
}
PREVIEW = {
    "sandbox": "https://workersandbox.mturk.com/mturk/preview?groupId=",
    "live": "https://worker.mturk.com/mturk/preview?groupId=",
}
HTML_QUESTION = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd"
STATUSES = ("Submitted", "Approved", "Rejected")
EXTERNAL = "external"  # the record name of the self-hosted study's HIT: study/hits/external.csv
NO_CREDENTIALS = ("study mturk: no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
                  "in the environment")

# MTurk's published pricing (https://www.mturk.com/pricing): a 20 % fee on the reward, 40 % for HITs
# with 10 or more assignments, and at least $0.01 per assignment.
FEE = Decimal("0.20")
FEE_TEN_OR_MORE = Decimal("0.40")
MIN_FEE = Decimal("0.01")
CENT = Decimal("0.01")

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_HIT_ID = re.compile(r"\b[A-Z0-9]{30}\b")


def where(live: bool) -> str:
    return "live" if live else "sandbox"


def connect(live: bool = False):
    """An MTurk client of the sandbox (default) or of production, credentials from the environment."""
    import boto3

    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise UserError(NO_CREDENTIALS)
    return session.client("mturk", region_name="us-east-1", endpoint_url=ENDPOINTS[where(live)])


@contextmanager
def mturk_errors(what: str) -> Iterator[None]:
    """botocore's errors as one UserError line naming the operation."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise UserError(NO_CREDENTIALS) from None
    except ClientError as error:
        details = error.response.get("Error", {})
        message = " ".join(str(details.get("Message") or error).split())
        raise UserError(f"study mturk {what}: {details.get('Code', 'error')}: {message}") from None
    except BotoCoreError as error:
        raise UserError(f"study mturk {what}: {' '.join(str(error).split())}") from None


# --- the built study --------------------------------------------------------------------------------


@dataclass
class StudyExperiment:
    """One experiment of the built study as MTurk needs it: its kind, input rows and layout."""

    key: str
    kind: Kind
    rows: list[dict[str, str]]
    layout: str
    classes: list[str]

    @property
    def options(self) -> list[str]:
        return self.kind.options(self.classes)

    @property
    def columns(self) -> list[str]:
        return self.kind.columns(self.classes)


def study_experiments(folder: StudyFolder, keys: Sequence[str] | None = None) -> list[StudyExperiment]:
    """The experiments `keys` (default: all) of the study's manifest with their input rows and layouts."""
    if not folder.manifest.is_file():
        raise UserError(f"{folder.root}: no study/manifest.json; run `prunexplain study build` first")
    manifest = read_json(folder.manifest)
    described = manifest.get("experiments") or {}
    keys = list(keys or described)
    for key in keys:
        if key not in described:
            raise UserError(f"study mturk: experiment {key!r} is not in {folder.manifest} (built: "
                            f"{', '.join(described) or 'none'})")
    found = []
    for key in keys:
        entry = described[key]
        input_csv, layout = folder.stimulus(entry["input"]), folder.stimulus(entry["layout"])
        for path in (input_csv, layout):
            if not path.is_file():
                raise UserError(f"{path}: missing; run `prunexplain study build` again")
        with open(input_csv, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "image_url" not in (reader.fieldnames or []):
                raise UserError(f"{input_csv}: no image_url column")
            rows = list(reader)
        found.append(StudyExperiment(key, kind(entry["kind"]), rows, layout.read_text(encoding="utf-8"),
                                     list(manifest.get("classes", []))))
    return found


def read_records(path: Path) -> list[dict[str, str]]:
    """The HITs `create_hits` recorded (HITId, HITTypeId, image_url, created, endpoint); [] if none."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check_endpoint(path: Path, records: list[dict[str, str]], here: str) -> None:
    """Sandbox and live HITs never share a record file: refuse the other endpoint's."""
    found = {record.get("endpoint", "") for record in records}
    if found and found != {here}:
        hint = "add --live" if "live" in found else "leave out --live"
        raise UserError(f"{path}: holds {'/'.join(sorted(found))} HITs, this call is for {here} ({hint}); sandbox "
                        "and live HITs are never mixed: move the file away to start over")


def _recorded(folder: StudyFolder, experiment: str, here: str) -> list[dict[str, str]]:
    path = folder.hits(experiment)
    records = read_records(path)
    _check_endpoint(path, records, here)
    return records


def external_records(folder: StudyFolder, here: str) -> list[dict[str, str]]:
    """The external HIT of endpoint `here`, if made: its file holds one per endpoint, so a sandbox trial
    and the live HIT live side by side (a single row each cannot be confused)."""
    return [record for record in read_records(folder.hits(EXTERNAL)) if record.get("endpoint") == here]


# --- create -----------------------------------------------------------------------------------------


def reward_text(reward: float) -> str:
    """MTurk's Reward: US dollars as a string with two decimals ("0.05")."""
    return str(Decimal(str(reward)).quantize(CENT))


def fee_rate(assignments: int) -> Decimal:
    return FEE_TEN_OR_MORE if assignments >= 10 else FEE


@dataclass(frozen=True)
class Cost:
    """What `hits` HITs of `assignments` assignments at `reward` cost, MTurk's fee included."""

    hits: int
    assignments: int
    reward: Decimal

    @property
    def fee_per_assignment(self) -> Decimal:
        return max(self.reward * fee_rate(self.assignments), MIN_FEE)

    @property
    def rewards(self) -> Decimal:
        return (self.hits * self.assignments * self.reward).quantize(CENT, ROUND_HALF_UP)

    @property
    def fees(self) -> Decimal:
        return (self.hits * self.assignments * self.fee_per_assignment).quantize(CENT, ROUND_HALF_UP)

    @property
    def total(self) -> Decimal:
        return self.rewards + self.fees

    def summary(self) -> str:
        rate = f"{fee_rate(self.assignments) * 100:.0f} %"
        return (f"{self.hits} HITs x {self.assignments} assignments x ${self.reward} = ${self.rewards} in rewards + "
                f"${self.fees} MTurk fee ({rate}, at least ${MIN_FEE} an assignment) = ${self.total}")


def qualification_requirement(setting: QualificationSetting) -> dict[str, Any]:
    """One QualificationRequirement of CreateHIT."""
    requirement: dict[str, Any] = {"QualificationTypeId": setting.type_id, "Comparator": setting.comparator,
                                   "ActionsGuarded": setting.actions_guarded}
    if setting.values:
        requirement["IntegerValues"] = list(setting.values)
    if setting.locales:
        requirement["LocaleValues"] = [
            {"Country": country, **({"Subdivision": part} if part else {})}
            for country, _, part in (code.partition("-") for code in setting.locales)
        ]
    return requirement


def html_question(layout: str, row: dict[str, str]) -> str:
    """The layout as an HTMLQuestion, each `${column}` replaced by the row's value (HTML-escaped)."""
    body = _PLACEHOLDER.sub(lambda match: html.escape(row[match[1]], quote=True), layout)
    page = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n{body}</body></html>\n'
    content = page.replace("]]>", "]]]]><![CDATA[>")  # a CDATA section cannot hold its own end
    return (f'<HTMLQuestion xmlns="{HTML_QUESTION}">\n<HTMLContent><![CDATA[\n{content}]]></HTMLContent>\n'
            "<FrameHeight>0</FrameHeight>\n</HTMLQuestion>\n")


def hit_request(settings: MTurkSettings, question: str, url: str, **fields: Any) -> dict[str, Any]:
    """CreateHIT's parameters: `question` showing `url` under the settings, `fields` (CreateHIT's names:
    Title, Description, and whatever differs from a stimulus HIT's settings) on top. The UniqueRequestToken
    is a digest of the rest: the same HIT asked for again within MTurk's 24 hours is answered with the
    one made before."""
    request = {
        "MaxAssignments": settings.assignments,
        "AutoApprovalDelayInSeconds": settings.auto_approval_delay_seconds,
        "LifetimeInSeconds": settings.lifetime_seconds,
        "AssignmentDurationInSeconds": settings.assignment_duration_seconds,
        "Reward": reward_text(settings.reward),
        "Keywords": settings.keywords,
        "Question": question,
        "RequesterAnnotation": url[:255],  # MTurk's limit; the records hold the whole URL
        "QualificationRequirements": [qualification_requirement(q) for q in settings.qualifications],
        **fields,
    }
    request["UniqueRequestToken"] = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    return request


@dataclass
class PlannedHIT:
    experiment: str
    image_url: str
    request: dict[str, Any]


@dataclass
class CreatePlan:
    """The HITs still to create (rows without a recorded HIT) and what they cost."""

    endpoint: str
    hits: list[PlannedHIT]
    recorded: dict[str, int]  # experiment -> HITs made before
    cost: Cost

    def summary(self) -> str:
        missing: dict[str, int] = {}
        for hit in self.hits:
            missing[hit.experiment] = missing.get(hit.experiment, 0) + 1
        lines = [f"{key}: {missing.get(key, 0)} HITs to create, {count} created before ({self.endpoint})"
                 for key, count in self.recorded.items()]
        paid = "the sandbox pays nothing" if self.endpoint == "sandbox" else "live: real money"
        return "\n".join([*lines, f"cost: {self.cost.summary()} ({paid})"])


def _check_urls(path: Path, rows: list[dict[str, str]]) -> None:
    """Workers' browsers load `image_url`: it must be an absolute http(s) URL, once per input."""
    urls = [row["image_url"].strip() for row in rows]
    bad = [url for url in urls if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc]
    if bad:
        raise UserError(f"{path}: {len(bad)} of {len(urls)} image_url values are not http(s) URLs (first: "
                        f"{bad[0]!r}); workers must be able to load them: run `prunexplain study publish` and "
                        "build again with study.url_prefix set to the published URL")
    seen: set[str] = set()
    for url in urls:
        if url in seen:
            raise UserError(f"{path}: image_url {url!r} is there twice; one HIT per stimulus")
        seen.add(url)
    plain = sum(url.startswith("http://") for url in urls)
    if plain:
        log.warning("%s: %d image URLs are http://: MTurk shows HITs over https and browsers may block them", path,
                    plain)


def plan_create(folder: StudyFolder, settings: MTurkSettings, keys: Sequence[str] | None = None,
                live: bool = False) -> CreatePlan:
    """The HITs of experiments `keys` (default: all) that are not recorded yet, and their cost."""
    here = where(live)
    planned, recorded = [], {}
    for experiment in study_experiments(folder, keys):
        input_csv = folder.input_csv(experiment.key)
        _check_urls(input_csv, experiment.rows)
        unknown = sorted(set(_PLACEHOLDER.findall(experiment.layout)) - set(experiment.rows[0] if experiment.rows
                                                                             else {"image_url"}))
        if unknown:
            raise UserError(f"{folder.layout(experiment.key)}: placeholder ${{{unknown[0]}}} has no column in "
                            f"{input_csv}")
        records = _recorded(folder, experiment.key, here)
        done = {record["image_url"] for record in records}
        recorded[experiment.key] = len(records)
        urls = {row["image_url"].strip() for row in experiment.rows}
        if done - urls:
            log.warning("%s: %d recorded HITs show stimuli no longer in %s", folder.hits(experiment.key),
                        len(done - urls), input_csv)
        for row in experiment.rows:
            row = {**row, "image_url": row["image_url"].strip()}
            if row["image_url"] not in done:
                task = experiment.kind
                request = hit_request(settings, html_question(experiment.layout, row), row["image_url"],
                                      Title=task.title, Description=settings.descriptions.get(task.name, task.question))
                planned.append(PlannedHIT(experiment.key, row["image_url"], request))
    cost = Cost(len(planned), settings.assignments, Decimal(reward_text(settings.reward)))
    return CreatePlan(here, planned, recorded, cost)


def plan_external(folder: StudyFolder, settings: MTurkSettings, url: str, participants: int | None = None,
                  live: bool = False) -> CreatePlan:
    """The self-hosted study at `url` as one ExternalQuestion HIT of `participants` assignments (default:
    the pre-registered sample), paid and timed per session; refused when this endpoint has one."""
    here = where(live)
    try:
        question = external_question(url)
    except ValueError as error:
        raise UserError(f"study mturk create --external: {error}; serve the study behind HTTPS") from None
    for record in external_records(folder, here):
        made = f"{folder.hits(EXTERNAL)}: the study has its {here} HIT {record['HITId']}"
        if record["image_url"] == url:
            raise UserError(f"{made} for {url} already; one external HIT per study and endpoint")
        raise UserError(f"{made} for {record['image_url']}, not {url}; one external HIT per study and endpoint: "
                        "expire that HIT on MTurk and move its record away to make another")
    if participants is not None and participants < 1:
        raise UserError(f"study mturk create --participants {participants}: give 1 or more")
    planned = planned_participants(folder)
    count = participants or planned
    if not count:
        raise UserError("study mturk create --external: how many participants? Give --participants N, or run "
                        f"`prunexplain study preregister` to plan them in {folder.preregistration_data}")
    if planned and count != planned:
        log.warning("%d participants, where the pre-registration plans %d", count, planned)
    request = hit_request(settings, question, url, Title=settings.session_title,
                          Description=settings.session_description, MaxAssignments=count,
                          Reward=reward_text(settings.session_reward),
                          AssignmentDurationInSeconds=settings.session_duration_seconds)
    cost = Cost(1, count, Decimal(reward_text(settings.session_reward)))
    return CreatePlan(here, [PlannedHIT(EXTERNAL, url, request)], {EXTERNAL: 0}, cost)


def planned_participants(folder: StudyFolder) -> int | None:
    """The pre-registered sample, None without one: ceil(stimuli x answers_per_stimulus, summed over the
    served experiments, / tasks_per_participant), as `study preregister` wrote it."""
    path = folder.preregistration_data
    participants = (read_json(path).get("sample") or {}).get("participants") if path.is_file() else None
    return participants if isinstance(participants, int) and participants > 0 else None


def account_balance(client, plan: CreatePlan | None = None) -> str:
    """The account's available balance; refuses a live plan that costs more."""
    with mturk_errors("balance"):
        balance = Decimal(client.get_account_balance()["AvailableBalance"])
    if plan is not None and plan.endpoint == "live" and balance < plan.cost.total:
        fewer = "fewer participants (--participants)" if EXTERNAL in plan.recorded else "fewer HITs (--experiment)"
        raise UserError(f"study mturk create: the account's balance ${balance} is less than the estimate "
                        f"${plan.cost.total}; add funds or ask for {fewer}")
    return f"balance: ${balance}"


@dataclass
class CreateResult:
    endpoint: str
    created: dict[str, int]
    hit_types: set[str] = field(default_factory=set)

    def summary(self) -> str:
        lines = [f"{key}: {count} HITs created ({self.endpoint})" for key, count in self.created.items()]
        lines += [f"preview: {PREVIEW[self.endpoint]}{hit_type}" for hit_type in sorted(self.hit_types)]
        return "\n".join(lines)


def create_hits(client, plan: CreatePlan, folder: StudyFolder) -> CreateResult:
    """Create the planned HITs, recording each in `study/hits/<experiment>.csv` as soon as it exists."""
    result = CreateResult(plan.endpoint, {key: 0 for key in plan.recorded})
    records = {key: read_records(folder.hits(key)) for key in plan.recorded}  # the plan checked their endpoints
    for hit in tqdm(plan.hits, desc="create HITs", unit="HIT", disable=None):
        try:
            made = _create(client, hit)
        except UserError as error:
            made_now = sum(result.created.values())
            raise UserError(f"{error} ({made_now} of {len(plan.hits)} HITs created and recorded in "
                            f"{folder.hits(hit.experiment).parent}; `study mturk create` again makes only the "
                            "rest)") from None
        created = made.get("CreationTime") or datetime.now(UTC)
        records[hit.experiment].append({
            "HITId": made["HITId"], "HITTypeId": made.get("HITTypeId", ""), "image_url": hit.image_url,
            "created": created.isoformat() if isinstance(created, datetime) else str(created),
            "endpoint": plan.endpoint,
        })
        write_csv(folder.hits(hit.experiment), records[hit.experiment])
        result.created[hit.experiment] += 1
        result.hit_types.add(made.get("HITTypeId", ""))
    result.hit_types.discard("")
    log.info("created %d HITs (%s)", sum(result.created.values()), plan.endpoint)
    return result


def _create(client, hit: PlannedHIT) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    with mturk_errors(f"create {hit.experiment}"):
        try:
            return client.create_hit(**hit.request)["HIT"]
        except ClientError as error:
            details = error.response.get("Error", {})
            if "HitAlreadyExists" not in f"{details.get('Code', '')} {details.get('Message', '')}":
                raise
            return _made_before(client, hit, details.get("Message", ""))


def _made_before(client, hit: PlannedHIT, message: str) -> dict[str, Any]:
    """The HIT an earlier, unrecorded call made (MTurk names its HITId when the token comes again)."""
    for hit_id in _HIT_ID.findall(message):
        made = client.get_hit(HITId=hit_id)["HIT"]
        if made.get("RequesterAnnotation") == hit.request["RequesterAnnotation"]:
            log.info("%s: HIT %s was made before (not recorded then); recorded now", hit.image_url, hit_id)
            return made
    raise UserError(f"study mturk create {hit.experiment}: MTurk says the HIT of {hit.image_url} exists, but "
                    f"names no HIT of it ({message!r})")


# --- assignments --------------------------------------------------------------------------------------


def assignments(client, hit_id: str) -> list[dict[str, Any]]:
    """Every submitted, approved or rejected assignment of a HIT (all pages)."""
    found = []
    with mturk_errors(f"list assignments of {hit_id}"):
        pages = client.get_paginator("list_assignments_for_hit").paginate(
            HITId=hit_id, AssignmentStatuses=list(STATUSES), PaginationConfig={"PageSize": 100})
        for page in pages:
            found += page.get("Assignments", [])
    return found


def answer_fields(answer: str) -> dict[str, Any]:
    """The form fields of an assignment's Answer (QuestionFormAnswers XML) by name: a crowd-form's
    `taskAnswers` JSON flattened to dotted names, any other field as its text; {} when unreadable."""
    try:
        root = ElementTree.fromstring(answer)
    except (ElementTree.ParseError, TypeError):
        return {}
    fields: dict[str, Any] = {}
    for item in root.iterfind(".//{*}Answer"):
        name = (item.findtext("{*}QuestionIdentifier") or "").strip()
        text = item.findtext("{*}FreeText")
        if text is None:
            selected = [s.text or "" for s in item.iterfind("{*}SelectionIdentifier")]
            text = selected[0] if len(selected) == 1 else None
        if text is None:
            continue
        if name != "taskAnswers":
            fields[name] = text.strip()
            continue
        try:
            values = json.loads(text)
        except ValueError:
            continue
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, dict):
                fields.update(_flattened(value))
    return fields


def _flattened(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat.update(_flattened(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "on", "1"))


def chosen_option(task: Kind, options: Sequence[str], fields: dict[str, Any]) -> str | None:
    """The one option an assignment chose (`<group>.label`), or None when it chose none or several."""
    group = task.answer_group
    value = fields.get(f"{group}.label")
    if isinstance(value, str) and value.strip() in options:
        return value.strip()
    picked = [o for o in options if _true(fields.get(f"{group}.label.{o}")) or _true(fields.get(f"{group}.{o}"))]
    return picked[0] if len(picked) == 1 else None


def work_seconds(assignment: dict[str, Any]) -> int | None:
    """WorkTimeInSeconds as MTurk's batch results give it: SubmitTime - AcceptTime."""
    accepted, submitted = assignment.get("AcceptTime"), assignment.get("SubmitTime")
    if not isinstance(accepted, datetime) or not isinstance(submitted, datetime):
        return None
    return int((submitted - accepted).total_seconds())


def _batch_time(value: Any) -> str:
    """A time as MTurk's batch results write it ('Mon Jun 14 06:10:19 UTC 2021'), in UTC."""
    if not isinstance(value, datetime):
        return ""
    return value.astimezone(UTC).strftime("%a %b %d %H:%M:%S UTC %Y")


# --- status -------------------------------------------------------------------------------------------


@dataclass
class ExperimentStatus:
    experiment: str
    hits: int = 0
    available: int = 0
    pending: int = 0
    completed: int = 0
    submitted: int = 0  # awaiting review
    approved: int = 0
    rejected: int = 0

    def line(self) -> str:
        if not self.hits:
            return f"{self.experiment}: no HITs created"
        return (f"{self.experiment}: {self.hits} HITs; assignments {self.available} available, {self.pending} pending, "
                f"{self.completed} completed; work {self.submitted} awaiting review, {self.approved} approved, "
                f"{self.rejected} rejected")


@dataclass
class StatusResult:
    endpoint: str
    experiments: list[ExperimentStatus]
    balance: str = ""

    def summary(self) -> str:
        return "\n".join([f"MTurk {self.endpoint}; {self.balance}", *(e.line() for e in self.experiments)])


def status(client, folder: StudyFolder, keys: Sequence[str] | None = None, live: bool = False) -> StatusResult:
    """Per experiment its HITs' assignments (GetHIT) and the work submitted to them; the external HIT's too."""
    here = where(live)
    external = external_records(folder, here)
    chosen = [(e.key, _recorded(folder, e.key, here)) for e in _with_records(folder, keys, here, bool(external))]
    result = StatusResult(here, [])
    for key, records in [*chosen, *([(EXTERNAL, external)] if external else [])]:
        state = ExperimentStatus(key)
        for record in tqdm(records, desc=f"status {key}", unit="HIT", disable=None):
            with mturk_errors(f"status of {record['HITId']}"):
                hit = client.get_hit(HITId=record["HITId"])["HIT"]
            state.hits += 1
            state.available += hit.get("NumberOfAssignmentsAvailable", 0)
            state.pending += hit.get("NumberOfAssignmentsPending", 0)
            state.completed += hit.get("NumberOfAssignmentsCompleted", 0)
            for assignment in assignments(client, record["HITId"]):
                name = assignment.get("AssignmentStatus", "").lower()
                if name in ("submitted", "approved", "rejected"):
                    setattr(state, name, getattr(state, name) + 1)
        result.experiments.append(state)
    result.balance = account_balance(client)
    return result


def _with_records(folder: StudyFolder, keys: Sequence[str] | None, here: str,
                  external: bool = False) -> list[StudyExperiment]:
    """The chosen experiments, refusing when none has a recorded HIT (and there is no `external` one)."""
    chosen = study_experiments(folder, keys)
    if not external and not any(_recorded(folder, experiment.key, here) for experiment in chosen):
        names = ", ".join(e.key for e in chosen) or "the study"
        raise UserError(f"{folder.hit_decisions.parent}: no {here} HITs recorded for {names}; run `prunexplain "
                        "study mturk create` first")
    return chosen


# --- collect ------------------------------------------------------------------------------------------


@dataclass
class CollectResult:
    endpoint: str
    files: dict[str, Path]
    answers: dict[str, int]
    unreadable: dict[str, int]

    def summary(self) -> str:
        lines = []
        for key, count in self.answers.items():
            path = self.files.get(key)
            where_to = f" -> {path}" if path else " (nothing written)"
            bad = f", {self.unreadable[key]} without a readable answer" if self.unreadable.get(key) else ""
            lines.append(f"{key}: {count} assignments{bad}{where_to}")
        if self.endpoint == "sandbox" and self.files:
            lines.append("sandbox answers are kept beside the HIT records, out of study/answers/; `prunexplain "
                         "analyze` reads them when given the file")
        return "\n".join(lines)


def batch_row(experiment: StudyExperiment, record: dict[str, str], assignment: dict[str, Any]) -> dict[str, Any]:
    """One assignment in MTurk's batch-results layout, the answer as a true/false column per option."""
    answer = chosen_option(experiment.kind, experiment.options, answer_fields(assignment.get("Answer", "")))
    work = work_seconds(assignment)
    row = {
        "HITId": assignment.get("HITId", record["HITId"]), "HITTypeId": record.get("HITTypeId", ""),
        "AssignmentId": assignment["AssignmentId"], "WorkerId": assignment["WorkerId"],
        "AssignmentStatus": assignment["AssignmentStatus"],
        "AcceptTime": _batch_time(assignment.get("AcceptTime")),
        "SubmitTime": _batch_time(assignment.get("SubmitTime")),
        "AutoApprovalTime": _batch_time(assignment.get("AutoApprovalTime")),
        "ApprovalTime": _batch_time(assignment.get("ApprovalTime")),
        "RejectionTime": _batch_time(assignment.get("RejectionTime")),
        "RequesterFeedback": assignment.get("RequesterFeedback", ""),
        "WorkTimeInSeconds": "" if work is None else work,
        "Input.image_url": record["image_url"],
    }
    row.update({column: "true" if option == answer else "false"
                for option, column in zip(experiment.options, experiment.columns)})
    return row


def collect(client, folder: StudyFolder, keys: Sequence[str] | None = None, live: bool = False) -> CollectResult:
    """Every assignment of the recorded HITs as MTurk batch results: live HITs into
    `study/answers/<experiment>_mturk.csv` (what the analysis reads), sandbox HITs into
    `study/hits/<experiment>_sandbox_answers.csv`."""
    here = where(live)
    external = external_records(folder, here)
    for record in external:
        log.info("%s: HIT %s shows the self-hosted study; its answers are in %s, written by `prunexplain study "
                 "export`, not collect", folder.hits(EXTERNAL), record["HITId"], folder.database)
    result = CollectResult(here, {}, {}, {})
    for experiment in _with_records(folder, keys, here, bool(external)):
        rows = []
        for record in tqdm(_recorded(folder, experiment.key, here), desc=f"collect {experiment.key}", unit="HIT",
                           disable=None):
            rows += [batch_row(experiment, record, a) for a in assignments(client, record["HITId"])]
        result.answers[experiment.key] = len(rows)
        result.unreadable[experiment.key] = sum(all(row[c] == "false" for c in experiment.columns) for row in rows)
        if rows:  # an empty file would stand for answers in the crowd stage
            path = folder.mturk_answers(experiment.key) if live else folder.sandbox_answers(experiment.key)
            result.files[experiment.key] = write_csv(path, rows)
    return result


# --- approve ------------------------------------------------------------------------------------------

DECISION_COLUMNS = ("experiment", "HITId", "AssignmentId", "WorkerId", "WorkTimeInSeconds", "worker_median_work_time",
                    "decision", "rule", "RequesterFeedback", "endpoint", "sent", "decided")


@dataclass
class Decision:
    experiment: str
    hit: str
    assignment: str
    worker: str
    work_time: int | None
    median_work_time: float | None
    decision: str  # approve | reject
    rule: str = ""  # the exclusion rule that rejects: no_answer | min_median_work_time
    feedback: str = ""
    sent: bool = False

    def row(self, endpoint: str, decided: str) -> dict[str, Any]:
        values = (self.experiment, self.hit, self.assignment, self.worker,
                  "" if self.work_time is None else self.work_time,
                  "" if self.median_work_time is None else f"{self.median_work_time:g}", self.decision, self.rule,
                  self.feedback, endpoint, "yes" if self.sent else "no", decided)
        return dict(zip(DECISION_COLUMNS, values))


@dataclass
class ApprovalPlan:
    """What `send_decisions` will tell MTurk about the submitted assignments, and by which rules."""

    endpoint: str
    decisions: list[Decision]
    min_median_work_time: float | None
    preregistered: bool

    @property
    def rejections(self) -> list[Decision]:
        return [d for d in self.decisions if d.decision == "reject"]

    def rules(self) -> str:
        source = "pre-registered" if self.preregistered else "NOT pre-registered (analysis settings)"
        threshold = ("none" if self.min_median_work_time is None else f"{self.min_median_work_time:g} s")
        return f"rules, {source}: no_answer (an answer must be readable); min_median_work_time {threshold}"

    def summary(self) -> str:
        lines = [self.rules()]
        for decision in self.rejections:
            lines.append(f"reject {decision.assignment} of {decision.worker} ({decision.experiment}): {decision.rule}")
        counts: dict[str, list[int]] = {}
        for decision in self.decisions:
            counts.setdefault(decision.experiment, [0, 0])[decision.decision == "reject"] += 1
        lines += [f"{key}: {approve} to approve, {reject} to reject" for key, (approve, reject) in counts.items()]
        return "\n".join(lines if self.decisions else [*lines, "no submitted assignments awaiting review"])


def plan_approval(client, folder: StudyFolder, keys: Sequence[str] | None = None, live: bool = False,
                  fallback_min_median_work_time: float | None = None) -> ApprovalPlan:
    """Decide every submitted assignment: reject it when it has no readable answer, or when its worker's
    median WorkTimeInSeconds over all their assignments of the experiment is below the rule's minimum
    (then all their submitted ones); approve the rest. The rules are the pre-registered ones
    (`exclusion_rules`); a study without a pre-registration falls back to the analysis setting."""
    from prunexplain.study.preregistration import exclusion_rules

    here = where(live)
    preregistered = folder.preregistration_data.is_file()
    if preregistered:
        threshold = exclusion_rules(folder).get("min_median_work_time")
    else:
        threshold = fallback_min_median_work_time
        log.warning("study mturk approve: %s is missing, so these rules are not pre-registered: analysis."
                    "min_median_work_time = %s and readable answers", folder.preregistration_data, threshold)
    decisions = []
    for experiment in _with_records(folder, keys, here):
        found = [(record, a) for record in _recorded(folder, experiment.key, here)
                 for a in assignments(client, record["HITId"])]
        times: dict[str, list[int]] = {}
        for _, a in found:
            if (seconds := work_seconds(a)) is not None:
                times.setdefault(a["WorkerId"], []).append(seconds)
        medians = {worker: float(statistics.median(values)) for worker, values in times.items()}
        for record, a in found:
            if a.get("AssignmentStatus") != "Submitted":
                continue
            median = medians.get(a["WorkerId"])
            answer = chosen_option(experiment.kind, experiment.options, answer_fields(a.get("Answer", "")))
            decision = Decision(experiment.key, a.get("HITId", record["HITId"]), a["AssignmentId"], a["WorkerId"],
                                work_seconds(a), median, "approve")
            if answer is None:
                decision.decision, decision.rule = "reject", "no_answer"
                decision.feedback = ("Rejected: no answer could be read from this assignment (every HIT asks for "
                                     "one choice).")
            elif threshold is not None and median is not None and median < threshold:
                decision.decision, decision.rule = "reject", "min_median_work_time"
                named = "pre-registered minimum" if preregistered else "minimum"
                decision.feedback = (f"Rejected: your median work time on these HITs, {median:g} s, is below the "
                                     f"{named} of {threshold:g} s (rule min_median_work_time).")
            decisions.append(decision)
    return ApprovalPlan(here, decisions, threshold, preregistered)


@dataclass
class ApprovalResult:
    plan: ApprovalPlan
    path: Path
    dry_run: bool

    def summary(self) -> str:
        sent = [d for d in self.plan.decisions if d.sent]
        verb = "would be" if self.dry_run else "were"
        approved = sum(d.decision == "approve" for d in (self.plan.decisions if self.dry_run else sent))
        rejected = sum(d.decision == "reject" for d in (self.plan.decisions if self.dry_run else sent))
        return (f"{approved} assignments {verb} approved, {rejected} rejected ({self.plan.endpoint}"
                f"{', dry run: nothing sent' if self.dry_run else ''}); decisions in {self.path}")


def send_decisions(client, plan: ApprovalPlan, folder: StudyFolder, dry_run: bool = False) -> ApprovalResult:
    """Tell MTurk each decision (none with `dry_run`) and write them to `study/hits/decisions.csv`,
    replacing earlier rows of the same assignments; written even when MTurk stops us halfway."""
    try:
        if not dry_run:
            for decision in tqdm(plan.decisions, desc="approve", unit="assignment", disable=None):
                with mturk_errors(f"{decision.decision} {decision.assignment}"):
                    if decision.decision == "approve":
                        client.approve_assignment(AssignmentId=decision.assignment)
                    else:
                        client.reject_assignment(AssignmentId=decision.assignment,
                                                 RequesterFeedback=decision.feedback)
                decision.sent = True
    finally:
        _write_decisions(folder.hit_decisions, plan)
    return ApprovalResult(plan, folder.hit_decisions, dry_run)


def _write_decisions(path: Path, plan: ApprovalPlan) -> None:
    decided = datetime.now(UTC).isoformat(timespec="seconds")
    rows = {row["AssignmentId"]: row for row in read_records(path)}
    rows.update({d.assignment: d.row(plan.endpoint, decided) for d in plan.decisions})
    if rows:
        write_csv(path, list(rows.values()))
