"""A learning-rate schedule for a training time instead of an epoch count.

Fine-tuning from drawn lines is given minutes, not epochs: how many steps fit depends on the
CPU, the crop size and the other work on the machine. `BudgetSchedule` plans the number of
steps from the measured time per step (re-planned after every round, so a machine that slows
down still reaches the end of the schedule in time) and sets a warm-up then cosine learning
rate by step, as a step-based schedule would with that step count known in advance.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

WARMUP = 0.05  # share of the planned steps spent warming up
FINAL = 0.02  # the last learning rate, as a share of the peak


class BudgetSchedule:
    """Warm-up + cosine learning rate over the steps that fit in `minutes`.

    Args:
        optimizer: its param groups' `lr` is set before every step.
        lr: the peak learning rate.
        minutes: the training time, validation rounds included.
        first_plan: steps assumed before any step was timed (replaced after the first round).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, minutes: float, first_plan: int = 100) -> None:
        self.optimizer, self.lr, self.budget_s = optimizer, lr, minutes * 60.0
        self.steps_done, self.planned = 0, max(1, first_plan)
        self.started = time.monotonic()
        self.spent_before = 0.0  # seconds of earlier sessions (resume)
        self._set(0)

    @property
    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self.started

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget_s - self.elapsed)

    def restart_clock(self) -> None:
        """Count time from now (call when training starts, after data loading)."""
        self.started = time.monotonic()

    def factor(self, step: int) -> float:
        warmup = max(1, round(WARMUP * self.planned))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, self.planned - warmup))
        return FINAL + (1 - FINAL) * 0.5 * (1 + math.cos(math.pi * progress))

    def _set(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * self.factor(step)

    def step(self) -> None:
        """After an optimiser step: the learning rate of the next one."""
        self.steps_done += 1
        self._set(self.steps_done)

    def plan(self, seconds_per_step: float, round_overhead_s: float, steps_per_round: int) -> None:
        """Re-plan the total from the time a step and a round's validation take now."""
        per_round = seconds_per_step * steps_per_round + round_overhead_s
        rounds_left = math.floor(self.remaining / per_round) if per_round > 0 else 0
        self.planned = max(self.steps_done, self.steps_done + rounds_left * steps_per_round)
        self._set(self.steps_done)

    def finished(self, next_round_s: float) -> bool:
        """True when the planned steps are done or the next round would overrun the budget."""
        return self.steps_done >= self.planned or next_round_s > self.remaining

    @property
    def fraction(self) -> float:
        """Share of the budget spent (progress bars)."""
        return min(1.0, self.elapsed / self.budget_s) if self.budget_s else 1.0

    # the scheduler API the trainer saves and restores
    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done, "planned": self.planned, "spent": self.elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done, self.planned = int(state["steps_done"]), int(state["planned"])
        self.spent_before, self.started = float(state["spent"]), time.monotonic()
        self._set(self.steps_done)
