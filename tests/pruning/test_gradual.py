import pytest
import torch
from torch import nn

from prunexplain.config import UserError
from prunexplain.models import load_checkpoint
from prunexplain.pruning.gradual import prune_gradually, ramp_rates
from prunexplain.pruning.masks import count_nonzero
from prunexplain.pruning.methods import compute_masks, get_method, prunable_weights
from prunexplain.pruning.schedule import prune_stage
from prunexplain.runs import ModelKey
from tests.conftest import tiny_settings
from tests.pruning.conftest import copy_run


def test_the_ramp_follows_zhu_and_guptas_cubic_and_ends_on_the_rate():
    # s_j = s_f + (s_i - s_f)(1 - j/n)^3 from rate 2 (s_i = 0.5) to rate 8 (s_f = 0.875) in n = 4 steps
    expected = [0.875 + (0.5 - 0.875) * (1 - j / 4) ** 3 for j in (1, 2, 3)]
    rates = ramp_rates(2.0, 8.0, 4)
    assert [1 - 1 / r for r in rates[:3]] == pytest.approx(expected, abs=1e-12)
    assert rates[-1] == 8.0 and rates == sorted(rates) and rates[0] > 2.0
    assert ramp_rates(1.0, 4.0, 1) == [4.0]
    # from the dense model: the first step prunes the most, the last the least
    steps = [1 - 1 / r for r in [1.0, *ramp_rates(1.0, 16.0, 5)]]
    gains = [b - a for a, b in zip(steps, steps[1:])]
    assert gains == sorted(gains, reverse=True)


def test_masks_rise_every_frequency_steps_and_hold_in_between():
    """A real training loop on a small layer: after j·Δt steps the masks are those of the j-th ramp rate,
    exactly, and pruned weights stay zero through the optimiser steps between."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(1, 3, 6, 6))
    weights = prunable_weights(model, "conv")
    method, generator = get_method("local_magnitude_unstructured"), torch.Generator().manual_seed(0)
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    rates, frequency, seen, calls = ramp_rates(1.0, 8.0, 3), 4, [], []

    def prune_to(current, rate, j):
        calls.append((rate, j))
        return compute_masks(method, weights, current, rate, generator)

    def train(steps, after_step):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(steps):
            optimizer.zero_grad()
            model(torch.rand(4, 3, 6, 6)).sum().backward()
            optimizer.step()
            after_step()
            seen.append(count_nonzero(model, weights)["measured_rate_scope"])

    final = prune_gradually(model, masks, rates, frequency, prune_to, train)
    assert calls == [(rate, j) for j, rate in enumerate(rates, 1)]
    assert len(seen) == 12
    for step, measured in enumerate(seen, 1):
        in_force = ([1.0, *rates])[step // frequency]
        assert measured == pytest.approx(in_force, rel=2e-2)  # 216 weights: within one weight of the rate
    assert seen[-1] == pytest.approx(8.0, rel=1e-9)
    assert int(final["0.weight"].sum()) == 216 // 8


def test_gradual_schedule_lands_on_each_rate_and_records_its_family(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    settings = tiny_settings(tmp_path, tiny_dataset, 'prune.methods=["local_magnitude_unstructured"]',
                             'prune.schedule=["iterative", "gradual"]', "prune.rates=[2, 8]", "prune.max_epochs=1",
                             "prune.gradual_steps=3", "prune.gradual_frequency=2")
    result = prune_stage(settings, run)
    rows = result.rows["local_magnitude_unstructured+gradual"]
    assert [float(r["measured_rate_scope"]) for r in rows[1:]] == pytest.approx([2, 8], rel=2e-3)
    assert {(r["criterion"], r["schedule"], r["retrain"]) for r in rows} == {
        ("local_magnitude_unstructured", "gradual", "finetune")}
    gradual, _ = load_checkpoint(run.checkpoint(ModelKey.pruned("local_magnitude_unstructured+gradual", 8)))
    iterative, _ = load_checkpoint(run.checkpoint(ModelKey.pruned("local_magnitude_unstructured", 8)))
    # the ramp trained between its pruning steps, so it kept other weights than one step to 8x
    assert any(not torch.equal(a != 0, b != 0) for a, b in zip(gradual.parameters(), iterative.parameters()))


def test_gradual_schedule_refuses_n_m_methods_before_any_work(tmp_path, tiny_dataset, trained):
    run = copy_run(trained, tmp_path)
    settings = tiny_settings(tmp_path, tiny_dataset, 'prune.methods=["local_magnitude_nm_semistructured"]',
                             'prune.schedule=["gradual"]', "prune.rates=[2]")
    with pytest.raises(UserError, match="prune.schedule: gradual passes through rates"):
        prune_stage(settings, run)
    assert not (run.root / "prune").exists()
