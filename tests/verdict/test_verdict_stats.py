import numpy as np
import pytest

from prunexplain.verdict.stats import compare, hierarchical_means, holm

RATES = [2.0, 4.0, 8.0, 16.0]


def _line(means_by_rate: dict[float, float], rng, images=200, noise=0.05, collapsed=(), **options):
    differences = {rate: [mean + noise * rng.standard_normal(images)] for rate, mean in means_by_rate.items()}
    return compare("energy", differences, 0.05, set(collapsed), **options)


def test_a_metric_that_drops_at_8x_breaks_there_and_holds_to_4x():
    line = _line({2.0: 0.0, 4.0: -0.01, 8.0: -0.12, 16.0: -0.2}, np.random.default_rng(0))
    assert line.holds_to == 4.0 and line.breaks_at.rate == 8.0
    assert line.breaks_at.ci_high < -0.05 < line.comparisons[1].bound  # 8x clearly worse, 4x clearly within


def test_a_flat_metric_never_breaks_and_a_collapsed_model_always_does():
    flat = _line(dict.fromkeys(RATES, 0.0), np.random.default_rng(1))
    assert flat.breaks_at is None and flat.holds_to == 16.0
    collapsed = _line(dict.fromkeys(RATES, 0.0), np.random.default_rng(1), collapsed=[8.0, 16.0])
    assert collapsed.holds_to == 4.0 and collapsed.breaks_at.rate == 8.0 and collapsed.breaks_at.collapsed


def test_pairing_keeps_a_noisy_metric_from_breaking_where_the_models_intervals_overlap():
    """Images differ a lot (between-image deviation 0.3), a pruned map scores as its dense map up to a
    small change: each model's own interval is wide and they overlap, but the paired difference is
    tight, and non-inferior."""
    rng = np.random.default_rng(2)
    dense = 0.5 + 0.3 * rng.standard_normal(100)
    pruned = {rate: dense - 0.01 + 0.02 * rng.standard_normal(100) for rate in RATES}
    interval = lambda v: (v.mean() - 2 * v.std() / 10, v.mean() + 2 * v.std() / 10)  # noqa: E731
    low, high = interval(dense)
    assert all(interval(v)[1] > low and interval(v)[0] < high for v in pruned.values())
    line = compare("energy", {rate: [v - dense] for rate, v in pruned.items()}, 0.05, set())
    assert line.breaks_at is None


def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(3)
    images = [0.05 * rng.standard_normal(100) for _ in range(4)]
    agreeing = hierarchical_means(images, 2000, seed=0)
    disagreeing = hierarchical_means([v + offset for v, offset in zip(images, (-0.1, 0.1, -0.05, 0.05))], 2000, seed=0)
    width = lambda means: np.subtract(*np.quantile(means, [0.975, 0.025]))  # noqa: E731
    assert width(disagreeing) > 3 * width(agreeing)


@pytest.mark.parametrize("seeds", [8])
def test_the_hierarchical_bootstrap_covers_the_true_mean_at_least_90_percent_of_the_time(seeds):
    """Simulated replicates: a seed effect (deviation 0.05) and image noise (0.2) around a true mean of 0;
    the 95 % percentile interval of the hierarchical bootstrap must cover 0 in at least 90 % of 400 runs."""
    rng = np.random.default_rng(4)
    covered = 0
    for run in range(400):
        replicates = [rng.normal(0.05 * rng.standard_normal(), 0.2, 40) for _ in range(seeds)]
        low, high = np.quantile(hierarchical_means(replicates, 400, seed=run), [0.025, 0.975])
        covered += low <= 0 <= high
    assert covered / 400 >= 0.90


def test_holm_adjusts_step_down_and_keeps_the_order():
    assert np.allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    assert np.allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])
    single = _line({2.0: -0.03, 4.0: -0.03}, np.random.default_rng(5), images=60, noise=0.05, correction="none")
    corrected = _line({2.0: -0.03, 4.0: -0.03}, np.random.default_rng(5), images=60, noise=0.05)
    assert all(c.p_adjusted >= c.p for c in corrected.comparisons)
    assert [c.p for c in single.comparisons] == [c.p_adjusted for c in single.comparisons]
