"""Calibration and fine-tuning samples for a model quantized as it is, without distillation.

One rule for every model: a short run of the distillation's own generator (stages.distill.synthesizer),
trained against the model's priors alone: its BatchNorm statistics where it has BatchNorm, class balance
and confidence always. There is no student, so no adversarial term. The quantize stage then draws fresh
samples from it for every calibration and fine-tuning batch, as after a distillation, where inputs
inverted once (as the probes are) would be a fixed pool that fine-tuning repeats.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from core.errors import RunError
from stages.distill.config import DistillConfig
from stages.distill.synthesizer import AdversarialSynthesizer

# Samples the model classifies after training, to report which classes the generator makes.
COVERAGE_SAMPLES = 512


def train_generator(cfg: DistillConfig, model: nn.Module, shape: tuple[int, ...], steps: int, num_classes: int,
                    device: torch.device, progress: Callable[[int, dict], None]) -> tuple[nn.Module, dict]:
    """`steps` rounds of the generator against the frozen `model` (on `device`); the generator in eval mode
    and the summary run.json keeps."""
    t0 = time.perf_counter()
    # The plain generator whatever distill.synthesizer says: stage 2 samples it from noise alone.
    # Without the feature-diversity term and the eased confidence, which are measured for distillation against a
    # student only.
    synth = AdversarialSynthesizer(cfg, model, shape, device, for_student=False)
    try:
        for step in range(steps):
            loss = synth.step(None, cfg.batch_size)
            if not torch.isfinite(loss):
                raise RunError(f"quantize: the sample generator's loss became {loss.item()} at round {step}; "
                               "try a lower distill.lr_generator")
            progress(step + 1, {})
    finally:
        synth.close()
    generator = synth.generator.eval()
    with torch.no_grad():
        made = model(generator(torch.randn(COVERAGE_SAMPLES, cfg.latent_dim, device=device))).argmax(1)
    counts = torch.bincount(made.cpu(), minlength=num_classes).tolist()
    return generator, {
        "generator_steps": steps,
        "bn_prior": bool(synth.weights["bn"]),
        "final_loss": round(loss.item(), 6),
        "class_counts": counts,  # the model's top-1 class on COVERAGE_SAMPLES generator samples
        "classes_made": sum(c > 0 for c in counts),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
