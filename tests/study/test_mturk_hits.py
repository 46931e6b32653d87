"""`study mturk create|status|collect|approve` against botocore's Stubber: no network, MTurk's own
request and response shapes (the Stubber validates both against the service model)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
import typer
from botocore.stub import ANY, Stubber
from typer.testing import CliRunner

from prunexplain.analysis.load import read_answers
from prunexplain.cli import app
from prunexplain.config import Settings, UserError, load_settings
from prunexplain.experiments import COMPARE, EXPERIMENTS, RECOGNISE
from prunexplain.runs import Run, StudyFolder, write_csv, write_json
from prunexplain.study import hits
from prunexplain.study.mturk import write_input, write_layout
from prunexplain.study.server.platforms import external_question

CLASSES = ["0-fish", "1-dog", "2-cassetteplayer"]
PREFIX = "https://stimuli.s3.amazonaws.com/pilot/"
STIMULI = {
    "exp1": ["0_nonpruned_0-fish_2pruned.png", "1_2pruned_1-dog_nonpruned.png",
             "2_32pruned_2-cassetteplayer_2pruned.png"],
    "exp2": ["0_0-fish_nonpruned.png", "1_1-dog_32pruned.png"],
}
QUALIFICATIONS = [
    {"QualificationTypeId": "000000000000000000L0", "Comparator": "GreaterThanOrEqualTo", "IntegerValues": [95],
     "ActionsGuarded": "Accept"},
    {"QualificationTypeId": "00000000000000000040", "Comparator": "GreaterThanOrEqualTo", "IntegerValues": [100],
     "ActionsGuarded": "Accept"},
    {"QualificationTypeId": "00000000000000000071", "Comparator": "In", "ActionsGuarded": "Accept",
     "LocaleValues": [{"Country": c} for c in ("US", "GB", "CA", "AU", "NZ", "IE")]},
]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def build_study(run: Path, prefix: str = PREFIX) -> StudyFolder:
    """What `study build` leaves for MTurk: manifest, input CSVs (shuffled from the seed) and layouts."""
    folder = Run(run).study
    experiments = {}
    for key, names in STIMULI.items():
        write_input(folder.input_csv(key), [f"{key}/{name}" for name in names], prefix, seed=0)
        write_layout(folder.layout(key), EXPERIMENTS[key], CLASSES)
        experiments[key] = {"kind": EXPERIMENTS[key].kind.name, "variant": "occlusion", "folder": key,
                            "input": folder.relative(folder.input_csv(key)),
                            "layout": folder.relative(folder.layout(key))}
    write_json(folder.manifest, {"classes": CLASSES, "experiments": experiments})
    return folder


@pytest.fixture
def study(tmp_path) -> StudyFolder:
    return build_study(tmp_path / "runs" / "x")


@pytest.fixture
def mturk():
    client = boto3.client("mturk", region_name="us-east-1", endpoint_url=hits.ENDPOINTS["sandbox"])
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def urls(folder: StudyFolder, key: str) -> list[str]:
    with open(folder.input_csv(key), newline="") as handle:
        return [row["image_url"] for row in csv.DictReader(handle)]


def hit_id(n: int) -> str:
    return f"3HIT{n:026d}"


def created(n: int) -> dict:
    return {"HIT": {"HITId": hit_id(n), "HITTypeId": "3TYPEEXP", "CreationTime": T0}}


def expected_create(task, url: str) -> dict:
    return {
        "MaxAssignments": 5, "AutoApprovalDelayInSeconds": 432000, "LifetimeInSeconds": 604800,
        "AssignmentDurationInSeconds": 300, "Reward": "0.01", "Title": task.title,
        "Keywords": "AI, explainability, machine learning, images",
        "Description": Settings().mturk.descriptions[task.name], "Question": ANY, "RequesterAnnotation": url,
        "QualificationRequirements": QUALIFICATIONS, "UniqueRequestToken": ANY,
    }


def stub_creates(stubber, plan: hits.CreatePlan, first: int = 0) -> None:
    for n, hit in enumerate(plan.hits, start=first):
        task = EXPERIMENTS[hit.experiment].kind
        stubber.add_response("create_hit", created(n), expected_create(task, hit.image_url))


def records(folder: StudyFolder, key: str) -> list[dict]:
    return hits.read_records(folder.hits(key))


def record_hits(folder: StudyFolder, key: str, endpoint: str = "sandbox") -> list[str]:
    """HIT records as `create` writes them, one per input row; returns the HITIds."""
    ids = [hit_id(100 + i) if key == "exp1" else hit_id(200 + i) for i in range(len(urls(folder, key)))]
    rows = [{"HITId": h, "HITTypeId": "3TYPEEXP", "image_url": url, "created": T0.isoformat(), "endpoint": endpoint}
            for h, url in zip(ids, urls(folder, key))]
    write_csv(folder.hits(key), rows)
    return ids


def answer_xml(fields: dict | None = None, plain: dict | None = None) -> str:
    """QuestionFormAnswers as MTurk returns them: a crowd-form's fields as JSON in `taskAnswers`."""
    parts = []
    if fields is not None:
        parts.append(f"<Answer><QuestionIdentifier>taskAnswers</QuestionIdentifier><FreeText>{json.dumps([fields])}"
                     "</FreeText></Answer>")
    for name, value in (plain or {}).items():
        parts.append(f"<Answer><QuestionIdentifier>{name}</QuestionIdentifier><FreeText>{value}</FreeText></Answer>")
    return ('<?xml version="1.0" encoding="ASCII"?><QuestionFormAnswers xmlns="http://mechanicalturk.amazonaws.com/'
            f'AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd">{"".join(parts)}</QuestionFormAnswers>')


def assignment(hit: str, n: int, worker: str, answer: str, seconds: int, status: str = "Submitted") -> dict:
    accepted = T0 + timedelta(minutes=n)
    return {"AssignmentId": f"3ASG{n:026d}", "WorkerId": worker, "HITId": hit, "AssignmentStatus": status,
            "AcceptTime": accepted, "SubmitTime": accepted + timedelta(seconds=seconds), "Answer": answer}


def listed(hit: str) -> dict:
    return {"HITId": hit, "AssignmentStatuses": ["Submitted", "Approved", "Rejected"], "MaxResults": 100}


# --- create -------------------------------------------------------------------------------------------


def test_create_sends_every_row_as_a_hit_and_records_it(study, mturk):
    client, stubber = mturk
    plan = hits.plan_create(study, Settings().mturk)
    assert [h.image_url for h in plan.hits] == urls(study, "exp1") + urls(study, "exp2")
    for hit in plan.hits:
        layout = study.layout(hit.experiment).read_text()
        question = hit.request["Question"]
        assert question.startswith(f'<HTMLQuestion xmlns="{hits.HTML_QUESTION}">')
        assert layout.replace("${image_url}", hit.image_url) in question and "${" not in question
        assert "<FrameHeight>0</FrameHeight>" in question and len(hit.request["UniqueRequestToken"]) == 64
    stub_creates(stubber, plan)
    result = hits.create_hits(client, plan, study)
    assert result.created == {"exp1": 3, "exp2": 2} and result.hit_types == {"3TYPEEXP"}
    assert "https://workersandbox.mturk.com/mturk/preview?groupId=3TYPEEXP" in result.summary()
    for key, first in (("exp1", 0), ("exp2", 3)):
        rows = records(study, key)
        assert [r["image_url"] for r in rows] == urls(study, key)
        assert [r["HITId"] for r in rows] == [hit_id(first + i) for i in range(len(rows))]
        assert {r["endpoint"] for r in rows} == {"sandbox"} and rows[0]["created"] == T0.isoformat()
    assert hits.plan_create(study, Settings().mturk).hits == []  # all made: nothing left to create


def test_the_url_is_escaped_into_the_question_and_requests_follow_the_settings(study):
    question = hits.html_question('<img src="${image_url}">', {"image_url": 'https://x.org/a.png?v=1&w="2"'})
    assert '<img src="https://x.org/a.png?v=1&amp;w=&quot;2&quot;">' in question
    assert "]]]]><![CDATA[>" in hits.html_question("a ]]> b", {})
    locale = 'mturk.qualifications=[{type = "Locale", comparator = "EqualTo", locales = ["US-NY"]}]'
    mturk = load_settings(None, ["mturk.reward=0.05", "mturk.assignments=12", locale]).mturk
    plan = hits.plan_create(study, mturk, ["exp2"])
    request = plan.hits[0].request
    assert (request["Reward"], request["MaxAssignments"], request["Title"]) == ("0.05", 12, RECOGNISE.title)
    assert request["QualificationRequirements"] == [{"QualificationTypeId": "00000000000000000071",
                                                     "Comparator": "EqualTo", "ActionsGuarded": "Accept",
                                                     "LocaleValues": [{"Country": "US", "Subdivision": "NY"}]}]
    assert plan.cost == hits.Cost(2, 12, Decimal("0.05"))


def test_a_rerun_after_an_interruption_creates_only_the_missing_hits(study, mturk):
    client, stubber = mturk
    plan = hits.plan_create(study, Settings().mturk)
    for n, hit in enumerate(plan.hits[:2]):
        stubber.add_response("create_hit", created(n), expected_create(EXPERIMENTS[hit.experiment].kind, hit.image_url))
    stubber.add_client_error("create_hit", "ServiceUnavailableException", "Rate exceeded")
    with pytest.raises(UserError, match=r"create exp1: ServiceUnavailableException: Rate exceeded \(2 of 5 HITs "
                                        r"created .* makes only the rest\)"):
        hits.create_hits(client, plan, study)
    assert [r["image_url"] for r in records(study, "exp1")] == urls(study, "exp1")[:2]
    again = hits.plan_create(study, Settings().mturk)
    assert [h.image_url for h in again.hits] == urls(study, "exp1")[2:] + urls(study, "exp2")
    assert again.recorded == {"exp1": 2, "exp2": 0} and again.cost.hits == 3
    stub_creates(stubber, again, first=2)
    hits.create_hits(client, again, study)
    assert [r["image_url"] for r in records(study, "exp1")] == urls(study, "exp1")
    assert [r["HITId"] for r in records(study, "exp1")] == [hit_id(0), hit_id(1), hit_id(2)]


def test_a_hit_made_but_not_recorded_is_found_by_its_token(study, mturk):
    client, stubber = mturk
    plan = hits.plan_create(study, Settings().mturk, ["exp2"])
    stubber.add_response("create_hit", created(0), expected_create(RECOGNISE, plan.hits[0].image_url))
    stubber.add_client_error("create_hit", "RequestError", f"AWS.MechanicalTurk.HitAlreadyExists: The HIT {hit_id(7)} "
                             "already exists for this UniqueRequestToken.")
    stubber.add_response("get_hit", {"HIT": {"HITId": hit_id(7), "HITTypeId": "3TYPEEXP", "CreationTime": T0,
                                             "RequesterAnnotation": plan.hits[1].image_url}}, {"HITId": hit_id(7)})
    hits.create_hits(client, plan, study)
    assert [r["HITId"] for r in records(study, "exp2")] == [hit_id(0), hit_id(7)]


def test_inputs_that_are_not_urls_are_refused(tmp_path):
    folder = build_study(tmp_path / "runs" / "y", prefix="")
    with pytest.raises(UserError, match=r"exp1_input.csv: 3 of 3 image_url values are not http\(s\) URLs \(first: "
                                        r"'exp1/.*'\); .*`prunexplain study publish` .*study.url_prefix"):
        hits.plan_create(folder, Settings().mturk)


def test_sandbox_and_live_records_never_mix(study):
    record_hits(study, "exp1", "sandbox")
    with pytest.raises(UserError, match=r"exp1.csv: holds sandbox HITs, this call is for live \(leave out --live\)"):
        hits.plan_create(study, Settings().mturk, live=True)


def test_the_cost_estimate_follows_mturks_pricing():
    study_like = hits.Cost(1000, 5, Decimal("0.01"))  # the study's reward: the $0.01 minimum fee applies
    assert (study_like.rewards, study_like.fees, study_like.total) == (Decimal("50.00"), Decimal("50.00"),
                                                                      Decimal("100.00"))
    five_cents = hits.Cost(100, 5, Decimal("0.05"))
    assert (five_cents.rewards, five_cents.fees, five_cents.total) == (Decimal("25.00"), Decimal("5.00"),
                                                                      Decimal("30.00"))
    many = hits.Cost(10, 10, Decimal("0.10"))  # 10 or more assignments: 40 %
    assert (many.fees, many.total) == (Decimal("4.00"), Decimal("14.00"))
    assert five_cents.summary() == ("100 HITs x 5 assignments x $0.05 = $25.00 in rewards + $5.00 MTurk fee (20 %, "
                                    "at least $0.01 an assignment) = $30.00")


def test_a_live_create_beyond_the_balance_is_refused(study, mturk):
    client, stubber = mturk
    plan = hits.plan_create(study, Settings().mturk, live=True)
    stubber.add_response("get_account_balance", {"AvailableBalance": "0.10"}, {})
    with pytest.raises(UserError, match=r"balance \$0.10 is less than the estimate \$0.50"):
        hits.account_balance(client, plan)


# --- status and collect -------------------------------------------------------------------------------


def test_status_counts_assignments_and_work(study, mturk):
    client, stubber = mturk
    ids = record_hits(study, "exp2")
    for n, hit in enumerate(ids):
        stubber.add_response("get_hit", {"HIT": {"HITId": hit, "NumberOfAssignmentsAvailable": 2 + n,
                                                 "NumberOfAssignmentsPending": 1, "NumberOfAssignmentsCompleted": n}},
                             {"HITId": hit})
        stubber.add_response("list_assignments_for_hit", {"Assignments": [
            assignment(hit, 10 * n, "W1", answer_xml(), 9, "Submitted"),
            assignment(hit, 10 * n + 1, "W2", answer_xml(), 9, "Approved" if n else "Rejected")]}, listed(hit))
    stubber.add_response("get_account_balance", {"AvailableBalance": "10000.00"}, {})
    result = hits.status(client, study)
    assert result.summary().splitlines() == [
        "MTurk sandbox; balance: $10000.00",
        "exp1: no HITs created",
        "exp2: 2 HITs; assignments 5 available, 2 pending, 1 completed; work 2 awaiting review, 1 approved, 1 rejected",
    ]


def test_collect_writes_batch_results_that_the_analysis_reads_back(study, mturk):
    client, stubber = mturk
    exp1, exp2 = record_hits(study, "exp1", "live"), record_hits(study, "exp2", "live")
    # exp1: the crowd-form's flat field, the same nested, and a plain form field; one unreadable answer
    alg1, alg2 = answer_xml({"algorithms.label": "alg1"}), answer_xml({"algorithms.label": "alg2"})
    nested_none = answer_xml({"algorithms": {"label": "none"}})
    plain_alg2 = answer_xml(plain={"algorithms.label": "alg2"})
    given = {exp1[0]: [assignment(exp1[0], 1, "W1", alg1, 11), assignment(exp1[0], 2, "W2", nested_none, 12)],
             exp1[1]: [assignment(exp1[1], 3, "W1", plain_alg2, 13),
                       assignment(exp1[1], 4, "W3", answer_xml({"algorithms.label": "maybe"}), 14)],
             exp1[2]: [assignment(exp1[2], 5, "W2", alg2, 15)]}
    stubber.add_response("list_assignments_for_hit", {"Assignments": given[exp1[0]][:1], "NextToken": "more"},
                         listed(exp1[0]))  # two pages
    stubber.add_response("list_assignments_for_hit", {"Assignments": given[exp1[0]][1:]},
                         {**listed(exp1[0]), "NextToken": "more"})
    for hit in exp1[1:]:
        stubber.add_response("list_assignments_for_hit", {"Assignments": given[hit]}, listed(hit))
    exp2_urls = urls(study, "exp2")
    label = {url: url.rsplit("/", 1)[1].split("_")[1] for url in exp2_urls}  # the shown class: a right answer
    for n, (hit, url) in enumerate(zip(exp2, exp2_urls)):
        stubber.add_response("list_assignments_for_hit", {"Assignments": [
            assignment(hit, 10 + 2 * n, "W1", answer_xml({"classes.label": label[url]}), 20),
            assignment(hit, 11 + 2 * n, "W2", answer_xml({"classes.label": "none"}), 20, "Approved")]}, listed(hit))
    result = hits.collect(client, study, live=True)
    assert result.files == {"exp1": study.mturk_answers("exp1"), "exp2": study.mturk_answers("exp2")}
    assert result.answers == {"exp1": 5, "exp2": 4} and result.unreadable == {"exp1": 1, "exp2": 0}
    with open(study.mturk_answers("exp1"), newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:5] == ["HITId", "HITTypeId", "AssignmentId", "WorkerId", "AssignmentStatus"]
    assert {"AcceptTime", "SubmitTime", "WorkTimeInSeconds", "Input.image_url"} <= set(header)
    assert header[-3:] == COMPARE.columns()

    first = read_answers("exp1", [study.mturk_answers("exp1")])
    frame = first.frame.set_index("assignment")
    by_url = dict(zip(exp1, urls(study, "exp1")))
    assert len(frame) == 4 and first.left_out == 1 and "no answer" in str(first.problems[0])
    assert list(frame["answer"]) == ["alg1", "none", "alg2", "alg2"]
    assert list(frame["worker"]) == ["W1", "W2", "W1", "W2"]
    assert list(frame["url"]) == [by_url[exp1[0]], by_url[exp1[0]], by_url[exp1[1]], by_url[exp1[2]]]
    shown = [EXPERIMENTS["exp1"].kind.parse_name(url.rsplit("/", 1)[1]) for url in frame["url"]]
    assert list(frame["left"]) == [s["left"] for s in shown] and list(frame["image"]) == [s["image"] for s in shown]
    assert list(frame["work_time"]) == [11, 12, 13, 15]
    assert first.models == ["nonpruned", "2pruned", "32pruned"]

    second = read_answers("exp2", [study.mturk_answers("exp2")], classes=CLASSES)
    assert len(second.frame) == 4 and second.left_out == 0
    assert list(second.frame["correct"]) == [True, False, True, False]
    assert sorted(second.frame["model"].unique()) == ["32pruned", "nonpruned"] and second.labels == CLASSES


def test_sandbox_answers_stay_out_of_the_studys_answers(study, mturk):
    client, stubber = mturk
    (hit,) = record_hits(study, "exp1")[:1]
    for h in record_hits(study, "exp1"):
        answers = [assignment(h, 1, "W1", answer_xml({"algorithms.label": "alg1"}), 9)] if h == hit else []
        stubber.add_response("list_assignments_for_hit", {"Assignments": answers}, listed(h))
    result = hits.collect(client, study, ["exp1"])
    assert result.files == {"exp1": study.sandbox_answers("exp1")} and not study.answers.exists()
    assert read_answers("exp1", [study.sandbox_answers("exp1")]).frame["answer"].tolist() == ["alg1"]


# --- approve ------------------------------------------------------------------------------------------


def stub_work(stubber, ids: list[str]) -> dict[str, str]:
    """W1 is fast (median 3 s, one approved assignment before), W2 takes its time, W3 answers nothing
    readable once; returns the AssignmentIds of the submitted ones by name."""
    work = {ids[0]: [("W1", "alg1", 2, "Approved"), ("W2", "alg2", 20, "Submitted")],
            ids[1]: [("W1", "none", 3, "Submitted"), ("W3", "", 30, "Submitted")],
            ids[2]: [("W1", "alg1", 4, "Submitted"), ("W2", "none", 12, "Submitted"), ("W3", "alg1", 25, "Submitted")]}
    names, n = {}, 0
    for hit in ids:
        listed_now = []
        for worker, answer, seconds, status in work[hit]:
            n += 1
            listed_now.append(assignment(hit, n, worker, answer_xml({"algorithms.label": answer}), seconds, status))
            names[f"{worker}@{ids.index(hit)}"] = listed_now[-1]["AssignmentId"]
        stubber.add_response("list_assignments_for_hit", {"Assignments": listed_now}, listed(hit))
    return names


def test_approve_rejects_by_the_preregistered_rules(study, mturk):
    client, stubber = mturk
    write_json(study.preregistration_data, {"exclusions": {"min_median_work_time": 5}})
    names = stub_work(stubber, record_hits(study, "exp1"))
    plan = hits.plan_approval(client, study, ["exp1"], fallback_min_median_work_time=100)
    decided = {d.assignment: (d.decision, d.rule) for d in plan.decisions}
    assert decided == {names["W2@0"]: ("approve", ""), names["W1@1"]: ("reject", "min_median_work_time"),
                       names["W3@1"]: ("reject", "no_answer"), names["W1@2"]: ("reject", "min_median_work_time"),
                       names["W2@2"]: ("approve", ""), names["W3@2"]: ("approve", "")}
    assert plan.min_median_work_time == 5 and plan.preregistered and "rules, pre-registered:" in plan.summary()
    for d in plan.decisions:
        if d.decision == "approve":
            stubber.add_response("approve_assignment", {}, {"AssignmentId": d.assignment})
        else:
            stubber.add_response("reject_assignment", {}, {"AssignmentId": d.assignment, "RequesterFeedback": ANY})
    result = hits.send_decisions(client, plan, study)
    assert result.summary().startswith("3 assignments were approved, 3 rejected (sandbox)")
    rows = {r["AssignmentId"]: r for r in hits.read_records(study.hit_decisions)}
    assert rows[names["W1@1"]]["RequesterFeedback"] == ("Rejected: your median work time on these HITs, 3 s, is "
                                                        "below the pre-registered minimum of 5 s (rule "
                                                        "min_median_work_time).")
    assert rows[names["W1@1"]]["worker_median_work_time"] == "3" and {r["sent"] for r in rows.values()} == {"yes"}
    assert "no answer could be read" in rows[names["W3@1"]]["RequesterFeedback"]


def test_a_dry_run_tells_mturk_nothing(study, mturk, caplog):
    client, stubber = mturk
    stub_work(stubber, record_hits(study, "exp1"))
    plan = hits.plan_approval(client, study, fallback_min_median_work_time=None)
    assert "not pre-registered" in caplog.text and "NOT pre-registered" in plan.summary()
    assert [d.rule for d in plan.rejections] == ["no_answer"]  # no time rule without one
    result = hits.send_decisions(client, plan, study, dry_run=True)  # the Stubber fails any call not queued
    assert result.summary().startswith("5 assignments would be approved, 1 rejected (sandbox, dry run: nothing sent)")
    assert {r["sent"] for r in hits.read_records(study.hit_decisions)} == {"no"}


def test_approve_falls_back_to_the_analysis_setting_without_a_preregistration(study, mturk, caplog):
    client, stubber = mturk
    stub_work(stubber, record_hits(study, "exp1"))
    plan = hits.plan_approval(client, study, fallback_min_median_work_time=5)
    assert not plan.preregistered and len(plan.rejections) == 3
    assert "min_median_work_time = 5" in caplog.text
    assert "below the minimum of 5 s" in plan.rejections[0].feedback


# --- answers, settings, errors ------------------------------------------------------------------------


@pytest.mark.parametrize("answer, expected", [
    (answer_xml({"algorithms.label": "alg2"}), "alg2"),
    (answer_xml({"algorithms": {"label": "alg1"}}), "alg1"),
    (answer_xml({"algorithms.label": {"none": True, "alg1": False}}), "none"),
    (answer_xml({"algorithms": {"alg1": "true", "alg2": "false"}}), "alg1"),
    (answer_xml(plain={"algorithms.label": "alg1"}), "alg1"),
    (answer_xml({"algorithms.label": "alg3"}), None),
    (answer_xml({"algorithms": {"alg1": True, "alg2": True}}), None),
    (answer_xml({}), None),
    ("<not xml", None),
])
def test_answers_are_read_from_the_forms_fields(answer, expected):
    assert hits.chosen_option(COMPARE, COMPARE.options(), hits.answer_fields(answer)) == expected


def test_mturk_settings_are_in_no_stage_fingerprint(tmp_path):
    from prunexplain.pipeline import fingerprints

    base = load_settings(None, [f'run.root="{tmp_path}"'])
    changed = load_settings(None, [f'run.root="{tmp_path}"', "mturk.reward=0.5", "mturk.assignments=9"])
    run = Run(base.run_dir)
    assert fingerprints(base, run) == fingerprints(changed, run)


def test_bad_mturk_settings_name_the_key():
    with pytest.raises(UserError, match=r"mturk.reward: 0.015 is not a whole number of cents"):
        load_settings(None, ["mturk.reward=0.015"])
    with pytest.raises(UserError, match=r"mturk.qualifications.0: Locale: give locales, not values"):
        load_settings(None, ['mturk.qualifications=[{type = "Locale", comparator = "In", values = [1]}]'])
    with pytest.raises(UserError, match=r"NumberHITsApproved GreaterThan takes exactly one value, got 2"):
        load_settings(None, ['mturk.qualifications=[{type = "NumberHITsApproved", comparator = "GreaterThan", '
                             'values = [1, 2]}]'])


def test_no_credentials_is_one_line(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UserError, match="no AWS credentials; set AWS_ACCESS_KEY_ID"):
        hits.connect()


def test_unbuilt_study_and_unknown_experiment_are_named(tmp_path, study):
    with pytest.raises(UserError, match=r"no study/manifest.json; run `prunexplain study build` first"):
        hits.plan_create(StudyFolder(tmp_path / "nothing"), Settings().mturk)
    with pytest.raises(UserError, match=r"experiment 'exp9' is not in .*manifest.json \(built: exp1, exp2\)"):
        hits.plan_create(study, Settings().mturk, ["exp9"])
    with pytest.raises(UserError, match=r"no sandbox HITs recorded for exp1, exp2; run `prunexplain study mturk "
                                        "create` first"):
        hits.status(None, study)


# --- the CLI ------------------------------------------------------------------------------------------


@pytest.fixture
def cli(study, mturk, monkeypatch):
    client, stubber = mturk
    monkeypatch.setattr(hits, "connect", lambda live=False: client)
    run = study.root.parent

    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(app, ["study", "mturk", *args, "--run", str(run)], input=input)

    return invoke, stubber


def test_cli_create_shows_the_cost_and_asks(cli, study):
    invoke, stubber = cli
    stubber.add_response("get_account_balance", {"AvailableBalance": "10000.00"}, {})
    declined = invoke("create", input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert "cost: 5 HITs x 5 assignments x $0.01 = $0.25 in rewards + $0.25 MTurk fee" in declined.output
    assert "$0.50 (the sandbox pays nothing)" in declined.output and not study.hits("exp1").exists()
    stubber.add_response("get_account_balance", {"AvailableBalance": "10000.00"}, {})
    stub_creates(stubber, hits.plan_create(study, Settings().mturk))
    done = invoke("create", input="y\n")
    assert done.exit_code == 0, done.output
    assert "Create 5 HITs on MTurk sandbox for $0.50?" in done.output
    assert "exp1: 3 HITs created (sandbox)" in done.output
    again = invoke("create", "--yes")  # nothing left: no call to MTurk
    assert again.exit_code == 0 and "exp1: 0 HITs to create, 3 created before (sandbox)" in again.output


def test_cli_status_collect_and_approve(cli, study):
    invoke, stubber = cli
    ids = record_hits(study, "exp1")
    for hit in ids:
        stubber.add_response("get_hit", {"HIT": {"HITId": hit, "NumberOfAssignmentsAvailable": 5}}, {"HITId": hit})
        stubber.add_response("list_assignments_for_hit", {"Assignments": []}, listed(hit))
    stubber.add_response("get_account_balance", {"AvailableBalance": "10000.00"}, {})
    shown = invoke("status", "-e", "exp1")
    assert shown.exit_code == 0 and "exp1: 3 HITs; assignments 15 available" in shown.output
    names = stub_work(stubber, ids)
    collected = invoke("collect", "-e", "exp1")
    assert collected.exit_code == 0 and "exp1: 7 assignments, 1 without a readable answer ->" in collected.output
    names = stub_work(stubber, ids)
    dry = invoke("approve", "--dry-run", "--set", "analysis.min_median_work_time=5")
    assert dry.exit_code == 0 and f"reject {names['W1@1']} of W1 (exp1): min_median_work_time" in dry.output
    assert "3 assignments would be approved, 3 rejected" in dry.output
    stub_work(stubber, ids)
    declined = invoke("approve", "--set", "analysis.min_median_work_time=5", input="n\n")
    assert declined.exit_code == 1 and "Reject 3 assignments of 2 workers?" in declined.output


def test_cli_errors_are_one_line(cli, study, tmp_path):
    invoke, stubber = cli
    record_hits(study, "exp2")
    stubber.add_client_error("get_hit", "RequestError", "This operation can be called with a status of: Reviewable",
                             http_status_code=400)
    failed = invoke("status", "-e", "exp2")
    assert failed.exit_code == 2 and "Traceback" not in failed.output
    assert failed.output.strip().splitlines() == [f"error: study mturk status of {hit_id(200)}: RequestError: This "
                                                  "operation can be called with a status of: Reviewable"]
    unknown = invoke("collect", "-e", "exp9")
    assert unknown.exit_code == 2 and "experiment 'exp9' is not in" in unknown.output
    (tmp_path / "empty").mkdir()
    unbuilt = CliRunner().invoke(app, ["study", "mturk", "status", "--run", str(tmp_path / "empty")])
    assert unbuilt.exit_code == 2 and "run `prunexplain study build` first" in unbuilt.output


def test_cli_help_has_no_square_brackets():
    group = typer.main.get_command(app).commands["study"].commands["mturk"]
    assert "[" not in (group.help or "")
    for command in group.commands.values():
        texts = [command.help or "", *(getattr(p, "help", "") or "" for p in command.params)]
        assert not any("[" in text for text in texts), command.name


# --- the self-hosted study as one ExternalQuestion HIT -----------------------------------------------

STUDY_URL = "https://study.example.org/"


def preregister_sample(folder: StudyFolder, participants: int) -> None:
    write_json(folder.preregistration_data, {"sample": {"participants": participants}})


def expected_external(participants: int, url: str = STUDY_URL) -> dict:
    mturk = Settings().mturk
    return {**expected_create(COMPARE, url), "MaxAssignments": participants, "Reward": "1.00",
            "AssignmentDurationInSeconds": 3600, "Title": mturk.session_title,
            "Description": mturk.session_description, "Question": external_question(url)}


def test_external_create_shows_the_study_to_the_preregistered_participants(study, mturk):
    client, stubber = mturk
    preregister_sample(study, 12)
    plan = hits.plan_external(study, Settings().mturk, STUDY_URL)
    (hit,) = plan.hits
    assert f"<ExternalURL>{STUDY_URL}</ExternalURL>" in hit.request["Question"]
    assert plan.cost == hits.Cost(1, 12, Decimal("1.00")) and plan.cost.total == Decimal("16.80")  # 40 %: 10 or more
    assert plan.summary().startswith("external: 1 HITs to create, 0 created before (sandbox)")
    stubber.add_response("create_hit", created(0), expected_external(12))
    result = hits.create_hits(client, plan, study)
    assert result.created == {"external": 1}
    assert records(study, "external") == [{"HITId": hit_id(0), "HITTypeId": "3TYPEEXP", "image_url": STUDY_URL,
                                           "created": T0.isoformat(), "endpoint": "sandbox"}]


def test_a_second_external_hit_is_refused_per_endpoint(study, mturk):
    client, stubber = mturk
    preregister_sample(study, 3)
    write_csv(study.hits("external"), [{"HITId": hit_id(9), "HITTypeId": "3TYPEEXP", "image_url": STUDY_URL,
                                        "created": T0.isoformat(), "endpoint": "sandbox"}])
    with pytest.raises(UserError, match=rf"external.csv: the study has its sandbox HIT {hit_id(9)} for "
                                        rf"{STUDY_URL} already; one external HIT per study and endpoint"):
        hits.plan_external(study, Settings().mturk, STUDY_URL)
    other = "https://other.example.org/study"
    with pytest.raises(UserError, match=rf"HIT {hit_id(9)} for {STUDY_URL}, not {other}; one external HIT"):
        hits.plan_external(study, Settings().mturk, other)
    live = hits.plan_external(study, Settings().mturk, STUDY_URL, live=True)  # the live one is still to make
    stubber.add_response("create_hit", created(1), expected_external(3))
    hits.create_hits(client, live, study)
    assert [(r["HITId"], r["endpoint"]) for r in records(study, "external")] == [(hit_id(9), "sandbox"),
                                                                                  (hit_id(1), "live")]


@pytest.mark.parametrize("url", ["http://study.example.org/", "https:///study", "study.example.org"])
def test_external_urls_must_be_https(study, url):
    with pytest.raises(UserError, match=r"^study mturk create --external: .*only https:// URLs.*behind HTTPS$"):
        hits.plan_external(study, Settings().mturk, url, participants=5)


def test_without_a_preregistration_participants_are_required(study, caplog):
    with pytest.raises(UserError, match=r"how many participants\? Give --participants N, or run `prunexplain "
                                        r"study preregister` to plan them in .*preregistration.json$"):
        hits.plan_external(study, Settings().mturk, STUDY_URL)
    mturk = load_settings(None, ["mturk.session_reward=2.5", "mturk.session_duration_seconds=1800"]).mturk
    request = hits.plan_external(study, mturk, STUDY_URL, participants=7).hits[0].request
    assert (request["MaxAssignments"], request["Reward"], request["AssignmentDurationInSeconds"]) == (7, "2.50", 1800)
    preregister_sample(study, 12)
    assert hits.plan_external(study, mturk, STUDY_URL, participants=7).cost.assignments == 7
    assert "7 participants, where the pre-registration plans 12" in caplog.text
    with pytest.raises(UserError, match=r"mturk.session_reward: 1.005 is not a whole number of cents"):
        load_settings(None, ["mturk.session_reward=1.005"])


def test_status_follows_the_external_hit_and_collect_leaves_it_to_export(study, mturk, caplog):
    client, stubber = mturk
    write_csv(study.hits("external"), [{"HITId": hit_id(9), "HITTypeId": "3TYPEEXP", "image_url": STUDY_URL,
                                        "created": T0.isoformat(), "endpoint": "sandbox"}])
    stubber.add_response("get_hit", {"HIT": {"HITId": hit_id(9), "NumberOfAssignmentsAvailable": 20,
                                             "NumberOfAssignmentsPending": 2, "NumberOfAssignmentsCompleted": 8}},
                         {"HITId": hit_id(9)})
    stubber.add_response("list_assignments_for_hit", {"Assignments": [
        assignment(hit_id(9), 1, "W1", answer_xml(plain={"code": "X"}), 300),
        assignment(hit_id(9), 2, "W2", answer_xml(plain={"code": "Y"}), 400, "Approved")]}, listed(hit_id(9)))
    stubber.add_response("get_account_balance", {"AvailableBalance": "10000.00"}, {})
    assert hits.status(client, study).summary().splitlines() == [
        "MTurk sandbox; balance: $10000.00", "exp1: no HITs created", "exp2: no HITs created",
        "external: 1 HITs; assignments 20 available, 2 pending, 8 completed; work 1 awaiting review, 1 approved, "
        "0 rejected",
    ]
    caplog.set_level("INFO", logger=hits.__name__)
    result = hits.collect(client, study)  # the Stubber fails any call: collect asks MTurk nothing
    assert result.files == {} and result.answers == {"exp1": 0, "exp2": 0}
    assert f"HIT {hit_id(9)} shows the self-hosted study; its answers are in" in caplog.text
    assert "`prunexplain study export`, not collect" in caplog.text


def test_cli_create_external(cli, study):
    invoke, stubber = cli
    unplanned = invoke("create", "--external", STUDY_URL, "--yes")
    assert unplanned.exit_code == 2 and "Give --participants N" in unplanned.output
    plain = invoke("create", "--external", "http://study.example.org/", "--participants", "5")
    assert plain.exit_code == 2 and len(plain.output.strip().splitlines()) == 1
    assert plain.output.startswith("error: study mturk create --external: 'http://study.example.org/'")
    alone = invoke("create", "--participants", "5")
    assert alone.exit_code == 2 and "--participants goes with --external" in alone.output
    preregister_sample(study, 30)
    stubber.add_response("get_account_balance", {"AvailableBalance": "10000.00"}, {})
    stubber.add_response("create_hit", created(0), expected_external(30))
    done = invoke("create", "--external", STUDY_URL, input="y\n")
    assert done.exit_code == 0, done.output
    assert "cost: 1 HITs x 30 assignments x $1.00 = $30.00 in rewards + $12.00 MTurk fee (40 %" in done.output
    assert "Create 1 HITs on MTurk sandbox for $42.00?" in done.output
    assert "external: 1 HITs created (sandbox)" in done.output and "preview: https://workersandbox" in done.output
    again = invoke("create", "--external", STUDY_URL, "--yes")
    assert again.exit_code == 2 and f"sandbox HIT {hit_id(0)} for {STUDY_URL} already" in again.output
