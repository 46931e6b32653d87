import json

from typer.testing import CliRunner

from prunexplain.cli import app
from tests.conftest import TINY

runner = CliRunner()


def test_help_lists_one_command_per_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "run"):
        assert command in result.output


def test_train_from_the_studys_named_run_json(tmp_path, tiny_dataset):
    reference = tmp_path / "training_config.json"
    reference.write_text(json.dumps({"run8": {"batch_size": 16, "epochs": 3, "pretrained": False, "optimizer": "SGD",
                                              "learning_rate": 0.01, "momentum": 0.9, "vgg_no_train_parts": [],
                                              "model_path": str(tmp_path / "m" / "run8.pt"),
                                              "results_path": str(tmp_path / "training_output.json")}}))
    options = [a for item in TINY for a in ("--set", item)]
    root = ["--set", f'run.root="{tmp_path / "runs"}"', "--set", f'data.root="{tiny_dataset}"']
    result = runner.invoke(app, ["train", str(reference), "run8", *options, *root])
    assert result.exit_code == 0, result.output
    assert "test top-1" in result.output
    assert (tmp_path / "runs" / "run8" / "train" / "model.pt").exists() and (tmp_path / "m" / "run8.pt").exists()
    [row] = json.loads((tmp_path / "training_output.json").read_text())
    assert row["run"] == "run8" and row["epochs_trained"] == 2  # --set train.epochs=2 overrides the JSON


def test_user_errors_are_one_line_with_exit_status_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nbatch_size = 'x'\n")
    result = runner.invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {config}: train.batch_size: Input should be a valid integer (got 'x')"
    ]
    reference = tmp_path / "r.json"
    reference.write_text("{}")
    result = runner.invoke(app, ["train", str(reference)])
    assert result.exit_code == 2 and "RUN_NAME" in result.output
