"""Replay memories share one interface, so `vae` and `none` run the same training loop.

  observe(x)  learn from the newest synthetic batch
  sample(n)   n replay samples, or None
  nbytes()    what the memory costs to keep (and, for the VAE, to ship)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.distill import criteria
from stages.distill.networks import VAE


class NoReplay:
    name = "none"

    def observe(self, x: torch.Tensor, *args, **kwargs) -> dict:
        return {}

    def sample(self, n: int) -> torch.Tensor | None:
        return None

    def nbytes(self) -> int:
        return 0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class VAEMemory:
    """Generative pseudo replay (PRE-DFKD): a VAE continually learns the stream of synthetic samples.

    - Reconstruction is measured in pixels and where it matters for distillation: in the teacher's
      response (logits).
    - Sampling draws latent codes from the paper's N(0, I) prior and is class-balanced: the codes take a
      gradient step towards confident, class-balanced teacher predictions while their moments stay near
      N(0, I).
    - The VAE rehearses on its own samples, so it does not forget earlier generator phases.
    """

    name = "vae"

    def __init__(self, vae: VAE, teacher: nn.Module, lr: float, kld_weight: float = 1e-3, z_steps: int = 1,
                 z_lr: float = 0.05, balanced: bool = True, rehearse: bool = True):
        self.vae, self.teacher = vae, teacher
        self.trainer: nn.Module = vae  # what `observe` trains through: the VAE, or its DDP wrapper under torchrun
        self.opt = torch.optim.Adam(vae.parameters(), lr=lr)
        self.kld_weight = kld_weight
        self.z_steps, self.z_lr = z_steps, z_lr
        self.balanced, self.rehearse = balanced, rehearse
        self.updates = 0

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def _balanced_latents(self, n: int) -> torch.Tensor:
        u = torch.randn(n, self.vae.latent_dim, device=self.device)
        if not self.balanced:
            return u
        u.requires_grad_(True)
        for _ in range(self.z_steps):
            logits = self.teacher(self.vae.decoder(u))
            moments = F.mse_loss(u.var(0), torch.ones_like(u[0])) + F.mse_loss(u.mean(0), torch.zeros_like(u[0]))
            loss = 5.0 * criteria.class_balance(logits) + criteria.onehot(logits) + moments
            (grad,) = torch.autograd.grad(loss, u)
            u = (u - self.z_lr * grad * n).detach().requires_grad_(True)  # x n: the losses are batch means
        return u.detach()

    def sample(self, n: int) -> torch.Tensor | None:
        if self.updates == 0 or n == 0:
            return None  # an untrained VAE replays noise, not memories
        was_training = self.vae.training
        self.vae.eval()
        z = self._balanced_latents(n)
        with torch.no_grad():
            x = self.vae.decoder(z)
        self.vae.train(was_training)
        return x

    def observe(self, x: torch.Tensor, logits: torch.Tensor | None = None, rehearsal: torch.Tensor | None = None,
                rehearsal_logits: torch.Tensor | None = None) -> dict:
        """Learn the newest batch `x`. `logits` (the teacher's on `x`) and a `rehearsal` batch of the VAE's
        own samples (with their teacher logits) may be handed in by the caller, who already computed them."""
        x = x.detach()
        if self.rehearse and self.updates:
            if rehearsal is None:
                rehearsal, rehearsal_logits = self.sample(max(1, x.shape[0] // 4)), None
            half = x.shape[0] // 2
            x = torch.cat([x[:half], rehearsal.detach()])  # rehearse own samples: nothing is forgotten
            if logits is not None:
                if rehearsal_logits is None:  # the teacher answers for the rehearsal only: the batch's are given
                    with torch.no_grad():
                        rehearsal_logits = self.teacher(rehearsal)
                logits = torch.cat([logits[:half], rehearsal_logits])
        self.vae.train()
        recon, mu, log_var = self.trainer(x)
        if logits is None:
            with torch.no_grad():
                logits = self.teacher(x)
        loss = F.l1_loss(recon, x) + F.l1_loss(self.teacher(recon), logits.detach())
        kld = torch.mean(-0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp(), dim=1))
        loss = loss + self.kld_weight * kld
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.updates += 1
        return {"vae_loss": float(loss.detach())}

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.vae.parameters()) + sum(
            b.numel() * b.element_size() for b in self.vae.buffers())

    def state_dict(self) -> dict:
        return {"vae": self.vae.state_dict(), "opt": self.opt.state_dict(), "updates": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        self.opt.load_state_dict(state["opt"])
        self.updates = int(state["updates"])
