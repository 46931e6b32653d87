import csv
import html
import json
import re
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from prunexplain.analysis.load import parse_tables, read_key
from prunexplain.config import StudySettings, UserError
from prunexplain.data.loaders import ImageSet, prepare, stacked
from prunexplain.experiments import EXPERIMENTS, RECOGNISE, SHOWN_AS, Experiment
from prunexplain.models import load_checkpoint
from prunexplain.runs import ModelKey
from prunexplain.study.build import build_study, rebuild_study
from prunexplain.study.mturk import layout
from prunexplain.study.select import draw, study_name
from prunexplain.study.server.catalog import load_study
from prunexplain.study.stimuli import draw_sides
from tests.study.conftest import copy_run

SHAPES = ["disk", "square", "triangle", "plus", "star", "target", "hexagon", "semicircle", "rectangle", "heart"]


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_every_selected_image_is_classified_correctly_by_every_model(built):
    settings, run, result = built
    rows = _rows(run.study.selection)
    assert result.images == len(rows) == 20
    labels = [int(row["label"]) for row in rows]
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10
    assert len({row["test_index"] for row in rows}) == 20
    images = ImageSet(tuple(row["path"] for row in rows), tuple(labels), tuple(f"c{i}" for i in range(10)))
    x = prepare(stacked(images, 32), settings.data)
    manifest = json.loads(run.study.manifest.read_text())
    assert list(manifest["models"]) == ["nonpruned", "2pruned", "32pruned"]
    for model in manifest["models"].values():
        net, _ = load_checkpoint(run.checkpoint(ModelKey.parse(model["key"])))
        with torch.no_grad():
            assert net(x).argmax(1).tolist() == labels


def test_stimuli_have_opaque_names_the_key_maps_back_and_both_sides_are_balanced(built):
    settings, run, result = built
    assert result.stimuli == {"exp1": 60, "exp1_heatmap": 60, "exp2": 60}
    manifest = json.loads(run.study.manifest.read_text())
    exp1 = [s for s in manifest["stimuli"] if s["experiment"] == "exp1"]
    for a, b in [("nonpruned", "2pruned"), ("nonpruned", "32pruned"), ("2pruned", "32pruned")]:
        pair = [s for s in exp1 if {s["left"], s["right"]} == {a, b}]
        assert len(pair) == 20 and sum(s["left"] == a for s in pair) == 10
    recorded = {(p["a"], p["b"]): (p["a_left"], p["b_left"]) for p in manifest["counterbalancing"]["exp1"]["pairs"]}
    assert set(recorded.values()) == {(10, 10)} and len(recorded) == 3
    # blind: a file name says nothing of the models or the class; the key says what it shows
    key = {row["file"]: row for row in _rows(run.study.key)}
    assert len(key) == 180 and all(re.fullmatch(r"[0-9a-f]{20}\.png", name) for name in key)
    assert all(PurePosixPath(s["file"]).name in key for s in manifest["stimuli"])
    first = exp1[0]
    row = key[PurePosixPath(first["file"]).name]
    assert row["name"] == first["name"] == f"{first['image']}_{first['left']}_{first['label']}_{first['right']}.png"
    assert (row["experiment"], row["left"], row["right"]) == ("exp1", first["left"], first["right"])
    assert run.study.stimulus(first["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the heatmap variant puts the same model on the same side of the same image, under other names
    heatmap = [s for s in manifest["stimuli"] if s["experiment"] == "exp1_heatmap"]
    assert {(s["image"], s["left"], s["right"]) for s in heatmap} == {(s["image"], s["left"], s["right"]) for s in exp1}
    assert not {PurePosixPath(s["file"]).name for s in heatmap} & {PurePosixPath(s["file"]).name for s in exp1}
    exp2 = {s["name"] for s in manifest["stimuli"] if s["experiment"] == "exp2"}
    assert "0_0-disk_32pruned.png" in exp2


def test_the_original_names_remain_a_setting_and_a_rebuild_keeps_the_opaque_names(built, tmp_path):
    settings, run, _ = built
    copy, copied = copy_run(settings, run, tmp_path)
    manifest = json.loads(copied.study.manifest.read_text())
    build_study(copy, copied)  # the same folder again: the manifest's key, so the same names
    assert [s["file"] for s in json.loads(copied.study.manifest.read_text())["stimuli"]] == \
        [s["file"] for s in manifest["stimuli"]]
    named = copy.model_copy(update={"study": copy.study.model_copy(update={"stimulus_names": "study"})})
    build_study(named, copied)
    stimuli = json.loads(copied.study.manifest.read_text())["stimuli"]
    first = next(s for s in stimuli if s["experiment"] == "exp1")
    assert first["file"] == f"exp1/{first['image']}_{first['left']}_{first['label']}_{first['right']}.png"
    assert "name" not in first and not copied.study.key.exists()
    assert len(list(copied.study.stimuli("exp1").glob("*.png"))) == 60  # the opaque files are gone


def test_a_counterbalancing_violation_stops_the_build_naming_the_pair(study_run, monkeypatch):
    settings, run = study_run
    import prunexplain.study.build as build

    monkeypatch.setattr(build, "shared_sides", _lopsided(build.shared_sides))
    with pytest.raises(UserError, match=r"counterbalancing: exp1 pair 2pruned vs nonpruned puts 2pruned left on 0 "
                                        r"and nonpruned left on 20 images"):
        build_study(settings, run)
    assert not run.study.manifest.exists()


def _lopsided(shared_sides):
    def sides(images, pair_lists, seed):
        drawn = shared_sides(images, pair_lists, seed)
        drawn[0][0, :] = True  # exp1's first pair: its first model left on every image
        return drawn
    return sides


def test_sides_are_balanced_random_and_reproducible():
    sides = draw_sides(101, 3, seed=7)
    assert sides.shape == (3, 101) and set(sides.sum(1)) <= {50, 51}
    assert (sides == draw_sides(101, 3, seed=7)).all()
    assert not (sides == draw_sides(101, 3, seed=8)).all()
    assert 0.3 < sides[:, :50].mean() < 0.7  # shuffled, not the first half left


def test_file_names_and_layout_answers_parse_back_with_analyze(built):
    settings, run, _ = built
    key = read_key(run.study.key)
    urls = [row["image_url"] for row in _rows(run.study.input_csv("exp1"))]
    table = pd.DataFrame({"HITId": [f"H{i}" for i in range(len(urls))], "WorkerId": "W1", "Input.image_url": urls,
                          "Answer.algorithms.label": ["alg1", "alg2", "none"] * (len(urls) // 3)})
    with pytest.raises(UserError, match="opaque stimulus names that no key maps"):
        parse_tables("exp1", [("export.csv", table)])
    answers = parse_tables("exp1", [("export.csv", table)], key=key)
    assert not answers.problems and len(answers.frame) == 60
    assert answers.models == ["nonpruned", "2pruned", "32pruned"]
    assert answers.frame["answer"].value_counts().to_dict() == {"alg1": 20, "alg2": 20, "none": 20}
    stimuli = json.loads(run.study.manifest.read_text())["stimuli"]
    shown = {s["file"]: (s["image"], s.get("left"), s.get("right")) for s in stimuli}
    read = answers.frame[["url", "image", "left", "right"]].itertuples(index=False)
    assert all(shown[url] == (int(image), left, right) for url, image, left, right in read)  # the URL as given
    urls = [row["image_url"] for row in _rows(run.study.input_csv("exp2"))]
    labels = [key[u.rsplit("/", 1)[-1]].split("_")[1] for u in urls]
    table = pd.DataFrame({"HITId": [f"H{i}" for i in range(len(urls))], "WorkerId": "W1", "Input.image_url": urls,
                          "Answer.classes.label": labels})
    answers = parse_tables("exp2", [("export.csv", table)], key=key)
    assert not answers.problems and answers.frame["correct"].all()
    assert answers.labels == [f"{i}-{n}" for i, n in enumerate(SHAPES)]


def test_input_csvs_are_shuffled_from_the_seed_with_the_url_prefix(study_run):
    settings, run = study_run
    build_study(settings, run)  # an earlier build of all experiments: its other files must go
    prefixed = settings.model_copy(update={"study": settings.study.model_copy(
        update={"url_prefix": "https://bucket.example/s/", "experiments": ["exp2"]})})
    build_study(prefixed, run)
    urls = [row["image_url"] for row in _rows(run.study.input_csv("exp2"))]
    assert all(u.startswith("https://bucket.example/s/exp2/") for u in urls) and len(set(urls)) == 60
    assert urls != sorted(urls)
    assert not list(run.study.stimuli("exp1").glob("*.png")) and not run.study.input_csv("exp1").exists()
    layout = run.study.layout("exp2").read_text()
    assert "<crowd-form" in layout and 'name="classes.label"' in layout and "${image_url}" in layout
    values = re.findall(r'<input type="radio" name="classes.label" value="([^"]*)" required>', layout)
    assert values == [*(f"{i}-{n}" for i, n in enumerate(SHAPES)), "none"]


def test_rebuilding_from_the_manifest_gives_identical_files(built, tmp_path):
    settings, run, _ = built
    result = rebuild_study(run.study.manifest, run, tmp_path / "again")
    assert result.different == [] and result.checked == 180 + 8  # with key.csv, under the same opaque names
    some = sorted(run.study.stimuli("exp1").glob("*.png"))[:3]
    assert all(p.read_bytes() == (tmp_path / "again" / "exp1" / p.name).read_bytes() for p in some)


def test_rebuild_refuses_changed_checkpoints(built, tmp_path):
    settings, run = copy_run(*built[:2], tmp_path)
    checkpoint = run.dense_checkpoint
    checkpoint.write_bytes(checkpoint.read_bytes() + b"x")
    with pytest.raises(UserError, match="model nonpruned .* not the checkpoint it was built from"):
        rebuild_study(run.study.manifest, run, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_too_few_eligible_images_name_the_counts_per_class():
    labels = np.array([0, 0, 1, 1, 2])
    eligible = np.array([True, True, True, False, False])
    with pytest.raises(UserError, match=r"study.per_class=2: .*\(a 2, b 1, c 0\)"):
        draw(labels, eligible, 2, 0, ("a", "b", "c"))
    chosen = draw(np.repeat(np.arange(3), 10), np.ones(30, bool), 4, 0, ("a", "b", "c"))
    assert len(chosen) == 12 and (np.diff(chosen[:4]) > 0).all()
    assert (chosen == draw(np.repeat(np.arange(3), 10), np.ones(30, bool), 4, 0, ("a", "b", "c"))).all()


def test_models_are_named_as_the_study_and_checked(study_run):
    assert study_name("dense") == "nonpruned" and study_name("local_random_unstructured/cr_3.5") == "3.5pruned"
    settings, run = study_run
    wrong = settings.model_copy(update={"study": settings.study.model_copy(update={"models": ["dense", "x/cr_4"]})})
    with pytest.raises(UserError, match=r"study.models: 'x/cr_4' is not in this run \(it has: dense, "):
        build_study(wrong, run)
    unknown = [("nonpruned", "64pruned")]
    pairs = settings.model_copy(update={"study": settings.study.model_copy(update={"pairs": unknown})})
    with pytest.raises(UserError, match="study.pairs"):
        build_study(pairs, run)


def test_study_settings_name_only_experiments_of_the_spec():
    assert StudySettings().experiments == list(EXPERIMENTS)
    with pytest.raises(ValidationError, match=r"unknown experiment 'exp3' \(known: exp1, exp1_heatmap, exp2\)"):
        StudySettings(experiments=["exp1", "exp3"])


def test_a_new_experiment_in_the_spec_is_built_served_and_analysed(study_run, monkeypatch):
    """One entry in experiments.EXPERIMENTS is all a new experiment needs: settings accept it, the
    build renders and names its stimuli, writes its MTurk files, the server and the analysis read it."""
    monkeypatch.setitem(EXPERIMENTS, "exp2_heatmap", Experiment("exp2_heatmap", RECOGNISE, "heatmap"))
    settings, run = study_run
    study = StudySettings(**{**settings.study.model_dump(), "experiments": ["exp2", "exp2_heatmap"]})
    result = build_study(settings.model_copy(update={"study": study}), run)
    assert result.stimuli == {"exp2": 60, "exp2_heatmap": 60}
    manifest = json.loads(run.study.manifest.read_text())
    described = manifest["experiments"]["exp2_heatmap"]
    assert (described["kind"], described["variant"], described["question"]) == (
        RECOGNISE.name, "heatmap", RECOGNISE.question)
    heat = [s for s in manifest["stimuli"] if s["experiment"] == "exp2_heatmap"]
    assert [s["name"] for s in heat] == [RECOGNISE.stimulus_name(s["image"], s["label"], (s["model"],)) for s in heat]
    occluded = next(s["file"] for s in manifest["stimuli"]
                    if s["experiment"] == "exp2" and s["name"] == heat[0]["name"])
    assert run.study.stimulus(heat[0]["file"]).read_bytes() != run.study.stimulus(occluded).read_bytes()  # a heatmap
    assert SHOWN_AS["heatmap"] in run.study.layout("exp2_heatmap").read_text()
    served = load_study(run.study.root)
    assert served.experiments["exp2_heatmap"].spec is RECOGNISE and len(served.of("exp2_heatmap")) == 60
    urls = [row["image_url"] for row in _rows(run.study.input_csv("exp2_heatmap"))]
    key = read_key(run.study.key)
    table = pd.DataFrame({"HITId": [f"H{i}" for i in range(len(urls))], "WorkerId": "W1", "Input.image_url": urls,
                          RECOGNISE.prefix + "label": [key[PurePosixPath(u).name].split("_")[-2] for u in urls]})
    answers = parse_tables(described["kind"], [("export.csv", table)], key=key)
    assert not answers.problems and answers.frame["correct"].all() and len(answers.frame) == 60


def test_every_experiments_layout_asks_its_question_with_its_options():
    classes = ["0-disk", "1-<square>"]
    for key, experiment in EXPERIMENTS.items():
        kind = experiment.kind
        page = layout(experiment, classes)
        assert f"<legend><strong>{kind.question}</strong></legend>" in page
        values = re.findall(rf'name="{kind.answer_group}.label" value="([^"]*)"', page)
        assert sorted(html.unescape(v) for v in values) == sorted(kind.options(classes)), key
        assert SHOWN_AS[experiment.rendering] in page and "<square>" not in page and "${image_url}" in page
