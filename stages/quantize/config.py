"""The quantization stage's settings: the `[quantize]` section of a run's config."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import setting

# Settings earlier versions had, with the value at which they did what this version does (as distill's RETIRED).
RETIRED = {"fast_bias_correction": False, "calibration": "generator"}


@dataclass
class QuantizeConfig:
    calibration_samples: int = setting(512, gt=0)
    qat_steps: int = setting(150, ge=0)
    qat_batch: int = setting(128, gt=0)
    qat_lr: float = setting(1e-4, gt=0)
    # Quantizing a model itself (`pipeline quantize --config`): rounds of training the generator that makes
    # its calibration and fine-tuning samples (a distilled run uses the distillation's generator).
    generator_steps: int = setting(200, gt=0)
    # Agreement points (on synthetic probes) INT8 may cost; the most sensitive layers stay in float
    # until the estimate is within it. None quantizes every layer.
    max_drop: float | None = setting(None, ge=0)
