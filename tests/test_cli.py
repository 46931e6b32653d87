import json
import re
from pathlib import Path

from typer.testing import CliRunner

from prunexplain.cli import app
from tests.conftest import TINY

runner = CliRunner()


def test_help_lists_one_command_per_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "run"):
        assert command in result.output


def test_prune_help_names_every_method():
    from prunexplain.cli import prune
    from prunexplain.pruning.methods import METHODS

    listed = " ".join(prune.__doc__.split())
    assert [name for name in METHODS if not re.search(rf"\b{name}\b", listed)] == []


def test_train_from_the_studys_named_run_json(tmp_path, tiny_dataset):
    reference = tmp_path / "training_config.json"
    reference.write_text(json.dumps({"run8": {"batch_size": 16, "epochs": 3, "pretrained": False, "optimizer": "SGD",
                                              "learning_rate": 0.01, "momentum": 0.9, "vgg_no_train_parts": [],
                                              "model_path": str(tmp_path / "m" / "run8.pt"),
                                              "results_path": str(tmp_path / "training_output.json")}}))
    options = [a for item in TINY for a in ("--set", item)]
    root = ["--set", f'run.root="{tmp_path / "runs"}"', "--set", f'data.root="{tiny_dataset}"',
            "--set", "data.dataset=synthetic"]  # a reference run means the study's Imagenette otherwise
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


# The published training_config.json (../shared/reference), inline so the test runs without it.
PUBLISHED_RUN8 = {"run8": {"batch_size": 64, "epochs": 100, "pretrained": True, "vgg_no_train_parts": [],
                           "optimizer": "SGD", "learning_rate": 0.001, "momentum": 0.9,
                           "model_path": "trained_imgnette_models/run8_vgg_100ep_ft.pt",
                           "results_path": "training_output.json"}}


def test_the_originals_command_without_imagenette_names_the_download_and_writes_nothing(tmp_path, monkeypatch):
    """`prunexplain train training_config.json run8`, the original's command, means its model and data:
    without the full-size Imagenette it stops at once, saying how to get it."""
    monkeypatch.chdir(tmp_path)
    Path("training_config.json").write_text(json.dumps(PUBLISHED_RUN8))
    result = runner.invoke(app, ["train", "training_config.json", "run8"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: data.root: no Imagenette in data/imagenette2 (no such folder); download it with "
        "`prunexplain data imagenette --size full --dest data`"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["training_config.json"]  # no run folder, no synthetic data


def test_the_originals_command_offline_is_one_line_on_the_imagenet_weights(tmp_path, monkeypatch):
    import urllib.error

    import torch
    from PIL import Image

    from prunexplain.data.imagenette import CLASSES

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    Path("training_config.json").write_text(json.dumps(PUBLISHED_RUN8))
    for split in ("train", "val"):  # a stand-in Imagenette: its folders, two small images per class
        for folder in CLASSES:
            Path("data", "imagenette2", split, folder).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(Path("data", "imagenette2", split, folder, f"{i}.JPEG"))
    result = runner.invoke(app, ["train", "training_config.json", "run8", "--set", "runtime.device=cpu"])
    assert result.exit_code == 2
    cache = tmp_path / "hub" / "checkpoints"
    assert result.output.strip().splitlines() == [
        "error: model.weights='imagenet': cannot download https://download.pytorch.org/models/vgg16-397923af.pth "
        f"(<urlopen error [Errno -3] Temporary failure in name resolution>); put that file in {cache} (torch's cache), "
        'or set model.weights to a local copy (--set model.weights="path/to/vgg16-397923af.pth")'
    ]


def test_import_checkpoint_refuses_a_pickle_without_trust_and_imports_with_it(tmp_path):
    import torch

    from prunexplain.models import load_checkpoint
    from tests.test_models import _tiny_torchvision_vgg

    torch.save(_tiny_torchvision_vgg(), tmp_path / "run8.pt")
    result = runner.invoke(app, ["import-checkpoint", str(tmp_path / "run8.pt"), str(tmp_path / "model.pt")])
    assert result.exit_code == 2 and not (tmp_path / "model.pt").exists()
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'run8.pt'}: importing a pickled module runs any code the file holds; give --trust-pickle "
        "only for a file you trust (such as one the original code saved)"
    ]
    result = runner.invoke(app, ["import-checkpoint", str(tmp_path / "run8.pt"), str(tmp_path / "model.pt"),
                                 "--trust-pickle", *[a for c in "abcdefghij" for a in ("--classes", c)]])
    assert result.exit_code == 0, result.output
    assert "vgg16 (width 0.0625) of 10 classes, 0 pruned tensors folded" in result.output
    assert load_checkpoint(tmp_path / "model.pt")[1]["meta"]["classes"] == list("abcdefghij")
