"""`preflight`: every setting that can be checked without data or weights is refused at once, as one
line naming the key and the value, before the run folder or its dataset exist."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import UserError, load_settings
from prunexplain.preflight import preflight
from tests.conftest import TINY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FULL = ["model.width=1", "model.pool_size=7", "model.batch_norm=false"]


def _settings(tmp_path: Path, *overrides: str):
    return load_settings(None, [f'run.root="{tmp_path / "runs"}"', *overrides])


def _refused(settings, *expected: str, stages=None) -> str:
    with pytest.raises(UserError) as error:
        preflight(settings, stages)
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message
    return message


def test_good_settings_pass_and_touch_nothing(tmp_path):
    preflight(_settings(tmp_path))
    preflight(load_settings(EXAMPLES / "demo.toml", [f'run.root="{tmp_path / "runs"}"']))
    preflight(_settings(tmp_path, 'prune.schedule=["iterative", "one_shot"]',
                        "study.models=['dense', 'local_magnitude_unstructured+one_shot/cr_2']"))
    assert list(tmp_path.iterdir()) == []


def test_the_study_example_passes_once_its_dataset_is_there(tmp_path):
    root = tmp_path / "imagenette2-320"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    settings = load_settings(EXAMPLES / "study.toml", [f'run.root="{tmp_path / "runs"}"', f'data.root="{root}"'])
    preflight(settings)
    _refused(load_settings(EXAMPLES / "study.toml", [f'run.root="{tmp_path / "runs"}"']),
             "data.root: no Imagenette in data/imagenette2", "`prunexplain data imagenette --size full --dest data`")


def test_a_missing_imagenette_folder_is_named_with_the_command_that_downloads_it(tmp_path):
    root = tmp_path / "sets" / "imagenette2-160"
    _refused(_settings(tmp_path, "data.dataset=imagenette", f'data.root="{root}"'),
             f"data.root: no Imagenette in {root} (no such folder)",
             f"`prunexplain data imagenette --size 160 --dest {root.parent}`")
    own = tmp_path / "photos"  # a name of the user's own: say where the download will be
    _refused(_settings(tmp_path, "data.dataset=imagenette", f'data.root="{own}"'),
             "--size full --dest DIR`", "data.root to DIR/imagenette2")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.arch=resnet"], ["model.arch: unknown architecture 'resnet'", "did you mean resnet50"]),
        (["model.weights=imagenet"], ["model.weights='imagenet'", "fit only the full VGG-16", "width=0.125"]),
        ([*FULL, "model.weights=missing.pth"], ["model.weights: no such file 'missing.pth'", "or none"]),
        (["runtime.device=tpu"], ["runtime.device: unknown device 'tpu'"]),
        (["prune.methods=['local_magnitude_unstructured', 'nope']"], ["prune.methods: unknown 'nope'", "known:"]),
        (["explain.methods=['nope']"], ["explain.methods: unknown 'nope'"]),
        (["explain.models=['dense', 'big']"], ["explain.models:", "'big' is not a model of a run"]),
        (["explain.models=['local_magnitude_unstructured/cr_3']"],
         ["explain.models: 'local_magnitude_unstructured/cr_3' is not a model of this run", "prune.rates: 2, 4"]),
        (["study.models=['dense', 'other_method/cr_2']"],
         ["study.models: 'other_method/cr_2'", "methods and schedules:"]),
        (["study.models=['dense', 'local_magnitude_unstructured+one_shot/cr_2']"],
         ["study.models: 'local_magnitude_unstructured+one_shot/cr_2' is not a model of this run",
          "methods and schedules: local_magnitude_unstructured, local_random_unstructured;"]),
        (["study.models=['dense', 'local_magnitude_unstructured/cr_1']"], ["study.models:", "rate > 1"]),
        (["train.frozen_parts=['backbone']"], ["train.frozen_parts: the model has no part 'backbone'"]),
        (["explain.target_layer=features.99"], ["explain.target_layer: no layer 'features.99'"]),
        (["data.dataset=imagenette"], ["data.root: set it to an Imagenette folder"]),
    ],
)
def test_a_bad_setting_is_one_line_naming_key_and_value(tmp_path, overrides, expected):
    _refused(_settings(tmp_path, *overrides), *expected)
    assert not (tmp_path / "runs").exists()


def test_the_weights_file_must_be_a_file(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    _refused(_settings(tmp_path, *FULL, f'model.weights="{folder}"'), "model.weights: is a folder", str(folder))
    state = tmp_path / "vgg16.pth"
    state.write_bytes(b"anything: only its existence is checked up front")
    preflight(_settings(tmp_path, *FULL, f'model.weights="{state}"'))
    preflight(_settings(tmp_path, *FULL, "model.weights=imagenet"))


def test_data_root_of_imagenette_is_a_folder_with_train_and_val(tmp_path):
    file = tmp_path / "imagenette.tgz"
    file.write_bytes(b"\x1f\x8b")
    imagenette = _settings(tmp_path, "data.dataset=imagenette", f'data.root="{file}"')
    _refused(imagenette, f"data.root: {file}: is a file, not a folder")
    (tmp_path / "ds" / "train").mkdir(parents=True)
    _refused(_settings(tmp_path, "data.dataset=imagenette", f'data.root="{tmp_path / "ds"}"'), "has no val/ folder")


def test_data_root_of_the_synthetic_dataset_is_new_empty_or_synthetic(tmp_path):
    file = tmp_path / "data.bin"
    file.write_text("x")
    _refused(_settings(tmp_path, f'data.root="{file}"'), "data.root:", str(file), "is a file")
    _refused(_settings(tmp_path, f'data.root="{file / "sub"}"'), "data.root:", "is a file, so no folder can be made")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"")
    _refused(_settings(tmp_path, f'data.root="{other}"'), "data.root:", "is not a synthetic dataset")
    (tmp_path / "empty").mkdir()
    preflight(_settings(tmp_path, f'data.root="{tmp_path / "empty"}"'))
    preflight(_settings(tmp_path, f'data.root="{tmp_path / "new" / "folder"}"'))


def test_runtime_output_paths_are_writable_files(tmp_path):
    _refused(_settings(tmp_path, f'runtime.results_path="{tmp_path}"'), "runtime.results_path:", "is a folder")
    _refused(_settings(tmp_path, f'runtime.model_path="{tmp_path}"'), "runtime.model_path:", "is a folder")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _refused(_settings(tmp_path, f'runtime.model_path="{blocker / "m.pt"}"'), "runtime.model_path: cannot create",
             f"{blocker} is a file")
    preflight(_settings(tmp_path, f'runtime.model_path="{tmp_path / "new" / "m.pt"}"',
                        f'runtime.results_path="{tmp_path / "new" / "r.json"}"'))
    assert not (tmp_path / "new").exists()


def test_an_existing_results_file_must_be_a_json_array(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"run8": {}}))
    _refused(_settings(tmp_path, f'runtime.results_path="{results}"'), "runtime.results_path:", str(results),
             "not a JSON array")
    results.write_text("[{}, ")
    _refused(_settings(tmp_path, f'runtime.results_path="{results}"'), str(results), "not a valid JSON file")
    results.write_text("[]")
    preflight(_settings(tmp_path, f'runtime.results_path="{results}"'))


def test_run_folder_and_cache_folder_must_be_folders(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    _refused(_settings(tmp_path), "run.root/run.name: cannot create", "is a file")
    cache = tmp_path / "cache"
    cache.write_text("x")
    _refused(load_settings(None, [f'run.root="{tmp_path / "r"}"', f'runtime.cache_dir="{cache}"']),
             "runtime.cache_dir:", "is a file, not a folder")


def test_a_read_only_parent_is_refused(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    # As root, chmod stops no write: ask the permission check itself to say no.
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.realpath(path) != str(locked.resolve()))
    _refused(load_settings(None, [f'run.root="{locked}"']), "run.root/run.name: cannot create",
             f"no permission to write in {locked}")
    _refused(_settings(tmp_path, f'runtime.results_path="{locked / "r.json"}"'), "runtime.results_path:")


def test_stages_limit_the_checks_to_what_they_use(tmp_path):
    bad_parts = _settings(tmp_path, "train.frozen_parts=['backbone']", "explain.methods=['nope']")
    preflight(bad_parts, ["prune", "evaluate", "report"])
    _refused(bad_parts, "explain.methods", stages=["explain"])
    _refused(bad_parts, "train.frozen_parts", stages=["train"])


# Through the CLI: one line on stderr, exit status 2, and nothing written.


def _cli(command: str, root: Path, *settings: str):
    """`prunexplain <command>` on a tiny run under `root` (should a check be missed, it fails fast)."""
    tiny = [*TINY, "study.models=['dense', 'local_magnitude_unstructured/cr_2', 'local_magnitude_unstructured/cr_8']"]
    sets = [item for setting in [*tiny, f'run.root="{root}"', *settings] for item in ("--set", setting)]
    result = CliRunner().invoke(app, [command, *sets])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    return result, lines


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("prune.rates=[nan]", "prune.rates.0: Input should be a finite number (got nan)"),
        ("prune.rates=[2, inf]", "prune.rates.1: Input should be a finite number (got inf)"),
        ("prune.rates=[2, 8, 1e400]", "prune.rates.2: Input should be a finite number (got inf)"),
        ('prune.rates=["2","4"]', "prune.rates.0: Input should be a valid number (got '2')"),
        ("train.epochs=true", "train.epochs: Input should be a valid integer (got True)"),
        ("run.name=..", "run.name: a run name is one plain folder name"),
        ("model.arch=resnet", "model.arch: unknown architecture 'resnet'"),
        ("model.weights=imagenet", "fit only the full VGG-16"),
        ("model.weights=", "--set model.weights=: empty value; write model.weights=none to unset it"),
        ("explain.models=['dense', 'nope']", "explain.models: 'nope' is not a model of a run"),
        ("study.models=['dense', 'x/cr_2']", "study.models: 'x/cr_2' is not a model of this run"),
        ("explain.target_layer=classifier.99", "explain.target_layer: no layer 'classifier.99'"),
    ],
)
def test_run_refuses_before_any_work(tmp_path, setting, expected):
    root = tmp_path / "runs"
    result, errors = _cli("run", root, setting)
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and expected in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (root / "demo" / "data").exists() and not (root / "demo" / "config.toml").exists()


def test_run_refuses_a_data_root_that_is_a_file(tmp_path):
    file = tmp_path / "data.txt"
    file.write_text("x")
    result, errors = _cli("run", tmp_path / "runs", f'data.root="{file}"')
    assert result.exit_code == 2 and len(errors) == 1 and str(file) in errors[0], result.output
    assert not (tmp_path / "runs").exists()


def test_a_stage_command_refuses_before_generating_data(tmp_path):
    root = tmp_path / "runs"
    result, errors = _cli("train", root, "train.frozen_parts=['backbone']")
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "train.frozen_parts: the model has no part 'backbone'" in errors[0]
    assert not (root / "demo" / "data").exists()


def test_the_stages_are_the_pipelines():
    from prunexplain.pipeline import stage_names
    from prunexplain.preflight import STAGES

    assert list(STAGES) == stage_names()
    with pytest.raises(ValueError, match="unknown stages"):
        preflight(load_settings(None, []), ["fit"])
