"""The torch device and threads a stage runs with."""

from __future__ import annotations

import torch

from core.errors import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch on this machine; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_up(cfg) -> torch.device:
    """Threads, seed and device from a run config (`threads`, `seed`, `device`)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return resolve_device(cfg.device)
