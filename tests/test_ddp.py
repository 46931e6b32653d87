"""DDP through torchrun on the CPU (gloo), two processes: one run, written once, scored on all data."""

import json
import os
import subprocess
import sys

import pytest
import torch

from prunexplain.data.loaders import image_dataset, load_splits
from prunexplain.models import load_checkpoint
from prunexplain.runs import Run
from prunexplain.train import evaluate, make_loader
from tests.conftest import TINY, tiny_settings


@pytest.mark.slow
def test_torchrun_two_processes_on_gloo(tmp_path, tiny_dataset):
    options = [a for item in TINY for a in ("--set", item)]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "prunexplain", "train", *options, "--name", "ddp",
        "--set", f'run.root="{tmp_path / "runs"}"', "--set", f'data.root="{tiny_dataset}"',
        "--set", f'runtime.results_path="{tmp_path / "results.json"}"',
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "ddp" / "train" / "result.json").read_text())
    assert result["processes"] == 2 and result["epochs_trained"] == 2
    assert len(json.loads((tmp_path / "results.json").read_text())) == 1  # rank 0 alone writes
    assert Run(tmp_path / "runs" / "ddp").record("train")["settings"]["train"]["epochs"] == 2  # recorded once
    # the sharded, summed test accuracy is the saved model's accuracy on the whole test split
    settings = tiny_settings(tmp_path, tiny_dataset)
    model, checkpoint = load_checkpoint(tmp_path / "runs" / "ddp" / "train" / "model.pt")
    test = load_splits(tiny_dataset).test
    dataset = image_dataset(test, settings.data, tmp_path / "cache", "test", settings.runtime)
    loader = make_loader(dataset, 16, torch.device("cpu"))
    alone = evaluate(model, loader, settings.data, torch.device("cpu"))
    assert alone["top1"] == pytest.approx(result["test_top1"])
    # and each image's answer, gathered from the two shards, is in the test split's order
    assert checkpoint["meta"]["test_correct"] == alone["correct"] and len(alone["correct"]) == len(dataset)
