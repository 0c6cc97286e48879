"""A learning-rate schedule that knows the run's time budget (``scheduler=cosine_budget``).

A run capped by ``trainer.max_time`` on a machine slower than planned stops before
``max_epochs``; an epoch- or step-based cosine then leaves it at a high learning rate, with the
mean still noisy. :class:`BudgetCosineLR` anneals over whichever budget ends first, so the rate
reaches ``eta_min`` when the steps run out or when the time does.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch


class BudgetCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Cosine annealing over ``total_steps`` optimizer steps or ``max_seconds``, whichever ends first.

    Stepped after every optimizer step (``interval: step``). The rate is
    ``eta_min + (base − eta_min) · ½ (1 + cos(π p))`` with progress
    ``p = min(1, max(step / total_steps, elapsed / max_seconds))``.

    Args:
        optimizer: the wrapped optimizer.
        total_steps: optimizer steps of the whole run (``auto`` in the config: the trainer's
            estimate from ``max_epochs``).
        max_seconds: time budget in seconds (``auto``: what ``trainer.max_time`` leaves at the
            start of fitting; ``None``: steps only, a plain step-wise cosine).
        eta_min: final learning rate.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, max_seconds: float | None = None,
                 eta_min: float = 0.0, last_epoch: int = -1, clock: Callable[[], float] = time.monotonic):
        if int(total_steps) < 1 or (max_seconds is not None and float(max_seconds) <= 0):
            raise ValueError(f"total_steps must be >= 1 and max_seconds > 0, got {total_steps}, {max_seconds}")
        self.total_steps = int(total_steps)
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.eta_min = float(eta_min)
        self._clock = clock
        self._t0 = clock()
        self._elapsed_before = 0.0  # seconds spent before a resume
        super().__init__(optimizer, last_epoch)

    def elapsed(self) -> float:
        return self._elapsed_before + self._clock() - self._t0

    def progress(self) -> float:
        p = max(self.last_epoch, 0) / self.total_steps
        if self.max_seconds is not None:
            p = max(p, self.elapsed() / self.max_seconds)
        return min(p, 1.0)

    def get_lr(self) -> list[float]:
        f = 0.5 * (1.0 + math.cos(math.pi * self.progress()))
        return [self.eta_min + (base - self.eta_min) * f for base in self.base_lrs]

    def state_dict(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_clock", "_t0")}
        state["_elapsed_before"] = self.elapsed()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)
        self._t0 = self._clock()
