"""The distillation stage's settings: the `[student]` and `[distill]` sections of a run's config."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import setting

REPLAY_MODES = ("vae", "none")
SYNTHESIZERS = ("adversarial", "meta", "conditional")

# Settings earlier versions had, each with the value at which it did what this version does: a run.json stored
# by such a version still reads (pipeline.config drops them), while a config or --set naming one is refused.
# The benchmarks did not show them helping, or they were stresses the benchmarks now apply themselves
# (docs/cli.md, "Removed settings").
RETIRED = {"input_shift": 0, "input_mix": 0.0, "vae_features": False, "vae_prior_decay": 0.0,
           "vae_recon": "pixel+logits", "adversarial": "js",
           "cosine_schedule": True, "class_phases": 0, "phase_cycles": 2, "memory_bytes": 4194304}


@dataclass
class StudentConfig:
    arch: str = "auto"  # built-in family sized from the teacher, or a factory spec
    ratio: float = setting(0.25, gt=0, le=1)  # target parameter count relative to the teacher, for "auto"
    weights: str | None = None  # optional initial weights for a factory student


@dataclass
class DistillConfig:
    # The cap on outer iterations (one generator step, then `kd_steps` student steps); distillation stops earlier
    # when, on held-out synthetic probes, the student's agreement with the teacher has gained less than `min_gain`
    # and its divergence from the teacher has not fallen either (stopping.plateaued) in the last `patience`
    # evaluations (0: never; the learning rate then anneals over a cool-down first, stopping.cool_down_end), or
    # when `time_budget` seconds are spent (0: no budget).
    iterations: int = setting(400, gt=0)
    patience: int = setting(6, ge=0)
    min_gain: float = setting(0.005, ge=0)
    time_budget: float = setting(0.0, ge=0)
    # The run fails (non-zero exit, outputs kept) when the shipped student's probe agreement ends below this
    min_agreement: float = setting(0.0, ge=0, le=1)
    kd_steps: int = setting(5, gt=0)
    # Student updates on each teacher-labelled KD batch: its preparation (replay draw, perturbation, the teacher's
    # labels) is paid once for all of them.
    steps_per_batch: int = setting(2, gt=0)
    batch_size: int = setting(128, gt=0)
    # Replay samples mixed into every student step of an update, drawn from its shipped VAE
    replay_batch: int = setting(64, ge=0)
    latent_dim: int = setting(64, gt=0)
    synthesizer: str = setting("adversarial", choices=SYNTHESIZERS)  # see synthesizer.py
    synthesis_steps: int = setting(1, gt=0)  # generator updates per iteration
    vae_latent_dim: int = setting(32, gt=0)
    vae_steps: int = setting(2, ge=0)  # VAE updates per outer iteration, on the first student steps
    lr_student: float = setting(4e-3, gt=0)
    lr_generator: float = setting(1e-3, gt=0)
    lr_vae: float = setting(1e-3, gt=0)
    student_optimizer: str = setting("adam", choices=("adam", "sgd"))
    kd_loss: str = setting("kl", choices=("l1", "kl"))  # kl on softened outputs | l1 on logits (DFAD, PRE-DFKD)
    w_adv: float = setting(1.0, ge=0)
    w_bn: float = setting(5.0, ge=0)  # BN-statistics prior (DeepInversion), in each layer's own units
    w_balance: float = setting(5.0, ge=0)  # entropy of the batch-mean prediction (DAFL)
    w_onehot: float = setting(1.0, ge=0)  # eased where the BN prior is on (synthesizer.EASED_CONFIDENCE)
    w_activation: float = setting(0.1, ge=0)
    # Teacher features of generated samples pushed from each other and from recent batches' (criteria.FeatureDiversity);
    # only for a teacher with BatchNorm
    w_diversity: float = setting(0.1, ge=0)
    replay: str = setting("vae", choices=REPLAY_MODES, label="replay mode")
    vae_kld_weight: float = 1e-3
    vae_balanced: bool = True  # class-balanced prior sampling (latent step towards balanced teacher classes)
    vae_rehearse: bool = True  # the VAE rehearses on its own samples while learning new ones
    generator_width: int = setting(64, gt=0)
    # The VAE's decoder width (its encoder is half as wide); 0 sizes it from the input (see auto_vae_width)
    vae_width: int = setting(0, ge=0)
    kd_temperature: float = setting(1.0, gt=0)  # for kd_loss = "kl"
    # Gaussian noise (std, in normalised input units) on the student's KD batch, labelled by the teacher on
    # the noisy inputs: the student learns the teacher around each synthetic sample, not only on it.
    input_noise: float = setting(0.3, ge=0)
    # The first `attack_fraction` of the student's batch moved by `input_attack` (normalised input units per
    # element, in `attack_steps` signed-gradient steps) towards where the student disagrees with the teacher,
    # who labels the moved samples (see augment.toward_disagreement).
    input_attack: float = setting(0.6, ge=0)
    attack_steps: int = setting(2, gt=0)
    attack_fraction: float = setting(0.5, gt=0, le=1)
    # Noise and attack shrink together (never grow), re-sized every `eval_every` iterations, until the teacher's
    # top class changes on at most this fraction of the generator's samples under the noise (augment.label_safe_reach).
    max_label_flips: float = setting(0.1, ge=0, le=1)
    # The shipped (and evaluated) student is a moving average of the student's weights over its steps,
    # with this decay per student step; 0 ships the last weights as they are. No data selects anything.
    ema_decay: float = setting(0.995, ge=0, lt=1, hint="0: no averaging")
    eval_every: int = setting(20, gt=0)
    # Probes of each class in the held-out set (for up to 10 classes; a teacher with more gets as many in all)
    probe_per_class: int = setting(32, gt=0)
    checkpoint_every: int = setting(50, gt=0)
