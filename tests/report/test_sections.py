import json

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


def test_the_meta_evaluation_shows_one_table_per_explainer(tmp_path):
    run = Run(tmp_path)
    _metrics(run, {("dense", 1.0): 0.1, ("magnitude", 2.0): 0.2})
    assert "meta-evaluation" not in render_section(metrics_section(run, ReportSettings()))  # evaluated before it
    write_csv(run.meta_evaluation, [
        {"explainer": explainer, "metric": metric, "better": better, "noise_resilience": resilience,
         "agreement": 0.25, "least_agreeing": least, "least_agreement": -0.5}
        for explainer in ("gradcam", "saliency")
        for metric, better, resilience, least in (("deletion_auc", "lower", 0.875, "gini"),
                                                  ("gini", "", "nan", "deletion_auc"))])
    body = render_section(metrics_section(run, ReportSettings()))
    assert "meta-evaluation" in body and body.count("<h4>") == 2
    assert "<td>deletion auc</td><td>lower</td><td>0.875</td><td>0.250</td><td>gini (-0.500)</td>" in body
    assert "<td>gini</td><td>no direction</td><td>-</td>" in body


def test_a_model_whose_maps_survive_the_top_layers_randomisation_alone_is_flagged(tmp_path):
    run = Run(tmp_path)
    rows = [{"method": method, "rate": rate, "metric": metric, "mean": mean, "ci_low": mean, "ci_high": mean, "n": 4}
            for method, rate, top in (("dense", 1.0, 0.2), ("magnitude", 2.0, 0.8))
            for metric, mean in (("sanity_spearman_top_layer", top), ("sanity_spearman_all_layers", 0.1))]
    write_csv(run.metrics, rows)
    body = render_section(metrics_section(run, ReportSettings()))
    assert "Sanity check failed by magnitude x2" in body and body.count('class="bad"') == 1


def test_collapsed_models_are_named_in_the_metrics_tables(tmp_path):
    run = Run(tmp_path)
    _metrics(run, {("dense", 1.0): 0.1, ("magnitude", 2.0): 0.2, ("magnitude", 32.0): 0.2})
    write_text(run.verdict, json.dumps({"collapsed": {"magnitude": [32.0]}}))
    body = render_section(metrics_section(run, ReportSettings()))
    assert "<th>dense</th><th>x2</th><th>x32 (collapsed)</th>" in body
