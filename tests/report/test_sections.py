from prunexplain.config import ReportSettings
from prunexplain.report.page import render_section
from prunexplain.report.sections import metrics_section, pruning_section
from prunexplain.runs import Run, write_csv, write_text


def _metrics(run: Run, sanity: dict[tuple[str, float], float]) -> None:
    rows = [{"method": method, "rate": rate, "metric": metric, "mean": mean, "ci_low": mean - 0.1,
             "ci_high": mean + 0.1, "n": 4}
            for (method, rate), value in sanity.items()
            for metric, mean in (("entropy", 0.5), ("sanity_spearman_all_layers", value))]
    write_csv(run.metrics, rows)


def test_models_whose_maps_survive_randomisation_are_flagged(tmp_path):
    run = Run(tmp_path)
    _metrics(run, {("dense", 1.0): 0.1, ("magnitude", 2.0): 0.2, ("magnitude", 4.0): 0.9})
    body = render_section(metrics_section(run, ReportSettings()))
    assert body.count('class="bad"') == 1 and "Sanity check failed by magnitude x4" in body
    assert "<th>dense</th><th>x2</th><th>x4</th>" in body  # the dense model starts every method's row
    assert 'title="95 % interval 0.800 to 1.000, 4 images"' in body
    write_text(run.config, "[evaluate]\nsanity_threshold = 0.95\n")
    body = render_section(metrics_section(run, ReportSettings()))
    assert 'class="bad"' not in body and "Sanity check passed by every model" in body


def test_the_dense_row_of_the_pruning_table_is_named(tmp_path):
    run = Run(tmp_path)
    rows = [{"sparsity": rate, "measured_rate_scope": rate, "measured_rate_model": rate / 2,
             "nonzero_params": 1e6 / rate, "test_top1_accuracy": 0.9, "test_top5_accuracy": 1.0,
             "accuracy_before_finetune": "-"} for rate in (1, 2)]
    write_csv(run.prune_results("magnitude"), rows)
    body = render_section(pruning_section(run, ReportSettings()))
    assert "<td>1 (dense)</td>" in body and "<td>1,000,000</td>" in body and "<td>90.0 %</td>" in body
    assert "figure" not in body  # no prune/accuracy.png: the table alone
