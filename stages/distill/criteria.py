"""Loss terms for data-free distillation, each a small pure function or a hook.

Generator objective (weighted sum, each switchable by a zero weight):
  adversarial  teacher-student disagreement (Jensen-Shannon, as in PRE-DFKD), maximised
  bn           distance of batch statistics to the teacher's BatchNorm running statistics (DeepInversion)
  balance      negative entropy of the batch-mean teacher prediction: low when classes are balanced (DAFL)
  onehot       cross-entropy of the teacher's output with its own argmax: confident samples (DAFL)
  activation   negative mean magnitude of the teacher's penultimate features (DAFL)
  diversity    contrastive repulsion of the teacher's features of a batch from each other and from recent
               batches (CMI's idea, without its learnt projection)

`balance` and `onehot` take an optional class group: with one, they steer the generator to those classes
only (a benchmark's stress that measures forgetting; see engine.distill's `steer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.teacher import batchnorm_statistics


def js_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 3.0) -> torch.Tensor:
    """Jensen-Shannon divergence between softened predictions, in [0, log 2]."""
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp_min(1e-8)
    kl_pm = (p * (p.clamp_min(1e-8).log() - m.log())).sum(1)
    kl_qm = (q * (q.clamp_min(1e-8).log() - m.log())).sum(1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def l1_disagreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    return (student_logits - teacher_logits).abs().mean()


def adversarial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The generator *minimises* this, so it is the negated disagreement."""
    return -js_divergence(student_logits, teacher_logits)


def kd_loss(kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    if kind == "l1":
        return l1_disagreement(student_logits, teacher_logits)
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def class_balance(teacher_logits: torch.Tensor, classes: list[int] | None = None) -> torch.Tensor:
    """sum p log p of the batch-mean prediction: minimal (-log K) when all K classes appear equally.
    With `classes`, the prediction among those classes only: balanced within the group."""
    logits = teacher_logits if classes is None else teacher_logits[:, classes]
    p = F.softmax(logits, dim=1).mean(0).clamp_min(1e-8)
    return (p * p.log()).sum()


def onehot(teacher_logits: torch.Tensor, classes: list[int] | None = None) -> torch.Tensor:
    """Cross-entropy with the teacher's most likely class; with `classes`, its most likely class of that
    group, so every sample is pushed into the group and confidently so."""
    if classes is None:
        return F.cross_entropy(teacher_logits, teacher_logits.argmax(1))
    group = torch.as_tensor(classes, device=teacher_logits.device)
    return F.cross_entropy(teacher_logits, group[teacher_logits[:, group].argmax(1)])


def activation(features: torch.Tensor | None) -> torch.Tensor:
    if features is None:
        return torch.zeros(())
    return -features.abs().mean()


class BNStatistics:
    """Forward hooks on every BatchNorm of a (frozen, eval-mode) network.

    After a forward pass, `loss()` is the distance of each layer's batch statistics (on its input) to its
    running statistics, averaged over layers (DeepInversion's feature prior). Each layer's distance is in that
    layer's own units: the RMS over channels of the mean's shift in running standard deviations, plus the RMS
    of the log ratio of the variances. Raw distances summed over layers grow with channel count, activation
    scale and depth, and on a deep or wide teacher swamp every other generator term, which then cannot make
    the teacher see every class; in these units the prior weighs about the same on any teacher.
    """

    def __init__(self, model: nn.Module):
        self.layers = batchnorm_statistics(model)
        self._terms: list[torch.Tensor] = []
        self.active = False  # only the generator step pays for the statistics
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not self.active:
            return
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        # E[x^2] - mean^2: one elementwise product over the activations instead of a centred copy and its power
        # (the widest layer's activations dominate a generator step); BatchNorm inputs are centred enough that
        # the difference keeps float32 precision, and the clamp absorbs rounding below zero
        var = ((x * x).mean(dims) - mean * mean).clamp_min(0.0)
        running_var = module.running_var + module.eps
        shift = (mean - module.running_mean) / running_var.sqrt()
        spread = torch.log((var + module.eps) / running_var)
        self._terms.append(shift.pow(2).mean().sqrt() + spread.pow(2).mean().sqrt())

    def __enter__(self) -> "BNStatistics":
        self._terms, self.active = [], True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def loss(self) -> torch.Tensor:
        if not self._terms:
            return torch.zeros(())
        total = torch.stack(self._terms).mean()
        self._terms = []
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class PenultimateFeatures:
    """Captures the input of the network's last Linear layer: its penultimate features, without
    asking the model for a special forward signature."""

    def __init__(self, model: nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.features: torch.Tensor | None = None
        self._handle = linears[-1].register_forward_pre_hook(self._hook) if linears else None

    def _hook(self, module: nn.Module, inputs: tuple) -> None:
        self.features = inputs[0]

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()


class FeatureDiversity:
    """Pushes the teacher's features of each generated sample away from the rest of its batch and from a bank
    of the last `size` samples' features: the logsumexp of its cosine similarities to them at `temperature`,
    averaged over the batch. An adversarial generator otherwise settles on the few regions where the student
    is currently wrong and re-makes them round after round; the bank makes a sample like last rounds' ones
    cost, so the student sees more of the teacher's feature space. The bank holds detached features only."""

    def __init__(self, size: int = 2048, temperature: float = 0.1):
        self.size, self.temperature = size, temperature
        self.bank: torch.Tensor | None = None  # unit vectors, newest last

    def loss(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features.flatten(1), dim=1)
        bank = self.bank if self.bank is not None and self.bank.shape[1] == f.shape[1] else f[:0].detach()
        others = torch.cat([f, bank.to(f.device)])
        if len(others) < 2:
            return torch.zeros((), device=f.device)
        sim = (f @ others.T) / self.temperature
        itself = torch.zeros_like(sim, dtype=torch.bool)
        itself[:, :len(f)] = torch.eye(len(f), dtype=torch.bool, device=f.device)
        value = torch.logsumexp(sim.masked_fill(itself, float("-inf")), dim=1).mean()
        self.bank = torch.cat([bank, f.detach()])[-self.size:]
        return value

    def state_dict(self) -> dict:
        return {"bank": self.bank if self.bank is not None else torch.zeros(0, 0)}

    def load_state_dict(self, state: dict) -> None:
        bank = state["bank"]
        self.bank = bank if bank.numel() else None


def generator_objective(weights: dict[str, float], terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted sum of the named terms; a zero weight switches a term off."""
    total = torch.zeros((), device=next(iter(terms.values())).device)
    for name, value in terms.items():
        w = weights.get(name, 0.0)
        if w:
            total = total + w * value
    return total
