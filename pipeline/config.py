"""Typed run configuration: presets, a TOML file, CLI overrides, validated at the edge.

Everything past `load_config` may trust the values it receives.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from pipeline.errors import UsageError
from pipeline.tasks import SHAPES

TARGETS = ("jetson", "mobile")
PRESETS = ("smoke", "default", "paper")
DEVICES = ("auto", "cpu", "cuda")
REPLAY_MODES = ("vae", "memory", "none")
CALIBRATION = ("vae", "generator", "noise")


@dataclass
class TeacherConfig:
    """Where the teacher comes from; `builtin = "digits"` is the embedded default task."""

    builtin: str | None = "digits"
    factory: str | None = None  # "file.py:callable" or "package.module:callable"
    weights: str | None = None  # .safetensors or a torch state_dict
    program: str | None = None  # a TorchScript or torch.export program file instead of factory+weights
    input_shape: list[int] = field(default_factory=list)
    num_classes: int = 0
    classes: list[str] | None = None
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    scale: float = 1.0
    # The logits in a richer forward output: an index into a tuple/list, or a key/attribute name
    output: int | str | None = None


@dataclass
class StudentConfig:
    arch: str = "auto"  # built-in family sized from the teacher, or a factory spec
    ratio: float = 0.25  # target parameter count relative to the teacher, for "auto"
    weights: str | None = None  # optional initial weights for a factory student


@dataclass
class DistillConfig:
    iterations: int = 270  # outer iterations: one generator step then `kd_steps` student steps
    kd_steps: int = 5
    batch_size: int = 128
    replay_batch: int = 64  # replay samples mixed into every student step
    latent_dim: int = 64
    vae_latent_dim: int = 32
    vae_steps: int = 2  # VAE updates per outer iteration (reference: the first 4 of 10 kd steps)
    lr_student: float = 4e-3
    lr_generator: float = 1e-3
    lr_vae: float = 1e-3
    student_optimizer: str = "adam"  # adam | sgd
    cosine_schedule: bool = True
    adversarial: str = "js"  # js (PRE-DFKD) | l1 (DFAD)
    kd_loss: str = "kl"  # kl (converges faster on small students) | l1 on logits (DFAD, PRE-DFKD)
    w_adv: float = 1.0
    w_bn: float = 10.0  # BN-statistics prior: the strongest single lever for realistic samples on small tasks
    w_balance: float = 5.0  # information entropy of the batch-mean prediction (DAFL)
    w_onehot: float = 1.0
    w_activation: float = 0.1
    replay: str = "vae"
    memory_bytes: int = 4 * 1024 * 1024  # reservoir budget for replay = "memory"
    vae_recon: str = "pixel+logits"  # what the VAE reconstructs: pixel, logits, pixel+logits
    vae_features: bool = False  # also reconstruct the teacher's penultimate features (via a hook)
    vae_kld_weight: float = 1e-3
    vae_balanced: bool = True  # class-balanced prior sampling (latent step towards balanced teacher classes)
    vae_rehearse: bool = True  # the VAE rehearses on its own samples while learning new ones
    # > 0: replay draws latents from a Gaussian fitted to the encoder's codes (a moving average with this decay
    # per VAE update) instead of N(0, I)
    vae_prior_decay: float = 0.0
    generator_width: int = 64
    # The VAE's decoder width (its encoder is half as wide); 0 sizes it from the input: 32 up to 16x16 pixels
    # (digits: 28% faster than 64 at the same accuracy), 64 above (MNIST lost 1.2-1.6 points at 32)
    vae_width: int = 0
    kd_temperature: float = 1.0  # for kd_loss = "kl"
    # Gaussian noise (std, in normalised input units) on the student's KD batch, labelled by the teacher on
    # the noisy inputs: the student learns the teacher around each synthetic sample, not only on it.
    input_noise: float = 0.3
    # More of the same, off by default: each image of the student's batch shifted by up to `input_shift`
    # pixels, and a fraction `input_mix` of the batch replaced by mixes of two samples (see augment.py).
    input_shift: int = 0
    input_mix: float = 0.0
    # The first `attack_fraction` of the student's batch moved by `input_attack` (normalised input units per
    # element, in `attack_steps` signed-gradient steps) towards where the student disagrees with the teacher, who
    # labels the moved samples (see augment.toward_disagreement). Digits, 4 seeds: 99.44% final at 400 iterations
    # against 99.24% at 600 without, in about the same time; one step instead of two gained nothing. 270 iterations
    # (the default: 99.31%) keep distillation under 5 minutes on a CPU 1.9x slower, where 400 took 384 s.
    input_attack: float = 0.6
    attack_steps: int = 2
    attack_fraction: float = 0.5
    # The shipped (and evaluated) student is a moving average of the student's weights over its steps,
    # with this decay per student step; 0 ships the last weights as they are. No data selects anything.
    ema_decay: float = 0.995
    # A stress setting for measuring forgetting, off by default: the generator is steered to one group of
    # classes at a time (the classes split into `class_phases` groups, the groups cycled `phase_cycles` times
    # over the run), so the synthetic stream leaves whole classes behind for long stretches.
    class_phases: int = 0
    phase_cycles: int = 2
    eval_every: int = 20
    probe_per_class: int = 32
    checkpoint_every: int = 50


@dataclass
class QuantizeConfig:
    calibration: str = "vae"
    calibration_samples: int = 512
    qat_steps: int = 150
    qat_batch: int = 128
    qat_lr: float = 1e-4
    fast_bias_correction: bool = True


@dataclass
class ExportConfig:
    opset: int = 17
    profile: str | None = None  # device profile; None: the target's default
    benchmark_runs: int = 200


@dataclass
class RunConfig:
    target: str = "jetson"
    preset: str = "default"
    device: str = "auto"
    seed: int = 0
    threads: int = 1  # intra-op threads on CPU: 1 is fastest on small shared machines
    eval: str | None = None
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    config_dir: str | None = None  # folder of the config file: relative paths resolve against it


# Preset values override dataclass defaults; the file and the CLI override presets.
PRESET_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "distill": {"iterations": 12, "kd_steps": 2, "batch_size": 64, "replay_batch": 16, "eval_every": 4,
                    "probe_per_class": 4, "checkpoint_every": 6, "vae_steps": 1, "attack_steps": 1},
        "quantize": {"calibration_samples": 64, "qat_steps": 4, "qat_batch": 32},
        "export": {"benchmark_runs": 20},
    },
    "default": {},
    # The reference code's settings (batch 1024, latent 1000, 400 epochs x 36 iterations, 10 kd steps,
    # SGD 0.1 for the student, Adam 0.02 for the generator and 0.02/40 for the VAE, L1 KD, VAE KLD weight 1e-5,
    # information entropy weight 5 in log10 units): GPU scale.
    "paper": {
        "distill": {"iterations": 400 * 36, "kd_steps": 10, "batch_size": 1024, "replay_batch": 128,
                    "latent_dim": 1000, "vae_latent_dim": 1000, "vae_steps": 4, "lr_student": 0.1,
                    "student_optimizer": "sgd", "lr_generator": 0.02, "lr_vae": 0.02 / 40,
                    "w_bn": 0.0, "kd_loss": "l1", "vae_kld_weight": 1e-5, "vae_recon": "pixel+logits",
                    "w_balance": 5.0 / 2.302585, "w_onehot": 1.0, "w_activation": 0.1, "adversarial": "js",
                    "input_noise": 0.0, "input_attack": 0.0, "ema_decay": 0.0, "vae_width": 64,
                    "eval_every": 360, "checkpoint_every": 720},
        "quantize": {"calibration_samples": 2048, "qat_steps": 1000, "qat_batch": 256},
    },
}

_SECTIONS = {"teacher": TeacherConfig, "student": StudentConfig, "distill": DistillConfig,
             "quantize": QuantizeConfig, "export": ExportConfig}


def _check_type(where: str, value: Any, annotation: Any) -> Any:
    """Coerce/validate one TOML value against a dataclass field annotation (given as a string)."""
    ann = str(annotation).replace(" ", "")
    optional = "None" in ann
    if value is None:
        if optional:
            return None
        raise UsageError(f"config: {where} must not be empty")
    base = ann.replace("|None", "")
    if base == "bool":
        if not isinstance(value, bool):
            raise UsageError(f"config: {where} must be true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"config: {where} must be an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"config: {where} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise UsageError(f"config: {where} must be a finite number, got {value!r}")
        return number
    if base == "str":
        if not isinstance(value, str):
            raise UsageError(f"config: {where} must be a string, got {value!r}")
        return value
    if base.startswith("list["):
        inner = base[5:-1]
        if not isinstance(value, list):
            raise UsageError(f"config: {where} must be a list, got {value!r}")
        return [_check_type(f"{where}[{i}]", v, inner) for i, v in enumerate(value)]
    return value


def _apply(obj: Any, values: dict, where: str) -> None:
    names = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        if key not in names or key == "config_dir":
            raise UsageError(f"config: unknown key '{where}{key}'; known: {', '.join(sorted(n for n in names if n != 'config_dir'))}")
        f = names[key]
        if key in _SECTIONS and where == "":
            if not isinstance(value, dict):
                raise UsageError(f"config: [{key}] must be a table")
            _apply(getattr(obj, key), value, f"{key}.")
        else:
            setattr(obj, key, _check_type(f"{where}{key}", value, f.type))


def _positive(where: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"config: {where} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {where} '{value}'; choose one of: {', '.join(choices)}")


def validate(cfg: RunConfig) -> RunConfig:
    _choice("target", cfg.target, TARGETS)
    _choice("preset", cfg.preset, PRESETS)
    _choice("device", cfg.device, DEVICES)
    _choice("replay mode", cfg.distill.replay, REPLAY_MODES)
    _choice("calibration source", cfg.quantize.calibration, CALIBRATION)
    _choice("distill.adversarial", cfg.distill.adversarial, ("js", "l1"))
    _choice("distill.kd_loss", cfg.distill.kd_loss, ("l1", "kl"))
    _choice("distill.student_optimizer", cfg.distill.student_optimizer, ("adam", "sgd"))
    _choice("distill.vae_recon", cfg.distill.vae_recon, ("pixel", "logits", "pixel+logits"))
    if cfg.eval is not None and not cfg.eval.endswith(".npz"):  # digits, or a user's own .npz test set
        _choice("eval set", cfg.eval, ("digits", "FILE.npz"))
    d, q = cfg.distill, cfg.quantize
    for name in ("iterations", "kd_steps", "batch_size", "latent_dim", "vae_latent_dim", "eval_every",
                 "probe_per_class", "checkpoint_every", "memory_bytes", "generator_width"):
        _positive(f"distill.{name}", getattr(d, name))
    for name in ("replay_batch", "vae_steps", "vae_width"):
        _positive(f"distill.{name}", getattr(d, name), allow_zero=True)
    for name in ("lr_student", "lr_generator", "lr_vae"):
        _positive(f"distill.{name}", getattr(d, name))
    for name in ("w_adv", "w_bn", "w_balance", "w_onehot", "w_activation", "input_noise", "input_attack"):
        _positive(f"distill.{name}", getattr(d, name), allow_zero=True)
    _positive("distill.class_phases", d.class_phases, allow_zero=True)
    _positive("distill.input_shift", d.input_shift, allow_zero=True)
    if not 0 <= d.input_mix <= 1:
        raise UsageError(f"config: distill.input_mix must be in [0, 1], got {d.input_mix}")
    _positive("distill.attack_steps", d.attack_steps)
    if not 0 < d.attack_fraction <= 1:
        raise UsageError(f"config: distill.attack_fraction must be in (0, 1], got {d.attack_fraction}")
    _positive("distill.phase_cycles", d.phase_cycles)
    if d.class_phases and d.class_phases * d.phase_cycles > d.iterations:
        raise UsageError(f"config: distill.class_phases x distill.phase_cycles ({d.class_phases} x {d.phase_cycles}) "
                         f"must not exceed distill.iterations ({d.iterations})")
    for name, zero_means in (("vae_prior_decay", "the N(0, I) prior"), ("ema_decay", "no averaging")):
        if not 0 <= getattr(d, name) < 1:
            raise UsageError(f"config: distill.{name} must be in [0, 1) (0: {zero_means}), got {getattr(d, name)}")
    for name in ("calibration_samples", "qat_batch", "qat_lr"):
        _positive(f"quantize.{name}", getattr(q, name))
    _positive("quantize.qat_steps", q.qat_steps, allow_zero=True)
    _positive("export.benchmark_runs", cfg.export.benchmark_runs)
    if not 13 <= cfg.export.opset <= 21:
        raise UsageError(f"config: export.opset must be between 13 and 21 (Q/DQ needs >= 13), got {cfg.export.opset}")
    _positive("threads", cfg.threads)
    if cfg.threads > 1024:
        raise UsageError(f"config: threads must be at most 1024, got {cfg.threads}")
    if not 0 < cfg.student.ratio <= 1:
        raise UsageError(f"config: student.ratio must be in (0, 1], got {cfg.student.ratio}")
    if not 0 <= cfg.seed < 2**32:
        raise UsageError(f"config: seed must be between 0 and {2**32 - 1}, got {cfg.seed}")
    t = cfg.teacher
    _check_output(t.output)
    if t.builtin is not None:
        _choice("built-in teacher", t.builtin, ("digits",))
    else:
        if not (t.factory or t.program):
            raise UsageError("config: [teacher] needs 'factory' (with 'weights') or 'program'")
        if t.factory and t.program:
            raise UsageError("config: [teacher] takes 'factory' or 'program', not both")
        if not t.input_shape or any(s <= 0 for s in t.input_shape):
            raise UsageError(f"config: teacher.input_shape must be a list of positive integers, got {t.input_shape}")
        if t.num_classes < 2:
            raise UsageError(f"config: teacher.num_classes must be >= 2, got {t.num_classes}")
        if t.classes is not None and len(t.classes) != t.num_classes:
            raise UsageError(f"config: teacher.classes has {len(t.classes)} labels but num_classes is {t.num_classes}")
        channels = t.input_shape[0]  # per channel for images, per feature for vectors
        for name in ("mean", "std"):
            v = getattr(t, name)
            if v and len(v) not in (1, channels):
                raise UsageError(f"config: teacher.{name} needs 1 or {channels} values, got {len(v)}")
        if any(s <= 0 for s in t.std):
            raise UsageError("config: teacher.std values must be > 0")
        if t.scale <= 0:
            raise UsageError(f"config: teacher.scale must be > 0, got {t.scale}")
        if t.factory:
            _check_spec(cfg, "teacher factory", t.factory)
        for name in ("weights", "program"):
            if getattr(t, name):
                _check_file(cfg, f"teacher {name}", getattr(t, name))
    check_against_teacher(d, *(SHAPES[t.builtin] if t.builtin is not None else (tuple(t.input_shape), t.num_classes)))
    if cfg.student.arch != "auto":
        _check_spec(cfg, "student factory", cfg.student.arch)
    if cfg.student.weights:
        _check_file(cfg, "student weights", cfg.student.weights)
    return cfg


def check_against_teacher(d: DistillConfig, shape: tuple[int, ...], num_classes: int) -> None:
    """Settings that depend on the teacher's input shape or class count: checked here from the config, and
    by the distillation engine from the teacher itself (for callers that bypass the config)."""
    if d.input_shift > 0 and (len(shape) != 3 or d.input_shift >= min(shape[1:])):
        raise UsageError(f"config: distill.input_shift ({d.input_shift}) needs image inputs [C, H, W] larger than "
                         f"the shift; this teacher takes {list(shape)}")
    if d.class_phases > num_classes:
        raise UsageError(f"config: distill.class_phases ({d.class_phases}) must not exceed the teacher's "
                         f"{num_classes} classes")


def _check_output(output: object) -> None:
    """teacher.output is an index (int) or a key/attribute name (str); TOML may hold anything."""
    is_index = isinstance(output, int) and not isinstance(output, bool)
    if output is None or is_index or isinstance(output, str) and output.strip():
        return
    raise UsageError(f"config: teacher.output must be an index (e.g. 0) or a key or attribute name (e.g. \"logits\"), "
                     f"got {output!r}")


def _check_file(cfg: RunConfig, what: str, value: str) -> None:
    """Files named in a config must exist before any work starts (a typo fails in a second, not after import)."""
    try:
        p = resolve_path(cfg, value)
        is_dir, is_file = p.is_dir(), p.is_file()
    except (OSError, ValueError) as exc:
        raise UsageError(f"{what} path {value!r} is not usable: {exc}") from exc
    if is_dir:
        raise UsageError(f"{what} {p} is a directory, not a file")
    if not is_file:
        raise UsageError(f"{what} not found: {p}")


def _check_spec(cfg: RunConfig, what: str, spec: str) -> None:
    """'file.py:function' or 'package.module:function'; a file must exist (modules are imported later)."""
    mod, _, attr = spec.rpartition(":")
    if not mod.strip() or not attr.strip():
        raise UsageError(f"{what} '{spec}' must look like 'file.py:function' or 'package.module:function'")
    if mod.endswith(".py") or "/" in mod or "\\" in mod:
        try:
            p = resolve_path(cfg, mod)
            ok = p.is_file()
        except (OSError, ValueError) as exc:
            raise UsageError(f"{what} path {mod!r} is not usable: {exc}") from exc
        if not ok:
            raise UsageError(f"{what} file not found: {p}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- preset <- TOML file <- CLI overrides (dotted keys, e.g. {"distill.replay": "none"})."""
    file_values: dict = {}
    cfg_dir = None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file not found: {path}")
        try:
            file_values = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config file {path} is not valid TOML: {exc}") from exc
        except RecursionError as exc:
            raise UsageError(f"config file {path} is not valid TOML: nested too deeply") from exc
        except (UnicodeDecodeError, OSError) as exc:
            raise UsageError(f"config file {path} cannot be read: {exc}") from exc
        cfg_dir = str(p.resolve().parent)
        if isinstance(file_values.get("eval"), dict):  # [eval] data = "test.npz", relative to the config file
            table = file_values["eval"]
            if set(table) != {"data"} or not isinstance(table["data"], str):
                raise UsageError("config: [eval] takes one key, data = \"FILE.npz\" (arrays x raw, y labels)")
            data = _expand(table["data"], "eval data")
            file_values["eval"] = str(data if data.is_absolute() else Path(cfg_dir) / data)
        if "teacher" in file_values and isinstance(file_values["teacher"], dict) and "builtin" not in file_values["teacher"]:
            file_values["teacher"] = {"builtin": None, **file_values["teacher"]}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    preset = overrides.get("preset", file_values.get("preset", "default"))
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UsageError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")

    cfg = RunConfig()
    _apply(cfg, PRESET_VALUES[preset], "")
    _apply(cfg, file_values, "")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"config: '{key}' conflicts with another setting of '{part}'")
        if isinstance(node.get(parts[-1]), dict):
            raise UsageError(f"config: '{key}' conflicts with settings inside it")
        node[parts[-1]] = value
    _apply(cfg, nested, "")
    cfg.preset = preset
    cfg.config_dir = cfg_dir
    return validate(cfg)


def resolve_path(cfg: RunConfig, value: str | None) -> Path | None:
    """Relative paths in a config resolve against the config file's folder."""
    if value is None:
        return None
    p = _expand(value, "path")
    if not p.is_absolute() and cfg.config_dir:
        p = Path(cfg.config_dir) / p
    return p


def _expand(value: str, what: str) -> Path:
    try:
        return Path(value).expanduser()
    except (RuntimeError, ValueError) as exc:  # "~nobody/x": no such home directory
        raise UsageError(f"config: {what} {value!r} cannot be resolved: {exc}") from exc


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)
