"""Model-based observers: simulated participants whose answers depend on the stimuli they are shown.

One fitted study run (conftest's) answered once by the crowd stage serves most tests; the must-show
test trains an observer on a dataset it can learn in seconds (below) and shows it stimuli of a good
and of a deliberately broken explainer.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from prunexplain.analysis.load import read_answers, read_key
from prunexplain.analysis.stage import analyze
from prunexplain.cli import app
from prunexplain.config import AnalysisSettings
from prunexplain.data.imagenette import CLASSES
from prunexplain.data.loaders import load_splits, object_masks, stacked
from prunexplain.errors import UserError
from prunexplain.experiments import EXPERIMENTS
from prunexplain.explain import maps_and_predictions
from prunexplain.explain.render import exp2_image
from prunexplain.models import build_model
from prunexplain.runs import Run, write_text
from prunexplain.study.build import Shown, read_manifest, shown_again
from prunexplain.study.crowd import crowd_stage
from prunexplain.study.observers import answer_study, observe, observer
from prunexplain.study.stimuli import draw_sides
from tests.conftest import tiny_settings
from tests.study.conftest import copy_run
from tests.study.databases import study_folder

KEYS = ["exp1", "exp1_heatmap", "exp2"]


def _with(settings, **crowd):
    return settings.model_copy(update={"crowd": settings.crowd.model_copy(update=crowd)})


@pytest.fixture(scope="module")
def answered(built):
    """The fitted study run, built, its crowd stage run with the defaults: observers answer it all."""
    settings, run, _ = built
    write_text(run.config, settings.to_toml())  # what `--run DIR` commands read
    return settings, run, crowd_stage(settings, run)


def _sources(run):
    return {key: entry["source"] for key, entry in json.loads(run.study.crowd.read_text()).items()}


def test_the_crowd_stage_asks_observers_by_default_the_published_crowd_on_request_and_real_answers_win(
        answered, tmp_path):
    settings, run, result = answered
    assert _sources(run) == dict.fromkeys(KEYS, "observers")
    assert result.sources["exp2"]["files"] == [str(run.study.simulated("exp2") / "exp2_results.csv")]
    assert "no answer files exp2*.csv" in result.sources["exp2"]["reason"]
    truth = json.loads((run.study.simulated("exp1") / "truth.json").read_text())
    assert truth["source"] == "observers" and [(p["a"], p["b"]) for p in truth["pairs"]] == [
        ("nonpruned", "2pruned"), ("nonpruned", "32pruned"), ("2pruned", "32pruned")]
    assert run.study.observer.is_file()

    settings, run = copy_run(settings, run, tmp_path)
    crowd_stage(_with(settings, mode="published"), run)
    assert _sources(run) == dict.fromkeys(KEYS, "simulated")
    (run.study.answers).mkdir()
    (run.study.answers / "exp2_batch1.csv").write_bytes((run.study.simulated("exp2") / "exp2_results.csv").read_bytes())
    trained = run.study.observer.stat().st_mtime_ns
    crowd_stage(settings, run)
    assert _sources(run) == {"exp1": "observers", "exp1_heatmap": "observers", "exp2": "real"}
    assert run.study.observer.stat().st_mtime_ns == trained  # trained once per run, then reused


def test_observers_need_the_runs_models_and_say_so_in_one_line(tmp_path):
    settings = tiny_settings(tmp_path, tmp_path / "no-data", "crowd.workers=6", "crowd.answers_per_item=2")
    run = Run(settings.run_dir)
    study_folder(run.study.root)  # a hand-built study: no models in the run
    with pytest.raises(UserError) as error:
        crowd_stage(settings, run)
    assert "\n" not in str(error.value) and 'crowd.mode = "published"' in str(error.value)
    assert not run.study.crowd.exists()


def test_observer_answers_are_mturk_batch_results_the_analysis_reads_unchanged(answered, tmp_path):
    settings, run, _ = answered
    manifest = read_manifest(run.study.manifest)
    for key in KEYS:
        spec = EXPERIMENTS[key].kind
        answers = read_answers(spec.name, [run.study.simulated(key) / f"{spec.name}_results.csv"],
                               key=read_key(run.study.key))
        stimuli = [s for s in manifest["stimuli"] if s["experiment"] == key]
        assert not answers.problems and len(answers.frame) == len(stimuli) * settings.crowd.answers_per_item
        assert (answers.frame.groupby("hit")["worker"].nunique() == settings.crowd.answers_per_item).all()
        assert set(answers.frame["url"]) == {s["file"].split("/")[-1] for s in stimuli}  # the opaque names
        assert set(answers.frame["item"]) == {s["name"] for s in stimuli}  # read through the key
        summary = analyze(spec.name, [run.study.simulated(key) / f"{spec.name}_results.csv"],
                          AnalysisSettings(bootstrap=0, plots=False), tmp_path / key, key=run.study.key).summary
        assert summary["answers"] == len(answers.frame) and summary["validation"]


def test_observers_read_exactly_the_pictures_the_stimuli_show(answered, tmp_path):
    settings, run, _ = answered
    shown = shown_again(settings, run)
    drawn = shown.drawn(settings.study, "occlusion")
    manifest = read_manifest(run.study.manifest)
    for stimulus in [s for s in manifest["stimuli"] if s["experiment"] == "exp2"][::17]:
        picture = drawn[stimulus["model"]][shown.ids.index(stimulus["image"])]
        again = exp2_image(picture, tmp_path / "again.png")
        assert again.read_bytes() == run.study.stimulus(stimulus["file"]).read_bytes()


def test_the_same_seed_gives_the_same_answers_and_another_seed_others(answered, tmp_path):
    settings, run, _ = answered
    observe(settings, run, KEYS, lambda key: tmp_path / "again" / key)
    for key in KEYS:
        name = f"{EXPERIMENTS[key].kind.name}_results.csv"
        assert (tmp_path / "again" / key / name).read_bytes() == (run.study.simulated(key) / name).read_bytes()
    other, copied = copy_run(settings, run, tmp_path / "copy")
    observe(_with(other, seed=1), copied, ["exp2"], lambda key: tmp_path / "other" / key)
    assert (tmp_path / "other" / "exp2" / "exp2_results.csv").read_bytes() != (
        run.study.simulated("exp2") / "exp2_results.csv").read_bytes()


def test_study_predict_writes_answers_their_analysis_and_the_power_of_the_predicted_effects(answered, tmp_path):
    settings, run = copy_run(*answered[:2], tmp_path)
    result = CliRunner().invoke(app, ["study", "predict", "--run", str(run.root)])
    assert result.exit_code == 0, result.output
    assert "exp1: predicted by model-based observers, not people" in result.output
    listing = json.loads(run.prediction.summary.read_text())
    assert list(listing) == KEYS and {entry["source"] for entry in listing.values()} == {"observers"}
    for key in KEYS:
        folder = run.prediction.answers(key)
        assert folder.results(EXPERIMENTS[key].kind.name).is_file()
        assert json.loads((run.prediction.analysis(key) / "summary.json").read_text())["answers"] > 0
    truth = json.loads(run.prediction.answers("exp1").truth.read_text())
    power = json.loads(run.prediction.answers("exp1").power.read_text())
    assert [(row["a"], row["b"], row["preference"]) for row in power] == [
        (p["a"], p["b"], p["preference"]) for p in truth["pairs"]]  # the power analysis of the predicted effects
    assert all(row["items"] is None or row["power"] >= row["target"] for row in power)
    models = json.loads(run.prediction.answers("exp2").truth.read_text())["models"]
    assert [m["name"] for m in models] == ["nonpruned", "2pruned", "32pruned"]
    assert not run.prediction.answers("exp2").power.exists()  # no power analysis of experiment 2 yet


# --- must show: observers tell a good explainer from a broken one ---------------------------------

_HUES = [(230, 25, 25), (25, 200, 25), (30, 60, 235), (235, 220, 20), (220, 30, 220), (20, 220, 220),
         (250, 140, 0), (140, 60, 20), (255, 255, 255), (120, 0, 200)]


def _colour_dataset(root, train=40, val=24, size=32, seed=0):
    """An ImageFolder dataset (Imagenette's folder names) an observer learns in seconds: one disk or
    square per image in its class's colour on a smooth grey background, with object masks.

    The embedded shapes take a small network tens of epochs to learn, too long for a test; what is
    tested here is that the observers' answers follow what the maps leave visible, not how fast
    a network learns shapes."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for c, wnid in enumerate(CLASSES):
            for folder in (root / split / wnid, root / "masks" / split / wnid):
                folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                low = rng.uniform(40, 160, (4, 4, 1)) + rng.uniform(-15, 15, (4, 4, 3))
                back = np.asarray(Image.fromarray(low.clip(0, 255).astype(np.uint8)).resize((size, size),
                                                                                            Image.BILINEAR))
                back = back + rng.normal(0, 8, back.shape)
                yy, xx = np.mgrid[:size, :size]
                radius = rng.uniform(0.12, 0.2) * size
                cy, cx = rng.uniform(radius, size - radius, 2)
                if c % 2:
                    mask = (abs(yy - cy) <= radius * 0.85) & (abs(xx - cx) <= radius * 0.85)
                else:
                    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
                image = np.where(mask[..., None], np.array(_HUES[c], float), back).clip(0, 255).astype(np.uint8)
                Image.fromarray(image).save(root / split / wnid / f"{i}.png")
                Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / split / wnid / f"{i}.png")
    return root


def _stimuli(labels: list[str], pair: tuple[str, str]) -> list[dict]:
    """Stimulus records as a manifest lists them: both experiments, the pair's sides drawn as `study
    build` draws them."""
    sides, records = draw_sides(len(labels), 1, 0)[0], []
    for key in KEYS:
        spec = EXPERIMENTS[key].kind
        for i, label in enumerate(labels):
            shown = [pair if sides[i] else pair[::-1]] if spec.compares else [(model,) for model in pair]
            for models in shown:
                records.append({"experiment": key, "file": f"{key}/{spec.stimulus_name(i, label, models)}",
                                "image": i, "label": label, **dict(zip(spec.shows, models))})
    return records


def test_observers_recognise_and_prefer_a_good_explainer_over_a_broken_one(tmp_path):
    """The good explainer's map is the object itself (its mask, blurred): what a perfect explanation
    shows. The broken one is Grad-CAM of a network with random weights: blobs that know nothing of the
    object. Measured here (8 observer epochs on 400 training images; 171 test images, 5 answers each):
    experiment 2 accuracy 0.94 (good) against 0.53 (broken); experiment 1 the good map preferred in 91 %
    (occlusion) and 94 % (heatmap) of decided answers. The test asks for margins well inside those:
    accuracy >= 0.6 and higher by >= 0.25, the good map preferred in >= 70 % of decided answers."""
    data = _colour_dataset(tmp_path / "colours")
    settings = tiny_settings(tmp_path, data, 'data.dataset="imagenette"', "crowd.observer_epochs=8",
                             'explain.target_layer="features.16"')
    seer = observer(settings, Run(settings.run_dir))
    test = load_splits(data, settings.data.split_seed, CLASSES).test
    images = stacked(test, settings.data.image_size)
    masks = torch.from_numpy(object_masks(test, settings.data.image_size)).float()
    good = F.avg_pool2d(masks[:, None], 5, 1, 2)[:, 0] + 1e-3 * torch.rand(masks.shape, generator=torch.Generator())
    torch.manual_seed(1)
    broken, _ = maps_and_predictions(build_model(10, settings.model).eval(), images, settings.data, settings.explain,
                                     torch.device("cpu"))
    labels = [test.classes[label] for label in test.labels]
    shown = Shown(images.permute(0, 2, 3, 1).numpy(), {"nonpruned": good.numpy(), "2pruned": broken}, labels,
                  list(range(len(labels))), list(test.classes))
    manifest = {"experiments": {key: {"kind": EXPERIMENTS[key].kind.name} for key in KEYS},
                "models": {"nonpruned": {}, "2pruned": {}}, "stimuli": _stimuli(labels, ("nonpruned", "2pruned"))}
    observed = answer_study(settings, seer, shown, manifest, KEYS, lambda key: tmp_path / "answers" / key)

    recognised = read_answers("exp2", [observed["exp2"].results]).frame.groupby("model")["correct"].mean()
    assert recognised["nonpruned"] >= 0.6 and recognised["nonpruned"] - recognised["2pruned"] >= 0.25, recognised
    for key in ("exp1", "exp1_heatmap"):
        frame = read_answers("exp1", [observed[key].results]).frame
        decided = frame[frame["preferred"] != "none"]
        assert (decided["preferred"] == "nonpruned").mean() >= 0.7, (key, decided["preferred"].value_counts())
    predicted = {m["name"]: m["correct"] for m in observed["exp2"].truth["models"]}
    assert predicted["nonpruned"] - predicted["2pruned"] >= 0.25  # the predicted effects say the same
