"""A run's configuration: each stage's own section, composed, with presets, a TOML file and CLI overrides,
validated once at the edge. Everything past `load_config` may trust the values it receives.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from core.errors import UsageError
from core.settings import apply, check, check_file, check_spec, expand, resolve_path, setting
from core.teacher_config import TeacherConfig
from core import workdir
from stages.distill.config import RETIRED, DistillConfig, StudentConfig
from stages.export.config import ExportConfig
from stages.quantize.config import RETIRED as QUANTIZE_RETIRED, QuantizeConfig
from targets import TARGET_NAMES

__all__ = ["RunConfig", "load_config", "validate", "config_from_dict", "resume_config", "to_dict", "resolve_path",
           "PRESETS"]

PRESETS = ("smoke", "default", "paper")


@dataclass
class RunConfig:
    target: str = setting("jetson", choices=TARGET_NAMES, label="target")
    preset: str = setting("default", choices=PRESETS, label="preset")
    device: str = setting("auto", choices=("auto", "cpu", "cuda"), label="device")
    seed: int = setting(0, ge=0, le=2**32 - 1)
    threads: int = setting(1, ge=1, le=1024)  # intra-op threads on CPU: 1 is fastest on small shared machines
    eval: str | None = None  # "digits", or a user's own test split (.npz): reports only
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    config_dir: str | None = None  # folder of the config file: relative paths resolve against it


_SECTIONS = {"teacher": TeacherConfig, "student": StudentConfig, "distill": DistillConfig,
             "quantize": QuantizeConfig, "export": ExportConfig}


# Preset values override dataclass defaults; the file and the CLI override presets.
PRESET_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "distill": {"iterations": 12, "kd_steps": 2, "batch_size": 64, "replay_batch": 16, "eval_every": 4,
                    "probe_per_class": 4, "checkpoint_every": 6, "vae_steps": 1, "attack_steps": 1},
        "quantize": {"calibration_samples": 64, "qat_steps": 4, "qat_batch": 32, "generator_steps": 8},
        "export": {"benchmark_runs": 20},
    },
    "default": {},
    # The reference code's settings, GPU scale (its information-entropy weight is in log10 units). Its
    # Jensen-Shannon adversarial term and VAE reconstruction (pixels and logits) are the only ones the pipeline has.
    "paper": {
        "distill": {"iterations": 400 * 36, "kd_steps": 10, "batch_size": 1024, "replay_batch": 128,
                    "latent_dim": 1000, "vae_latent_dim": 1000, "vae_steps": 4, "lr_student": 0.1,
                    "student_optimizer": "sgd", "lr_generator": 0.02, "lr_vae": 0.02 / 40,
                    "w_bn": 0.0, "kd_loss": "l1", "vae_kld_weight": 1e-5,
                    "w_balance": 5.0 / 2.302585, "w_onehot": 1.0, "w_activation": 0.1,
                    "w_diversity": 0.0, "input_noise": 0.0, "input_attack": 0.0, "ema_decay": 0.0, "vae_width": 64,
                    "eval_every": 360, "checkpoint_every": 720},
        "quantize": {"calibration_samples": 2048, "qat_steps": 1000, "qat_batch": 256},
    },
}

# Per section, the settings this version no longer has (see stages.distill.config.RETIRED).
_RETIRED = {"distill": RETIRED, "quantize": QUANTIZE_RETIRED}


def _apply(cfg: RunConfig, values: dict) -> None:
    for section, gone in _RETIRED.items():
        table = values.get(section)
        named = [key for key in table if key in gone] if isinstance(table, dict) else []
        if named:
            raise UsageError(f"config: {section}.{named[0]} is no longer a setting (docs/cli.md lists the removed ones)")
    apply(cfg, values, sections=_SECTIONS, hidden=("config_dir",))


def _without_retired(d: dict) -> tuple[dict, list[tuple[str, Any]]]:
    """A stored config without the settings this version no longer has, and those of them it held at a value
    that did something else than this version does."""
    d, changed = dict(d), []
    for section, gone in _RETIRED.items():
        if isinstance(d.get(section), dict):
            d[section] = dict(d[section])
            for key in [k for k in d[section] if k in gone]:
                value = d[section].pop(key)
                if value != gone[key]:
                    changed.append((f"{section}.{key}", value))
    return d, changed


def validate(cfg: RunConfig) -> RunConfig:
    check(cfg)
    if cfg.eval is not None and not cfg.eval.endswith(".npz"):  # digits, or a user's own .npz test set
        if cfg.eval != "digits":
            raise UsageError(f"unknown eval set '{cfg.eval}'; choose one of: digits, FILE.npz")
    check(cfg.student, "student.")
    check(cfg.distill, "distill.")
    check(cfg.quantize, "quantize.")
    check(cfg.export, "export.")
    cfg.teacher.validate(cfg)
    if cfg.student.arch != "auto":
        check_spec(cfg, "student factory", cfg.student.arch)
    if cfg.student.weights:
        check_file(cfg, "student weights", cfg.student.weights)
    return cfg


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
            if table["data"] == "digits":  # the built-in split by name, as --eval digits
                file_values["eval"] = "digits"
            else:
                data = expand(table["data"], "eval data")
                file_values["eval"] = str(data if data.is_absolute() else Path(cfg_dir) / data)
        if "teacher" in file_values and isinstance(file_values["teacher"], dict) and "builtin" not in file_values["teacher"]:
            file_values["teacher"] = {"builtin": None, **file_values["teacher"]}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    preset = overrides.get("preset", file_values.get("preset", "default"))
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UsageError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")

    cfg = RunConfig()
    _apply(cfg, PRESET_VALUES[preset])
    _apply(cfg, file_values)
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
    _apply(cfg, nested)
    cfg.preset = preset
    cfg.config_dir = cfg_dir
    return validate(cfg)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> RunConfig:
    """The config a run directory stored in its run.json. Settings removed since it was written are dropped: they
    shaped a distillation that run has done (resume_config refuses to continue one they made differ)."""
    d, _ = _without_retired(d)
    config_dir = d.pop("config_dir", None)
    cfg = RunConfig()
    _apply(cfg, d)
    cfg.config_dir = config_dir
    return validate(cfg)


# Settings that may differ between an interrupted run and its --resume: they change where and how
# fast it runs, not what it computes.
RESUME_FREE = ("device", "threads")


def _diff(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append((f"{prefix}{key}", va, vb))
    return out


def resume_config(out: Path, cfg: RunConfig | None) -> RunConfig | None:
    """The configuration a `--resume` continues with: the interrupted run's own.

    cfg=None (no settings given on the command line) takes the stored one; a cfg that differs from it
    in anything but device/threads is refused, naming the first difference. Returns `cfg` unchanged
    when `out` holds no run yet (nothing to resume: the caller starts afresh).
    """
    if not (out / workdir.RUN_FILE).is_file():
        return cfg
    stored_dict = workdir.read_run(out)["config"]
    _, changed = _without_retired(stored_dict)
    if changed:
        key, value = changed[0]
        raise UsageError(f"--resume: {out} was started with {key} = {value!r}, a setting this version no longer "
                         "has; start over with --force")
    stored = config_from_dict(stored_dict)
    if cfg is None:
        return stored
    diffs = [d for d in _diff(to_dict(stored), to_dict(cfg)) if d[0] not in RESUME_FREE]
    if diffs:
        key, was, now = diffs[0]
        raise UsageError(f"--resume: {out} was started with {key} = {was!r}, not {now!r}; resume with the same "
                         f"settings (or none: the run's own are used), or start over with --force")
    stored.device, stored.threads = cfg.device, cfg.threads
    return stored
