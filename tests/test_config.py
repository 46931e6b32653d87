import json

import pytest

from prunexplain.config import Settings, UserError, load_settings, read_reference_run
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
        ('[train]\noptimizer = "RMSprop"\n', "c.toml: train.optimizer: Input should be 'SGD' or 'Adam' (got 'RMSprop')"),
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
    with pytest.raises(UserError, match=r"--set train.batch_size=-4: train.batch_size: .*greater than or equal to 1 \(got -4\)"):
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
    assert str(settings.train.model_path) == "m/run8.pt" and str(settings.train.results_path) == "out.json"


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
