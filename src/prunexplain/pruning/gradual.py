"""Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune"): the sparsity rises along a cubic
ramp while the model trains, fast at first, when many redundant weights are left, slowly at the end.

From sparsity s_i (the rate before) to s_f (the step's rate) in n pruning steps, Δt optimiser steps
apart: after j·Δt steps the masks are recomputed to s_j = s_f + (s_i - s_f)(1 - j/n)^3, j = 1..n, so the
last lands exactly on the step's rate. Zhu & Gupta start from s_i = 0; each step of a schedule here
starts from the rate before it, so a schedule of one rate is theirs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from prunexplain.pruning.masks import apply_masks
from prunexplain.pruning.methods import Masks


def ramp_rates(start: float, end: float, steps: int) -> list[float]:
    """The compression rates 1 / (1 - s_j) of the n pruning steps from rate `start` to `end`; the last is
    `end` itself, never a rounding of it."""
    initial, final = 1 - 1 / start, 1 - 1 / end
    sparsities = [final + (initial - final) * (1 - j / steps) ** 3 for j in range(1, steps)]
    return [1 / (1 - s) for s in sparsities] + [end]


def prune_gradually(
    model: nn.Module, masks: Masks, rates: list[float], frequency: int,
    prune_to: Callable[[Masks, float, int], Masks], train: Callable[[int, Callable[[], None]], None],
) -> Masks:
    """Train for len(rates)·`frequency` optimiser steps with `train(steps, after_step)`, pruning to the
    next of `rates` after every `frequency` steps with `prune_to(masks, rate, j)` (j = 1..n); the masks
    in force are re-applied after every step. Returns the last step's masks."""
    state = {"masks": masks, "steps": 0}

    def after_step() -> None:
        state["steps"] += 1
        done, due = divmod(state["steps"], frequency)
        if due == 0:
            state["masks"] = prune_to(state["masks"], rates[done - 1], done)
        apply_masks(model, state["masks"])

    train(len(rates) * frequency, after_step)
    return state["masks"]
