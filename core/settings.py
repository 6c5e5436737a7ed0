"""Typed settings declared once: each field carries its own rule (type, range, choices).

A config section is a dataclass whose fields are made with `setting(...)`; `apply` reads TOML or CLI values
into it with type checks, `check` enforces every field's rule. Rules that tie several fields together stay
in the section's own `validate` method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import UsageError


@dataclass(frozen=True)
class Rule:
    gt: float | None = None  # value > gt
    ge: float | None = None  # value >= ge
    lt: float | None = None  # value < lt
    le: float | None = None  # value <= le
    choices: tuple[str, ...] | None = None
    hint: str = ""  # what the allowed values mean, for the error message
    label: str = ""  # how a choice is named in its error ("replay mode"); the key by default


def setting(default: Any = None, *, factory=None, gt=None, ge=None, lt=None, le=None,
            choices: tuple[str, ...] | None = None, hint: str = "", label: str = ""):
    """A dataclass field with its validation rule attached."""
    rule = Rule(gt, ge, lt, le, choices, hint, label)
    if factory is not None:
        return field(default_factory=factory, metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def _range_text(rule: Rule, integer: bool) -> str:
    if integer and rule.ge is not None and rule.le is not None:
        return f"between {_num(rule.ge)} and {_num(rule.le)}"
    low = f"> {rule.gt}" if rule.gt is not None else f">= {rule.ge}" if rule.ge is not None else ""
    high = f"< {rule.lt}" if rule.lt is not None else f"<= {rule.le}" if rule.le is not None else ""
    if low and high:
        lo_b = "(" if rule.gt is not None else "["
        hi_b = ")" if rule.lt is not None else "]"
        lo_v = rule.gt if rule.gt is not None else rule.ge
        hi_v = rule.lt if rule.lt is not None else rule.le
        return f"in {lo_b}{_num(lo_v)}, {_num(hi_v)}{hi_b}"
    return low or high


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _breaks(rule: Rule, v: float) -> bool:
    return ((rule.gt is not None and not v > rule.gt) or (rule.ge is not None and not v >= rule.ge)
            or (rule.lt is not None and not v < rule.lt) or (rule.le is not None and not v <= rule.le))


def check(section: Any, prefix: str = "") -> None:
    """Every field of `section` against its rule; the first violation is a one-line UsageError."""
    for f in fields(section):
        rule = f.metadata.get("rule")
        value = getattr(section, f.name)
        if rule is None or value is None:
            continue
        where = f"{prefix}{f.name}"
        if rule.choices is not None and value not in rule.choices:
            raise UsageError(f"unknown {rule.label or where} '{value}'; choose one of: {', '.join(rule.choices)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _breaks(rule, value):
            hint = f" ({rule.hint})" if rule.hint else ""
            raise UsageError(f"config: {where} must be {_range_text(rule, isinstance(value, int))}{hint}, got {value}")


def coerce(where: str, value: Any, annotation: Any) -> Any:
    """Validate one TOML/CLI value against a dataclass field annotation (given as a string)."""
    ann = str(annotation).replace(" ", "")
    if value is None:
        if "None" in ann:
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
        if base == "list[float]" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `mean = 0.1307` is the one-value list `mean = [0.1307]`
        if not isinstance(value, list):
            raise UsageError(f"config: {where} must be a list, got {value!r}")
        return [coerce(f"{where}[{i}]", v, base[5:-1]) for i, v in enumerate(value)]
    return value


def apply(obj: Any, values: dict, where: str = "", sections: tuple[str, ...] = (), hidden: tuple[str, ...] = ()) -> None:
    """Set `obj`'s fields from `values`; keys named in `sections` are nested sections (TOML tables)."""
    names = {f.name: f for f in fields(obj) if f.name not in hidden}
    for key, value in values.items():
        if key not in names:
            raise UsageError(f"config: unknown key '{where}{key}'; known: {', '.join(sorted(names))}")
        if key in sections:
            if not isinstance(value, dict):
                raise UsageError(f"config: [{key}] must be a table")
            apply(getattr(obj, key), value, f"{key}.")
        else:
            setattr(obj, key, coerce(f"{where}{key}", value, names[key].type))


def expand(value: str, what: str) -> Path:
    try:
        return Path(value).expanduser()
    except (RuntimeError, ValueError) as exc:  # "~nobody/x": no such home directory
        raise UsageError(f"config: {what} {value!r} cannot be resolved: {exc}") from exc


def resolve_path(cfg: Any, value: str | None) -> Path | None:
    """Relative paths in a config resolve against the config file's folder (`cfg.config_dir`)."""
    if value is None:
        return None
    p = expand(value, "path")
    if not p.is_absolute() and cfg.config_dir:
        p = Path(cfg.config_dir) / p
    return p


def check_file(cfg: Any, what: str, value: str) -> None:
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


def check_spec(cfg: Any, what: str, spec: str) -> None:
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
