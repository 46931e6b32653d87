"""`prunexplain run` past the models: study, crowd, analysis and report, on models that pass the selection."""

import json
import shutil

import pandas as pd

from prunexplain.pipeline import STAGES, fingerprints, run_pipeline
from prunexplain.report import write_report
from prunexplain.runs import Run


def _done_through(settings, run: Run, last: str) -> None:
    """Mark the stages up to `last` done, as if this run had made the models it holds."""
    for stage, fingerprint in zip(STAGES, fingerprints(settings, run)):
        run.mark_done(stage.name, fingerprint)
        if stage.name == last:
            return


def test_study_crowd_analysis_and_report_follow_the_models(study_run):
    settings, run = study_run
    _done_through(settings, run, "evaluate")
    report = run_pipeline(settings, run, until="analysis")
    assert "study: 20 images; stimuli: exp1 60, exp1_heatmap 60, exp2 60" in report
    # no real answers: model-based observers answer the run's own stimuli (crowd.mode's default)
    assert "crowd: exp1: 1 observers file(s)" in report and "analysis: exp1: 300 observers answers" in report
    sources = json.loads(run.analysis_source.read_text())
    assert {key: s["source"] for key, s in sources.items()} == {"exp1": "observers", "exp1_heatmap": "observers",
                                                               "exp2": "observers"}
    summary = json.loads((run.analysis("exp2") / "summary.json").read_text())
    assert summary["answers"] == 300 and [m for m in summary["models"]] == ["nonpruned", "2pruned", "32pruned"]
    html = write_report(run, settings.report).path.read_text()
    assert "Predicted by model-based observers, not people" in html and "exp1_heatmap" in html
    assert "Why: no answer files exp2*.csv" in html  # the report says why no people answered
    # people's answers dropped into study/answers/ replace the observers of that experiment only
    real = run.study.answers / "exp2_batch1.csv"
    real.parent.mkdir()
    shutil.copy(run.study.simulated("exp2") / "exp2_results.csv", real)
    again = run_pipeline(settings, run, until="analysis")
    assert "study: done (skipped)" in again and "crowd: exp1: 1 observers file(s)" in again
    assert "exp2: 1 real file(s)" in again
    assert json.loads(run.analysis_source.read_text())["exp2"]["files"] == [str(real)]


def test_answers_of_the_self_hosted_study_replace_the_observers(study_run, monkeypatch):
    from fastapi.testclient import TestClient

    from prunexplain.config import ServeSettings
    from prunexplain.study.server.app import create_app
    from tests.study.server.serverkit import answer_all, join

    settings, run = study_run
    settings = settings.model_copy(update={"study": settings.study.model_copy(update={"experiments": ["exp2"]})})
    _done_through(settings, run, "evaluate")
    assert "crowd: exp2: 1 observers file(s)" in run_pipeline(settings, run, until="analysis")
    monkeypatch.setenv("PRUNEXPLAIN_ADMIN_TOKEN", "a-token-for-this-test-0123456789")
    serve = ServeSettings(experiments=["exp2"], tasks_per_participant=6, attention_checks=0)
    with TestClient(create_app(run.study.root, serve)) as participant:
        join(participant, "W1")
        assert len(answer_all(participant)) == 6
    again = run_pipeline(settings, run, until="analysis")
    assert "study: done (skipped)" in again and "crowd: exp2: 1 real file(s)" in again
    assert "analysis: exp2: 6 real answers" in again
    assert json.loads(run.analysis_source.read_text())["exp2"]["files"] == [
        str(run.study.exported("exp2"))]
    # blind names round-trip: the export names each opaque file, the key says what each showed
    from prunexplain.analysis.load import read_answers, read_key

    answers = read_answers("exp2", [run.study.exported("exp2")], key=read_key(run.study.key)).frame
    shown = {s["file"].split("/")[-1]: s for s in json.loads(run.study.manifest.read_text())["stimuli"]}
    assert answers["url"].str.fullmatch(r"[0-9a-f]{20}\.png").all()
    for row in answers.itertuples():
        stimulus = shown[row.url]
        assert (int(row.image), row.label, row.model, row.item) == (
            stimulus["image"], stimulus["label"], stimulus["model"], stimulus["name"])
        assert row.correct == (row.answer == stimulus["label"])
    items = pd.read_csv(run.analysis("exp2") / "items.csv")
    assert set(items["item"]) == set(answers["item"])  # the stage read them through the run's key


def test_preregistering_a_finished_study_keeps_it_finished(study_run):
    from prunexplain.config import ServeSettings
    from prunexplain.study.preregistration import preregister

    settings, run = study_run
    _done_through(settings, run, "evaluate")
    run_pipeline(settings, run, until="study")
    preregister(settings, run, ServeSettings())
    assert "study: done (skipped)" in run_pipeline(settings, run, until="study")
    assert "preregistration" in json.loads(run.study.manifest.read_text())
    run.study.manifest.write_text(run.study.manifest.read_text() + " ")  # any other change is not the freeze
    assert "study: done (skipped)" not in run_pipeline(settings, run, until="study")
    assert "preregistration" in json.loads(run.study.manifest.read_text())  # a rebuild keeps the frozen plan
