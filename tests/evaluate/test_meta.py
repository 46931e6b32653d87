import numpy as np

from prunexplain.evaluate.meta import agreement_matrix, meta_rows, noise_resilience

RATES = np.array([1, 2, 4, 8, 16, 32], float)


def test_a_metric_that_keeps_its_ranking_under_noise_is_resilient_and_one_that_does_not_is_not():
    rng = np.random.default_rng(0)
    clean = {f"model{i}": rng.random(200) for i in range(3)}
    steady = {m: v + 0.01 * rng.standard_normal(200) for m, v in clean.items()}
    redrawn = {m: rng.random(200) for m in clean}
    assert noise_resilience(clean, steady) > 0.99
    assert abs(noise_resilience(clean, redrawn)) < 0.15
    constant = {m: np.ones(200) for m in clean}  # e.g. every pointing-game hit 1: no ranking to keep
    assert np.isnan(noise_resilience(constant, constant))


def test_agreement_reads_every_metric_the_better_way_up():
    """Deletion AUC rises (worse) as insertion falls (worse): oppositely signed, they agree fully."""
    means = {"deletion_auc": RATES / 64, "insertion_auc": 1 - RATES / 64, "gini": RATES}
    matrix = agreement_matrix(means)
    assert matrix[0, 1] == matrix[1, 0] == 1.0
    assert matrix[0, 2] == -1.0  # Gini has no better direction: it enters as it is
    assert np.allclose(np.diag(matrix), 1)


def test_a_metric_missing_for_some_models_agrees_over_the_others_and_rows_name_the_least_agreeing():
    spearman = np.array([np.nan, 0.9, 0.8, 0.6, 0.4, 0.1])  # the dense model has no agreement with itself
    means = {"spearman_to_dense": spearman, "energy_pointing_game": 0.5 - RATES / 100,
             "deletion_auc": 0.2 - RATES / 200}  # falls as the maps worsen: a disagreeing metric
    rows = {row.metric: row for row in meta_rows("gradcam", {}, {}, means)}
    assert rows["spearman_to_dense"].least_agreeing == "deletion_auc"
    assert np.isclose(rows["spearman_to_dense"].least_agreement, -1.0)
    assert np.isclose(rows["energy_pointing_game"].agreement, 0.0)  # +1 with Spearman, -1 with deletion
    assert rows["deletion_auc"].better == "lower" and np.isnan(rows["deletion_auc"].noise_resilience)
