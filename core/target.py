"""The one interface every deployment target implements, in the manner of Polygraphy's runners.

export:    write the target's artifacts into a bundle from the FP32 and INT8 ONNX models.
build:     build what only the device can build (a TensorRT engine); raise RuntimeMissing elsewhere.
benchmark: measure latency of the bundle's models with the runtimes present on this machine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path


class RuntimeMissing(RuntimeError):
    """The target's runtime (TensorRT, a GPU) is not on this machine: say so once and carry on."""


@dataclass
class ExportContext:
    bundle_dir: Path
    fp32_onnx: Path
    int8_onnx: Path
    input_name: str
    input_shape: tuple[int, ...]  # per-sample shape, without batch
    profile: str | None = None  # device profile name; None means the target's default


@dataclass
class ExportedArtifact:
    path: Path
    role: str


@dataclass
class BenchmarkRequest:
    bundle_dir: Path
    batches: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = (1,)
    runs: int | None = None
    duration_s: float | None = None
    warmup: int = 10


class Target(ABC):
    name: str = ""
    description: str = ""
    scheme: str = ""  # the INT8 scheme (stages.quantize.qat) this target's runtime executes best

    @abstractmethod
    def export(self, ctx: ExportContext) -> list[ExportedArtifact]: ...

    @abstractmethod
    def build(self, bundle_dir: Path, profile: str | None = None) -> list[ExportedArtifact]: ...

    @abstractmethod
    def benchmark(self, req: BenchmarkRequest) -> list[dict]: ...

    def check(self, ctx: ExportContext) -> list:
        """Static findings (targets.check.Finding) about the INT8 model for this target; none by default."""
        return []
