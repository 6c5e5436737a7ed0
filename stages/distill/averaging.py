"""An exponential moving average of the student's weights: the student that is evaluated and shipped.

Without validation data nothing may pick a "best" student, so the last one ships. The synthetic
batches change every step and the last student carries the noise of the last few of them; the
average over the recent trajectory carries less. It is still a function of the run alone (no data,
no selection): the moving average of the last weights, updated after every student step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, student: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        # Trainable like any student (the quantization stage fine-tunes it); updated under no_grad.
        self.model = copy.deepcopy(student).eval()

    def _rate(self) -> float:
        # Early on the average would be dominated by the random initial weights; a shorter horizon at
        # first (the update count's own 1/n-like rate) lets it follow the student until `decay` takes over.
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        step = 1.0 - self._rate()
        for p_avg, p_cur in zip(self.model.parameters(), student.parameters()):
            p_avg.lerp_(p_cur.detach(), step)
        # BatchNorm statistics are averaged too: statistics of the last weights do not fit averaged
        # weights once the weights move fast (a high learning rate); counters are taken as they are.
        for b_avg, b_cur in zip(self.model.buffers(), student.buffers()):
            if b_avg.is_floating_point():
                b_avg.lerp_(b_cur, step)
            else:
                b_avg.copy_(b_cur)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
