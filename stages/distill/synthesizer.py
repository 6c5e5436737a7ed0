"""Synthesizers: where the student's training inputs come from, behind one interface.

A synthesizer owns its generator(s) and optimiser and the hooks it needs on the teacher. Each outer iteration
the loop calls `step(student, batch, focus)` once (learn to make samples the teacher finds plausible and the
student gets wrong; `synthesis_steps` generator updates), then `sample(n)` for every student step. All of them
minimise the same objective (criteria.py): adversarial disagreement, the teacher's BatchNorm statistics,
class balance, confidence, activation and, where the teacher has BatchNorm, feature diversity. Images are
read through a random translation of up to `max_shift` pixels (DeepInversion's jitter), so the generator
learns inputs the teacher reads alike when moved, as real ones are, rather than patterns it recognises at
one position only.

  adversarial  one persistent generator from noise to inputs (DFAD, PRE-DFKD).
  meta         a persistent meta-generator; each round a copy of it learns for a few steps and serves the
               round's samples, and the meta-weights move part of the way towards the copy (Reptile), so a
               round starts from weights that adapt fast (Fast-DFKD's idea).
  conditional  each sample asks for a class: a learned embedding per class goes through a "noisy layer" that is
               drawn afresh every round, then the generator; the teacher's cross-entropy to the asked class
               replaces the confidence term, and the fresh layer keeps rounds diverse (NAYER's idea).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from stages.distill import augment, criteria
from stages.distill.config import DistillConfig
from stages.distill.networks import ConditionalSampler, NoisyEmbedding, build_generator

def max_shift(shape: tuple[int, ...]) -> int:
    """The jitter for an input shape: a fourteenth of an image's shorter side, rounded down (two pixels on
    MNIST's 28), so none on images under 14 pixels, where one pixel is already a large move; none for inputs
    that are not images."""
    return min(shape[1:]) // 14 if len(shape) == 3 else 0


# The confidence term's share where the BatchNorm prior is on and a student learns from the samples. That prior
# holds samples near the teacher's data, so less pressure towards confident samples lets the generator also make
# the inputs the teacher is unsure of: a student that never sees the teacher's near-ties misses them on real
# inputs. Without the prior, confidence is what makes samples look like a class at all, and it stays whole.
EASED_CONFIDENCE = 0.3


class AdversarialSynthesizer:
    """PRE-DFKD's generator: one persistent network from noise to inputs, trained against the student with the
    teacher's priors. `shift` is the objective's jitter (max_shift); none for a model quantized as it is, whose
    calibration needs its own ranges, not a student's neighbourhood; with `for_student` False (no student learns
    from the samples) the objective also leaves out the student-only parts: no feature diversity, the whole
    confidence term."""

    def __init__(self, cfg: DistillConfig, teacher: nn.Module, shape: tuple[int, ...], device: torch.device,
                 shift: int = 0, for_student: bool = True):
        self.cfg, self.teacher, self.shape, self.device = cfg, teacher, shape, device
        self.shift = shift
        self.latent_dim = cfg.latent_dim
        self.generator = build_generator(cfg.latent_dim, shape, width=cfg.generator_width).to(device)
        self.trainer: nn.Module = self.generator  # the learner, or a DDP wrapper around it under torchrun
        self.opt = self._optimizer(self.generator.parameters())
        self.bn = criteria.BNStatistics(teacher)
        self.features = criteria.PenultimateFeatures(teacher)
        self.diversity = criteria.FeatureDiversity()
        # Diversity only with the BatchNorm prior, which keeps the samples it spreads close to what the teacher
        # was trained on; without that prior the spreading moves them away from it instead.
        has_bn = bool(self.bn.layers)
        bn = cfg.w_bn if has_bn else 0.0
        self.weights = {"adversarial": cfg.w_adv, "bn": bn, "balance": cfg.w_balance,
                        "onehot": cfg.w_onehot * (EASED_CONFIDENCE if for_student and bn > 0 else 1.0),
                        "activation": cfg.w_activation,
                        "diversity": cfg.w_diversity if for_student and has_bn else 0.0}

    @property
    def learner(self) -> nn.Module:
        """The network `step` trains: under torchrun its gradients are averaged over the processes."""
        return self.generator

    @property
    def sampler(self) -> nn.Module:
        """noise -> samples, as `sample` draws them: what the run saves as its generator (networks.build_sampler)."""
        return self.generator

    def _optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.cfg.lr_generator, betas=(0.5, 0.999))

    def objective(self, x: torch.Tensor, student: nn.Module | None, focus: list[int] | None,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
        """The generator's loss on a batch it made; with `labels`, cross-entropy to the asked classes replaces
        the confidence term (and class balance, which the labels already give). Without a student (a model
        quantized as it is) there is nothing to disagree with: the teacher's priors alone."""
        x = augment.translate(x, self.shift)
        with self.bn:
            t_logits = self.teacher(x)
            bn_loss = self.bn.loss()
        zero = torch.zeros((), device=x.device)
        terms = {
            "adversarial": criteria.adversarial_loss(student(x), t_logits) if student is not None else zero,
            "bn": bn_loss,
            "balance": criteria.class_balance(t_logits, focus) if labels is None else zero,
            "onehot": criteria.onehot(t_logits, focus) if labels is None else F.cross_entropy(t_logits, labels),
            "activation": criteria.activation(self.features.features),
            "diversity": (self.diversity.loss(self._features(t_logits)) if self.weights["diversity"] else zero),
        }
        return criteria.generator_objective(self.weights, terms)

    def _features(self, t_logits: torch.Tensor) -> torch.Tensor:
        """The teacher's penultimate features of the batch just seen; its outputs where it has no Linear layer."""
        return self.features.features if self.features.features is not None else t_logits

    def _update(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
        if not torch.isfinite(loss):
            return False  # the loop stops the run on it; no update from a broken loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return True

    def step(self, student: nn.Module | None, batch: int, focus: list[int] | None = None) -> torch.Tensor:
        """`synthesis_steps` generator updates on fresh batches; returns the last loss."""
        self.generator.train()
        if student is not None:
            student.eval()
        for _ in range(self.cfg.synthesis_steps):
            loss = self.objective(self.trainer(self._noise(batch)), student, focus)
            if not self._update(self.opt, loss):
                break
        return loss

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=self.device)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.generator(self._noise(n))

    def _parts(self) -> dict:
        """What a checkpoint holds to resume the synthesizer exactly."""
        return {"generator": self.generator, "opt": self.opt, "diversity": self.diversity}

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self._parts().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self._parts().items():
            part.load_state_dict(state[name])

    def close(self) -> None:
        """Take the hooks off the teacher."""
        self.bn.remove()
        self.features.remove()


class MetaSynthesizer(AdversarialSynthesizer):
    """`generator` holds the meta-weights; `fast` is the round's copy that learns and serves the samples."""

    REPTILE_RATE = 0.5  # how far the meta-weights move towards the round's learnt copy

    def __init__(self, cfg: DistillConfig, teacher: nn.Module, shape: tuple[int, ...], device: torch.device,
                 shift: int = 0):
        super().__init__(cfg, teacher, shape, device, shift)
        self.fast = copy.deepcopy(self.generator)
        self.trainer = self.fast

    @property
    def learner(self) -> nn.Module:
        # The round's copy learns; the meta-weights follow it by Reptile, alike on every process
        return self.fast

    def step(self, student: nn.Module, batch: int, focus: list[int] | None = None) -> torch.Tensor:
        self.fast.load_state_dict(self.generator.state_dict())
        self.fast.train()
        student.eval()
        opt = self._optimizer(self.fast.parameters())  # a fresh inner optimiser: each round starts anew
        for _ in range(self.cfg.synthesis_steps):
            loss = self.objective(self.trainer(self._noise(batch)), student, focus)
            if not self._update(opt, loss):
                return loss
        with torch.no_grad():  # Reptile: meta <- meta + rate * (fast - meta)
            for meta, fast in zip(self.generator.parameters(), self.fast.parameters()):
                meta.add_(fast - meta, alpha=self.REPTILE_RATE)
            for meta, fast in zip(self.generator.buffers(), self.fast.buffers()):
                meta.copy_(fast)
        return loss

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.fast(self._noise(n))

    def _parts(self) -> dict:
        return {"generator": self.generator, "fast": self.fast, "diversity": self.diversity}


class ConditionalSynthesizer(AdversarialSynthesizer):
    """Samples that each ask the teacher for one class, balanced over the classes (or the focus group)."""

    def __init__(self, cfg: DistillConfig, teacher: nn.Module, shape: tuple[int, ...], device: torch.device,
                 num_classes: int, shift: int = 0):
        super().__init__(cfg, teacher, shape, device, shift)
        self.condition = NoisyEmbedding(num_classes, cfg.latent_dim).to(device)
        self._sampler = ConditionalSampler(self.condition, self.generator, num_classes)
        self.opt = self._optimizer(list(self.generator.parameters()) + list(self.condition.parameters()))

    @property
    def sampler(self) -> nn.Module:
        return self._sampler

    def _labels(self, n: int, focus: list[int] | None) -> torch.Tensor:
        return self._sampler.labels(n, self.device, focus)

    def step(self, student: nn.Module, batch: int, focus: list[int] | None = None) -> torch.Tensor:
        self.condition.redraw()
        self.generator.train()
        self.condition.train()
        student.eval()
        labels = self._labels(batch, focus)
        for _ in range(self.cfg.synthesis_steps):
            loss = self.objective(self.trainer(self.condition(labels)), student, focus, labels)
            if not self._update(self.opt, loss):
                break
        return loss

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        self.condition.eval()  # the round's layer, with its batch statistics as learnt
        return self._sampler(self._noise(n))

    def _parts(self) -> dict:
        return {**super()._parts(), "condition": self.condition}


def build_synthesizer(cfg: DistillConfig, teacher: nn.Module, shape: tuple[int, ...], device: torch.device,
                      num_classes: int) -> AdversarialSynthesizer:
    """The distillation's synthesizer, with the jitter for its input shape."""
    shift = max_shift(shape)
    if cfg.synthesizer == "meta":
        return MetaSynthesizer(cfg, teacher, shape, device, shift)
    if cfg.synthesizer == "conditional":
        return ConditionalSynthesizer(cfg, teacher, shape, device, num_classes, shift)
    return AdversarialSynthesizer(cfg, teacher, shape, device, shift)
