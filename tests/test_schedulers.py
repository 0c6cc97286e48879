"""The time-budget cosine schedule (``scheduler=cosine_budget``), with a fake clock."""

from __future__ import annotations

import math

import pytest
import torch

from cosmoinfer.training.schedulers import BudgetCosineLR


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _run(sched, opt, clock, steps, dt):
    lrs = []
    for _ in range(steps):
        opt.step()
        clock.t += dt
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_without_a_time_budget_it_is_the_stepwise_cosine():
    clock, opt, ref_opt = Clock(), _opt(), _opt()
    sched = BudgetCosineLR(opt, total_steps=50, eta_min=0.01, clock=clock)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=50, eta_min=0.01)
    lrs = _run(sched, opt, clock, 50, dt=7.0)  # time passing changes nothing
    ref_lrs = _run(ref, ref_opt, Clock(), 50, dt=0.0)
    assert lrs == pytest.approx(ref_lrs, abs=1e-9)
    assert lrs[-1] == pytest.approx(0.01)


def test_the_time_budget_ends_the_schedule_when_it_runs_out_first():
    clock, opt = Clock(), _opt()
    sched = BudgetCosineLR(opt, total_steps=1000, max_seconds=20.0, eta_min=0.0, clock=clock)
    lrs = _run(sched, opt, clock, 20, dt=1.0)  # 1 s per step: time is the binding budget
    assert lrs[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))  # half the time: half the cosine
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # a fast machine: the steps run out first and the time does not matter
    clock, opt = Clock(), _opt()
    sched = BudgetCosineLR(opt, total_steps=10, max_seconds=1e6, clock=clock)
    assert _run(sched, opt, clock, 10, dt=1.0)[-1] == pytest.approx(0.0, abs=1e-12)


def test_a_resumed_schedule_continues_from_the_time_already_spent():
    clock, opt = Clock(), _opt()
    sched = BudgetCosineLR(opt, total_steps=1000, max_seconds=20.0, clock=clock)
    _run(sched, opt, clock, 5, dt=1.0)
    state = sched.state_dict()
    assert state["_elapsed_before"] == pytest.approx(5.0) and "_clock" not in state
    clock2, opt2 = Clock(), _opt()
    clock2.t = 5000.0  # another process, another clock origin
    resumed = BudgetCosineLR(opt2, total_steps=1000, max_seconds=20.0, clock=clock2)
    resumed.load_state_dict(state)
    assert resumed.progress() == pytest.approx(5.0 / 20.0)
    lr_next = _run(resumed, opt2, clock2, 1, dt=1.0)[0]
    assert lr_next == pytest.approx(0.5 * (1 + math.cos(math.pi * 6.0 / 20.0)))


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="total_steps"):
        BudgetCosineLR(_opt(), total_steps=0)
    with pytest.raises(ValueError, match="max_seconds"):
        BudgetCosineLR(_opt(), total_steps=10, max_seconds=0)
