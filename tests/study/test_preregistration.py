"""`study preregister`: the plan written from the run's settings, frozen in the manifest, refused
after the first answer; the frozen file checked before collecting; the report's account of it."""

import hashlib
import json

import pytest

from prunexplain.config import ReportSettings, ServeSettings, UserError, load_settings
from prunexplain.report.page import render_section
from prunexplain.report.plan import plan_section
from prunexplain.runs import write_json
from prunexplain.study.preregistration import check_frozen, departures, preregister
from tests.study.conftest import copy_run


@pytest.fixture
def planned(built, tmp_path):
    settings, run = copy_run(*built[:2], tmp_path)
    result = preregister(settings, run, ServeSettings(answers_per_stimulus=5, tasks_per_participant=20),
                         now="2026-12-03T20:00:00Z")
    return settings, run, result


def test_the_plan_answers_aspredicteds_questions_from_the_settings_and_is_frozen(planned):
    settings, run, result = planned
    text = run.study.preregistration.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    manifest = json.loads(run.study.manifest.read_text())
    assert manifest["preregistration"]["sha256"] == result.sha256 == digest
    plan = json.loads(run.study.preregistration_data.read_text())
    for heading in ("Data collection", "Hypotheses", "Dependent variables", "Conditions", "Analyses",
                    "Outliers and exclusions", "Sample size", "Other"):
        assert f". {heading}" in text
    assert plan["analyses"]["margins"] == {"recognition": 0.05, "preference": 0.1} and plan["analyses"]["alpha"] == 0.05
    assert "margin of 0.05" in text and "by no more than 0.1" in text and "alpha 0.05" in text
    assert plan["exclusions"]["attention_checks"] == 2 and "comprehension check" in plan["exclusions"]["comprehension"]
    # 60 stimuli per experiment of exp1 and exp2 (the served ones) x 5 answers; 20 tasks each
    assert plan["sample"]["answers"] == {"exp1": 300, "exp2": 300} and plan["sample"]["participants"] == 30
    assert "no power analysis" in plan["sample"]["source"]
    assert plan["settings"]["verdict"]["human_margins"] == {"recognition": 0.05, "preference": 0.1}


def test_the_sample_size_comes_from_the_observers_power_analysis_where_the_run_has_one(built, tmp_path):
    settings, run = copy_run(*built[:2], tmp_path)
    power = [{"a": "nonpruned", "b": "2pruned", "items": 140, "target": 0.8, "alpha": 0.05},
             {"a": "nonpruned", "b": "32pruned", "items": 12, "target": 0.8, "alpha": 0.05}]
    write_json(run.prediction.answers("exp1").power, power)
    preregister(settings, run, ServeSettings())
    plan = json.loads(run.study.preregistration_data.read_text())
    assert plan["sample"]["source"].startswith("power analysis on answers predicted")
    assert [(r["a"], r["b"], r["items_needed"], r["items_planned"]) for r in plan["sample"]["power"]] == [
        ("nonpruned", "2pruned", 140, 30), ("nonpruned", "32pruned", 12, 30)]
    assert "nonpruned vs 2pruned: 140 items needed at power 0.8, 30 planned" in run.study.preregistration.read_text()


def test_a_plan_is_refused_after_the_first_answer(planned):
    settings, run, _ = planned
    run.study.answers.mkdir()
    (run.study.answers / "exp1_batch1.csv").write_text("HITId,WorkerId\n")
    with pytest.raises(UserError, match=r"answers: holds answers \(exp1_batch1.csv\); a pre-registration is written "
                                        "before the first answer"):
        preregister(settings, run, ServeSettings())


def test_a_changed_plan_stops_collecting_with_one_line(planned):
    settings, run, result = planned
    check_frozen(run.study, answered=True)  # intact: nothing to say
    run.study.preregistration.write_text(run.study.preregistration.read_text() + "\nOne more hypothesis.\n")
    changed = r"preregistration.md: changed \(frozen SHA-256 [0-9a-f]{12}, now [0-9a-f]{12}\) after the first answer"
    with pytest.raises(UserError, match=changed) as raised:
        check_frozen(run.study, answered=True)
    assert "\n" not in str(raised.value)
    with pytest.raises(UserError, match="since it was frozen; run `prunexplain study preregister` again"):
        check_frozen(run.study, answered=False)
    run.study.preregistration.unlink()
    with pytest.raises(UserError, match="preregistration.md: is gone after the first answer"):
        check_frozen(run.study, answered=True)


def test_the_report_shows_the_hash_and_names_every_departure(planned):
    settings, run, result = planned
    run.config.write_text('[verdict]\nhuman_margins = {recognition = 0.05, preference = 0.2}\n'
                          '[analysis]\nmin_median_work_time = 3.0\n')
    plan = json.loads(run.study.preregistration_data.read_text())
    found = departures(plan, load_settings(run.config))
    assert found[:2] == ['analysis.min_median_work_time: null planned, 3.0 run',
                         'verdict.human_margins: {"recognition": 0.05, "preference": 0.1} planned, '
                         '{"recognition": 0.05, "preference": 0.2} run']
    assert all(d.startswith("study.") for d in found[2:])  # this config.toml leaves the study's models default
    html = render_section(plan_section(run, ReportSettings()))
    assert result.sha256 in html and "the file still has this hash" in html
    assert "analysis.min_median_work_time: null planned, 3.0 run" in html
    run.study.preregistration.write_text("rewritten")
    assert "changed after it was frozen" in render_section(plan_section(run, ReportSettings()))


def test_the_report_draws_the_participant_flow(planned):
    settings, run, _ = planned
    flow = {"consented": 40, "comprehension_passed": 36, "comprehension_failed": 4, "started_tasks": 36,
            "completed": 31, "abandoned": 5, "failed_attention_check": 2, "analysed": 31,
            "excluded": {"failed the comprehension check": 4}}
    write_json(run.study.flow, flow)
    html = render_section(plan_section(run, ReportSettings()))
    assert "Participant flow" in html and 'alt="participant flow"' in html and "data:image/png;base64," in html
    assert "<td>failed the comprehension check twice (session ended, no answers)</td><td>4</td>" in html
    assert "<td>analysed (answers exported to the analysis)</td><td>31</td>" in html


def test_the_command_freezes_the_plan_and_names_what_is_missing(built, tmp_path):
    from typer.testing import CliRunner

    from prunexplain.cli import app

    settings, run = copy_run(*built[:2], tmp_path)
    serve = tmp_path / "serve.toml"
    serve.write_text("[serve]\nanswers_per_stimulus = 3\ntasks_per_participant = 30\n")
    result = CliRunner().invoke(app, ["study", "preregister", "--run", str(run.root), "--serve-config", str(serve)])
    assert result.exit_code == 0, result.output
    assert "pre-registered in" in result.output and "frozen in the manifest" in result.output
    sample = json.loads(run.study.preregistration_data.read_text())["sample"]
    assert sample["answers"] == {"exp1": 180, "exp2": 180} and sample["participants"] == 12
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["study", "preregister", "--run", str(empty)])
    assert result.exit_code == 2 and "no study/manifest.json; run `prunexplain study build` first" in result.output
    assert "Traceback" not in result.output


def test_preregistering_again_keeps_an_unchanged_plan_and_refreezes_a_changed_one(planned):
    settings, run, first = planned
    again = preregister(settings, run, ServeSettings(answers_per_stimulus=5, tasks_per_participant=20))
    assert again.sha256 == first.sha256 and "2026-12-03T20:00:00Z" in run.study.preregistration.read_text()
    other = preregister(settings, run, ServeSettings(answers_per_stimulus=3), now="2026-12-04T09:00:00Z")
    assert other.sha256 != first.sha256
    assert json.loads(run.study.manifest.read_text())["preregistration"]["frozen_at"] == "2026-12-04T09:00:00Z"
