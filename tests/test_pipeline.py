from prunexplain.pipeline import run_pipeline
from prunexplain.runs import Run
from tests.conftest import tiny_settings


def test_run_skips_finished_stages_and_reruns_changed_ones(tmp_path, tiny_dataset):
    settings = tiny_settings(tmp_path, tiny_dataset)
    run = Run(settings.run_dir)
    report = run_pipeline(settings, run)
    assert "train: test top-1" in report and str(run.root) in report
    assert "local_random_unstructured: test top-1 1x" in report and run.path("prune", "accuracy.png").exists()
    assert "explain: 5 models x 4 images" in report and run.path("explain", "dense", "maps.npy").exists()
    assert "evaluate: " in report and run.path("evaluate", "metrics.csv").exists()
    model = run.path("train", "model.pt")
    stamp = model.stat().st_mtime_ns
    again = run_pipeline(settings, run)
    assert "train: done (skipped)" in again and "prune: done (skipped)" in again
    assert model.stat().st_mtime_ns == stamp
    changed = tiny_settings(tmp_path, tiny_dataset, "train.epochs=1")
    report = run_pipeline(changed, run)
    assert "data: done (skipped)" in report and "train: test top-1" in report
    assert "prune: local_magnitude_unstructured" in report  # downstream of train: reruns too
    assert model.stat().st_mtime_ns != stamp
    assert "epochs = 1" in run.path("config.toml").read_text()
