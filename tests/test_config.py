import json
from pathlib import Path

import pytest

from prunexplain.config import REFERENCE_BASE, Settings, UserError, load_settings, read_reference_run
from tests.conftest import REFERENCE


def test_defaults_describe_the_demo():
    settings = Settings()
    assert settings.data.dataset == "synthetic" and settings.data.image_size == 64
    assert settings.model.arch == "vgg16" and settings.model.width == 0.125
    assert settings.run_dir.as_posix() == "runs/demo"


def test_toml_file_then_overrides(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[train]\nepochs = 7\noptimizer = "SGD"\n[data]\nimage_size = 96\n')
    settings = load_settings(config, ["train.epochs=3", "run.name=x1"])
    assert (settings.train.epochs, settings.train.optimizer, settings.data.image_size) == (3, "SGD", 96)
    assert settings.run.name == "x1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[train]\nepoch = 3\n", "c.toml: train.epoch: unknown key (got 3)"),
        ('[train]\nepochs = "many"\n', "c.toml: train.epochs: Input should be a valid integer"),
        ('[train]\noptimizer = "RMSprop"\n',
         "c.toml: train.optimizer: Input should be 'SGD' or 'Adam' (got 'RMSprop')"),
        ("[train\n", "c.toml: not a valid TOML file"),
    ],
)
def test_bad_toml_names_file_key_and_value(tmp_path, text, expected):
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(UserError) as error:
        load_settings(config)
    assert str(error.value).startswith(str(tmp_path / expected.split(":")[0]) + ":")
    assert expected.split(": ", 1)[1] in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_override_names_itself():
    expected = r"--set train.batch_size=-4: train.batch_size: .*greater than or equal to 1 \(got -4\)"
    with pytest.raises(UserError, match=expected):
        load_settings(None, ["train.batch_size=-4"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_settings(None, ["epochs"])


def test_resolved_settings_round_trip_through_toml(tmp_path):
    settings = load_settings(None, ["train.frozen_parts=['features']", "data.rotation=5.5"])
    path = tmp_path / "config.toml"
    path.write_text(settings.to_toml())
    assert load_settings(path) == settings


def _reference_file(tmp_path, run: dict) -> object:
    path = tmp_path / "training_config.json"
    path.write_text(json.dumps({"run8": run}))
    return path


def test_reference_named_run_maps_every_key(tmp_path):
    path = _reference_file(
        tmp_path,
        {"batch_size": 64, "epochs": 100, "pretrained": True, "vgg_no_train_parts": ["features"], "optimizer": "SGD",
         "learning_rate": 0.001, "momentum": 0.9, "model_path": "m/run8.pt", "results_path": "out.json"},
    )
    settings = load_settings(None, ["model.width=1", "model.pool_size=7"], (path, "run8"))
    assert settings.run.name == "demo"
    assert (settings.train.batch_size, settings.train.epochs, settings.train.optimizer) == (64, 100, "SGD")
    assert settings.train.frozen_parts == ["features"] and settings.model.weights == "imagenet"
    assert str(settings.runtime.model_path) == "m/run8.pt" and str(settings.runtime.results_path) == "out.json"


def test_reference_errors_name_file_run_and_key(tmp_path):
    path = _reference_file(tmp_path, {"batch_size": 64, "colour": "red"})
    with pytest.raises(UserError, match=r"training_config.json: run8.colour: unknown key"):
        read_reference_run(path, "run8")
    with pytest.raises(UserError, match=r"no run named 'run9' \(runs: run8\)"):
        read_reference_run(path, "run9")
    bad = _reference_file(tmp_path, {"batch_size": "big"})
    with pytest.raises(UserError, match=r"training_config.json \[run8\]: train.batch_size: .*\(got 'big'\)"):
        load_settings(None, [], (bad, "run8"))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(UserError, match="broken.json: not a valid JSON file"):
        read_reference_run(broken, "run8")


def test_a_reference_run_implies_the_studys_model_and_data(tmp_path):
    """The JSON names only training options; its run is the original's: full VGG-16 on the full-size
    Imagenette at 224 px, unnormalised, augmented per image, the last improving epoch kept."""
    path = _reference_file(tmp_path, {"batch_size": 64, "optimizer": "SGD", "pretrained": True})
    settings = load_settings(None, [], (path, "run8"))
    for section, values in REFERENCE_BASE.items():
        assert getattr(settings, section).model_dump(mode="json", include=set(values)) == values
    assert (settings.model.width, settings.data.root, settings.model.weights) == (1.0, Path("data/imagenette2"),
                                                                                    "imagenet")
    assert load_settings(None, []).model.width == 0.125  # without a reference run: the demo's defaults


def test_reference_layers_base_then_file_then_json_then_overrides(tmp_path):
    path = _reference_file(tmp_path, {"batch_size": 32, "optimizer": "Adam"})
    config = tmp_path / "c.toml"
    config.write_text('[data]\nroot = "elsewhere"\n[train]\nbatch_size = 8\npatience = 4\n')
    settings = load_settings(config, ["train.patience=5"], (path, "run8"))
    assert settings.data.root == Path("elsewhere") and settings.data.image_size == 224  # file over the base
    assert settings.train.batch_size == 32 and settings.train.patience == 5  # the JSON over the file; --set last
    assert settings.train.weight_decay == 0.0  # the original's Adam had no weight decay
    assert REFERENCE_BASE["data"]["root"] == "data/imagenette2"  # the base itself is never changed


def test_the_study_example_agrees_with_the_reference_base():
    """examples/study.toml is the reproduced study: every key the reference base sets has its value there
    (written in the file, or the default where the file leaves it out)."""
    study = load_settings(Path(__file__).resolve().parents[1] / "examples" / "study.toml", [])
    differ = {}
    for section, values in REFERENCE_BASE.items():
        found = getattr(study, section).model_dump(mode="json", include=set(values))
        differ.update({f"{section}.{key}": (found[key], value) for key, value in values.items() if found[key] != value})
    assert differ == {}, f"examples/study.toml (found, base): {differ}"


@pytest.mark.skipif(not REFERENCE.exists(), reason="../shared/reference is absent")
def test_the_published_training_config_reads():
    values = read_reference_run(REFERENCE / "training_config.json", "run8")
    assert values["train.epochs"] == 100 and values["model.weights"] == "imagenet"
    assert values["train.frozen_parts"] == []


def test_the_example_study_config_is_valid():
    from pathlib import Path

    settings = load_settings(Path(__file__).resolve().parents[1] / "examples" / "study.toml")
    assert (settings.model.width, settings.model.pool_size, settings.data.image_size) == (1, 7, 224)
    assert settings.train.optimizer == "SGD" and settings.model.weights == "imagenet"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prune.rates=[nan]", "prune.rates.0: Input should be a finite number (got nan)"),
        ("prune.rates=[2, inf]", "prune.rates.1: Input should be a finite number (got inf)"),
        ("prune.rates=[1, 2]", "prune.rates: rates must be > 1, got 1"),
        ('prune.rates=["2", "4"]', "prune.rates.0: Input should be a valid number (got '2')"),
        ("train.epochs=true", "train.epochs: Input should be a valid integer (got True)"),
        ('train.epochs="5"', "train.epochs: Input should be a valid integer (got '5')"),
        ("train.epochs=5.5", "train.epochs: Input should be a valid integer (got 5.5)"),
        ("data.hflip=1", "data.hflip: Input should be a valid boolean (got 1)"),
        ('data.hflip="yes"', "data.hflip: Input should be a valid boolean (got 'yes')"),
        ("data.rotation=nan", "data.rotation: Input should be a finite number (got nan)"),
        ("evaluate.sanity_threshold=inf", "evaluate.sanity_threshold: Input should be a finite number (got inf)"),
        ("run.root=3", "run.root: Input is not a valid path"),
        ("train.optimizer=1", "train.optimizer: Input should be 'SGD' or 'Adam' (got 1)"),
    ],
)
def test_settings_are_strict_about_types_and_finite(override, expected):
    with pytest.raises(UserError) as error:
        load_settings(None, [override])
    assert str(error.value).startswith(f"--set {override}: ")
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_strict_settings_still_take_what_toml_and_json_give(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[data]\nroot = "d/x"\nrotation = 5\n[run]\nroot = "out"\n[runtime]\nmodel_path = "m.pt"\n'
                      '[study]\npairs = [["nonpruned", "2pruned"]]\n[prune]\nrates = [2, 4.5]\n')
    settings = load_settings(config, ["train.learning_rate=1", "train.optimizer=SGD"])
    assert settings.data.root == Path("d/x") and settings.run.root == Path("out")
    assert settings.runtime.model_path == Path("m.pt") and settings.study.pairs == [("nonpruned", "2pruned")]
    assert settings.prune.rates == [2.0, 4.5] and isinstance(settings.data.rotation, float)
    assert settings.train.learning_rate == 1.0 and settings.train.optimizer == "SGD"
    dumped = Settings.model_validate(json.loads(settings.model_dump_json()))  # how the pipeline's records read
    assert dumped == settings


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/tmp", ".hidden", "", "-x", "a b"])
def test_a_run_name_is_one_plain_folder(name):
    with pytest.raises(UserError, match=r"run.name: a run name is one plain folder name .*\(got '"):
        load_settings(None, [f'run.name="{name}"'])


def test_run_names_that_are_plain_folders_pass():
    for name in ("demo", "run8", "study_2.v1", "a+b", "_x"):
        assert load_settings(None, [f'run.name="{name}"']).run.name == name


def test_none_unsets_an_optional_setting(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nweights = "imagenet"\n[explain]\ntarget_layer = "features.3"\n'
                      '[runtime]\nresults_path = "r.json"\nthreads = 2\n')
    settings = load_settings(config, ["model.weights=none", "explain.target_layer=none", "runtime.results_path=none",
                                      "runtime.threads= none "])
    assert settings.model.weights is None and settings.explain.target_layer is None
    assert settings.runtime.results_path is None and settings.runtime.threads is None
    assert load_settings(config, ["train.results_path=none"]).runtime.results_path is None  # an older key name
    assert load_settings(None, ['model.weights="none"']).model.weights == "none"  # quoted: the text
    assert load_settings(None, ["run.name=none"]).run.name == "none"  # not optional: the text
    with pytest.raises(UserError, match=r"train.epochs: Input should be a valid integer \(got 'none'\)"):
        load_settings(None, ["train.epochs=none"])


def test_an_empty_value_of_an_optional_setting_says_how_to_unset_it():
    with pytest.raises(UserError, match=r"^--set model.weights=: empty value; write model.weights=none to unset it$"):
        load_settings(None, ["model.weights="])
    with pytest.raises(UserError, match="write data.root=none"):
        load_settings(None, ['data.root=""'])
    assert load_settings(None, ["study.url_prefix="]).study.url_prefix == ""


def test_the_sparseness_example_prunes_to_ten_to_seventy_percent_with_every_model_named_once():
    """examples/suwal_gini_resnet18.toml: its rates are the sparsities 10 % ... 70 %, each model's folder
    reads back as its rate, and its methods, schedules and study models pass the run's own checks."""
    from prunexplain.preflight import check_explain_method, check_study_models
    from prunexplain.pruning.schedule import check_schedules
    from prunexplain.runs import ModelKey

    settings = load_settings(Path(__file__).parent.parent / "examples" / "suwal_gini_resnet18.toml", [])
    sparsities = [1 - 1 / rate for rate in settings.prune.rates]
    assert sparsities == pytest.approx([0.1 * k for k in range(1, 8)], abs=1e-15)
    for rate in settings.prune.rates:
        key = ModelKey.pruned("global_magnitude_unstructured", rate)
        assert ModelKey.parse(str(key)) == key
    check_schedules(settings)
    check_explain_method(settings)
    check_study_models(settings)
    assert settings.explain.methods == ["saliency", "integrated_gradients"] and settings.model.arch == "resnet18"
