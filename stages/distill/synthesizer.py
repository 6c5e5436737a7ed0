"""Synthesizers: where the student's training inputs come from, behind one interface.

A synthesizer owns its generator and optimiser and the hooks it needs on the teacher. Each outer iteration
the loop calls `step(student, focus)` once (learn to make samples the teacher finds plausible and the student
gets wrong), then `sample(n)` for every student step. The criteria it combines live in criteria.py.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.distill import criteria
from stages.distill.config import DistillConfig
from stages.distill.networks import build_generator


class AdversarialSynthesizer:
    """PRE-DFKD's generator: one persistent network from noise to inputs, trained against the student with the
    teacher's priors (BatchNorm statistics, class balance, confidence, activation)."""

    def __init__(self, cfg: DistillConfig, teacher: nn.Module, shape: tuple[int, ...], device: torch.device):
        self.latent_dim = cfg.latent_dim
        self.teacher = teacher
        self.generator = build_generator(cfg.latent_dim, shape, width=cfg.generator_width).to(device)
        self.trainer: nn.Module = self.generator  # a DDP wrapper under torchrun
        self.opt = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_generator, betas=(0.5, 0.999))
        self.adversarial = cfg.adversarial
        self.bn = criteria.BNStatistics(teacher)
        self.features = criteria.PenultimateFeatures(teacher)
        self.weights = {"adversarial": cfg.w_adv, "bn": cfg.w_bn if self.bn.layers else 0.0,
                        "balance": cfg.w_balance, "onehot": cfg.w_onehot, "activation": cfg.w_activation}
        self.device = device

    def step(self, student: nn.Module, batch: int, focus: list[int] | None = None) -> torch.Tensor:
        """One generator update on a fresh batch; returns its loss."""
        self.generator.train()
        student.eval()
        x = self.trainer(torch.randn(batch, self.latent_dim, device=self.device))
        with self.bn:
            t_logits = self.teacher(x)
            bn_loss = self.bn.loss()
        terms = {
            "adversarial": criteria.adversarial_loss(self.adversarial, student(x), t_logits),
            "bn": bn_loss,
            "balance": criteria.class_balance(t_logits, focus),
            "onehot": criteria.onehot(t_logits, focus),
            "activation": criteria.activation(self.features.features),
        }
        loss = criteria.generator_objective(self.weights, terms)
        if not torch.isfinite(loss):
            return loss  # the loop stops the run on it; no update from a broken loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.generator(torch.randn(n, self.latent_dim, device=self.device))

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["opt"])

    def close(self) -> None:
        """Take the hooks off the teacher."""
        self.bn.remove()
        self.features.remove()
