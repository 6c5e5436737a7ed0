"""Device profiles: what a deployment device offers, as frozen data the targets read.

A profile says what the device has (DLA cores, big CPU cores) and how we deploy to it by default
(DLA on or off, workspace, batch, execution providers). Pick one with `--profile NAME`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from core.errors import UsageError


@dataclass(frozen=True)
class JetsonProfile:
    name: str
    description: str
    precision: str = "int8"
    dla_cores: int = 0  # DLA engines on the module (Orin Nano has none)
    use_dla: bool = False
    dla_core: int = 0  # which DLA core to use when use_dla
    gpu_fallback: bool = True  # layers DLA cannot run go to the GPU instead of failing the build
    workspace_mib: int = 256
    batch: int = 1
    target: str = "jetson"


@dataclass(frozen=True)
class MobileProfile:
    name: str
    description: str
    threads: int = 4  # big cores: little cores slow the whole thread pool down
    batch: int = 1
    execution_providers: tuple[str, ...] = ("XNNPACK", "NNAPI", "CoreML", "CPU")
    precision: str = "int8"
    target: str = "mobile"


Profile = JetsonProfile | MobileProfile

# DLA is off by default: for a network this small the DLA's launch cost and the GPU<->DLA
# reformatting outweigh its gain; it pays for bigger CNNs where the GPU is needed for other work.
# `agx-orin-dla` is the opt-in variant.
_AGX = JetsonProfile(
    "agx-orin",
    "Jetson AGX Orin (2 DLA cores, 2048-core Ampere GPU); GPU only by default",
    dla_cores=2,
    workspace_mib=1024,
)
PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        JetsonProfile("orin-nano", "Jetson Orin Nano (no DLA, 1024-core Ampere GPU)", dla_cores=0, workspace_mib=256),
        JetsonProfile("orin-nx", "Jetson Orin NX (2 DLA cores, 1024-core Ampere GPU); GPU only by default", dla_cores=2, workspace_mib=512),
        _AGX,
        replace(_AGX, name="agx-orin-dla", description="Jetson AGX Orin on DLA core 0 with GPU fallback", use_dla=True),
        MobileProfile("phone-big-core", "Android/iOS phone, 4 big CPU cores, XNNPACK first", threads=4),
    )
}

_DEFAULTS = {"jetson": "orin-nano", "mobile": "phone-big-core"}


def _check(p: Profile) -> None:
    if isinstance(p, JetsonProfile) and p.use_dla and not 0 <= p.dla_core < p.dla_cores:
        raise ValueError(f"profile {p.name}: dla_core {p.dla_core} but the device has {p.dla_cores} DLA cores")


for _p in PROFILES.values():
    _check(_p)


def profile_names(target: str | None = None) -> list[str]:
    return [n for n, p in PROFILES.items() if target is None or p.target == target]


def get_profile(name: str, target: str | None = None) -> Profile:
    """Look a profile up by name; with `target`, refuse a profile of another target."""
    if name not in PROFILES:
        raise UsageError(f"unknown device profile '{name}'; choose one of: {', '.join(profile_names(target))}")
    p = PROFILES[name]
    if target is not None and p.target != target:
        raise UsageError(f"device profile '{name}' is for target {p.target}, not {target}; choose one of: {', '.join(profile_names(target))}")
    return p


def default_profile(target: str) -> Profile:
    if target not in _DEFAULTS:
        raise UsageError(f"unknown target '{target}'; choose one of: {', '.join(sorted(_DEFAULTS))}")
    return PROFILES[_DEFAULTS[target]]


def resolve_profile(name: str | None, target: str) -> Profile:
    return default_profile(target) if name is None else get_profile(name, target)
