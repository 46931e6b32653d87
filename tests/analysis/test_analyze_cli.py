"""`prunexplain study simulate` and `prunexplain analyze exp1|exp1_heatmap|exp2` end to end, and their import
weight."""

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from prunexplain.cli import app

runner = CliRunner()


def test_simulate_then_analyze_exp1(tmp_path):
    config = tmp_path / "crowd.toml"
    config.write_text("[simulate]\npower_sims = 50\nworkers = 40\n")
    result = runner.invoke(app, ["study", "simulate", "--config", str(config), "--images", "30", "--out",
                                 str(tmp_path / "sim"), "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "### Power: items (HITs) needed for 80% power" in result.output
    assert json.loads((tmp_path / "sim" / "power.json").read_text())[0]["items"] > 0
    out = tmp_path / "analysis"
    result = runner.invoke(app, ["analyze", "exp1", str(tmp_path / "sim" / "exp1_results.csv"), "--out", str(out),
                                 "--bootstrap", "20", "--min-work-time", "5"])
    assert result.exit_code == 0, result.output
    assert "| nonpruned vs 2pruned | 150 |" in result.output and "### Without low-effort workers" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert {"krippendorff_alpha", "none_share", "pairs", "classes", "filter", "validation"} <= set(summary)
    assert {"a", "b", "n", "none", "a_preferred", "b_preferred", "chi2", "p", "p_holm", "binom_p", "a_share_ci"} <= set(
        summary["pairs"][0])
    assert summary["figures"] == ["preferences.png", "classes.png", "workers.png"]
    assert all((out / name).stat().st_size > 1000 for name in summary["figures"])
    assert (out / "workers.csv").read_text().startswith("worker,answers,none_share,median_work_time,left_share")
    assert (out / "items.csv").read_text().startswith("item,image,label,left,right,answers,alg1,alg2,none\n")
    assert "### Models shown" in result.output and "a / equally / b of" in result.output


def test_each_experiment_of_the_spec_has_its_command_and_folder(tmp_path, monkeypatch):
    runner.invoke(app, ["study", "simulate", "--images", "5", "--out", str(tmp_path), "--no-power"])
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["analyze", "exp1_heatmap", "exp1_results.csv", "--bootstrap", "0", "--no-plots",
                                 "--preprocessed", "pre.csv"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "analysis" / "exp1_heatmap" / "summary.json").is_file()
    assert result.output.strip().endswith(f"to {Path('analysis') / 'exp1_heatmap'}; pre.csv")
    assert (tmp_path / "pre.csv").read_text().startswith("HITId,WorkerId,Input.image_url,Answer.algorithms.alg1,")
    result = runner.invoke(app, ["analyze", "exp1", "exp1_results.csv", "--preprocessed", "."])
    assert result.exit_code == 2 and "Invalid value for '--preprocessed': file '.' is a directory." in result.output


def test_simulate_then_analyze_exp2(tmp_path):
    result = runner.invoke(app, ["study", "simulate", "--experiment", "exp2", "--images", "20", "--out",
                                 str(tmp_path / "sim")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "analysis"
    result = runner.invoke(app, ["analyze", "exp2", str(tmp_path / "sim" / "exp2_results.csv"), "-o", str(out),
                                 "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"nonpruned", "2pruned", "32pruned"}
    assert {"n", "correct", "accuracy", "none"} <= set(summary["models"]["2pruned"])
    assert len(summary["confusion"]["models"]["32pruned"][0]) == 11
    assert "confusion_32pruned.png" in summary["figures"] and (out / "confusion_32pruned.png").exists()
    assert "confusion_pooled.png" in summary["figures"] and len(summary["confusion"]["pooled"]) == 10
    assert "### Confusion, all models" in result.output and "all models (correct/answers)" in result.output


def test_errors_are_one_line_with_exit_status_2(tmp_path):
    runner.invoke(app, ["study", "simulate", "--images", "5", "--out", str(tmp_path), "--no-power"])
    result = runner.invoke(app, ["analyze", "exp2", str(tmp_path / "exp1_results.csv"), "-o", str(tmp_path / "a")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'exp1_results.csv'}: has Answer.algorithms.* columns: these are exp1 results, "
        "use `prunexplain analyze exp1`"
    ]
    result = runner.invoke(app, ["analyze", "exp1", str(tmp_path / "exp1_results.csv"), "--repeated-items", "all"])
    assert result.exit_code == 2 and "--repeated-items: Input should be 'keep', 'first' or 'drop'" in result.output


def test_analysis_and_simulation_import_no_torch():
    code = ("import sys, prunexplain.cli; from prunexplain.analysis import load, stats, stage, plots; "
            "from prunexplain.study import simulate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
