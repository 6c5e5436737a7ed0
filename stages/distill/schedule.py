"""The student's learning rate over a distillation: a cosine from its initial value to zero over the planned
iterations, and a cooldown when the run is to end before its plan.

A student stopped at a high learning rate carries the noise of its last steps, which annealing removes. So when
probe agreement has stopped improving, the run does not stop at once: it anneals from the current rate to zero
over a short cooldown, then stops.
"""

from __future__ import annotations

import math

import torch


class Schedule:
    def __init__(self, opt: torch.optim.Optimizer, planned: int, constant: bool = False):
        self.opt = opt
        self.base = [g["lr"] for g in opt.param_groups]
        self.planned, self.constant = planned, constant
        self.t = 0
        self.cool_start: int | None = None
        self.cool_length = 0
        self.cool_from = 1.0

    def factor(self) -> float:
        """The learning rate now, relative to the initial one."""
        if self.constant:
            return 1.0
        if self.cool_start is not None:
            done = min(1.0, (self.t - self.cool_start) / self.cool_length)
            return self.cool_from * 0.5 * (1.0 + math.cos(math.pi * done))
        # held at its floor past the plan: a budget's plan may end before the run does
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, self.t / max(1, self.planned))))

    def step(self) -> None:
        self.t += 1
        self._apply()

    def replan(self, planned: int) -> None:
        """A new end (a time budget's), from the iterations done so far; the cosine continues toward it."""
        self.planned = planned

    def cool_down(self, length: int) -> None:
        """Anneal from the current rate to zero over the next `length` iterations."""
        self.cool_from, self.cool_start, self.cool_length = self.factor(), self.t, max(1, length)

    @property
    def cooling(self) -> bool:
        return self.cool_start is not None

    @property
    def cooled(self) -> bool:
        return self.cool_start is not None and self.t >= self.cool_start + self.cool_length

    def _apply(self) -> None:
        f = self.factor()
        for group, base in zip(self.opt.param_groups, self.base):
            group["lr"] = base * f

    def state_dict(self) -> dict:
        return {"t": self.t, "planned": self.planned, "base": self.base, "cool_start": self.cool_start,
                "cool_length": self.cool_length, "cool_from": self.cool_from}

    def load_state_dict(self, state: dict) -> None:
        if "t" not in state:  # a checkpoint written with torch's CosineAnnealingLR
            state = {"t": state["last_epoch"], "planned": state["T_max"], "base": state["base_lrs"],
                     "cool_start": None, "cool_length": 0, "cool_from": 1.0}
        self.t, self.planned, self.base = int(state["t"]), int(state["planned"]), list(state["base"])
        self.cool_start, self.cool_length = state["cool_start"], int(state["cool_length"])
        self.cool_from = float(state["cool_from"])
        self._apply()
