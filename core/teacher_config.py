"""The `[teacher]` section of a run's config, free of torch so that a config is checked before anything loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import UsageError
from core.settings import check_file, check_spec
from core.tasks import SHAPES


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

    def validate(self, cfg) -> None:
        """`cfg`: the run's config, whose folder relative paths resolve against."""
        _check_output(self.output)
        if self.builtin is not None:
            if self.builtin not in SHAPES:
                raise UsageError(f"unknown built-in teacher '{self.builtin}'; choose one of: {', '.join(SHAPES)}")
            return
        if not (self.factory or self.program):
            raise UsageError("config: [teacher] needs 'factory' (with 'weights') or 'program'")
        if self.factory and self.program:
            raise UsageError("config: [teacher] takes 'factory' or 'program', not both")
        if not self.input_shape or any(s <= 0 for s in self.input_shape):
            raise UsageError(f"config: teacher.input_shape must be a list of positive integers, got {self.input_shape}")
        if self.num_classes < 2:
            raise UsageError(f"config: teacher.num_classes must be >= 2, got {self.num_classes}")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise UsageError(f"config: teacher.classes has {len(self.classes)} labels but num_classes is {self.num_classes}")
        channels = self.input_shape[0]  # per channel for images, per feature for vectors
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v and len(v) not in (1, channels):
                raise UsageError(f"config: teacher.{name} needs 1 or {channels} values, got {len(v)}")
        if any(s <= 0 for s in self.std):
            raise UsageError("config: teacher.std values must be > 0")
        if self.scale <= 0:
            raise UsageError(f"config: teacher.scale must be > 0, got {self.scale}")
        if self.factory:
            check_spec(cfg, "teacher factory", self.factory)
        for name in ("weights", "program"):
            if getattr(self, name):
                check_file(cfg, f"teacher {name}", getattr(self, name))


def _check_output(output: object) -> None:
    """teacher.output is an index (int) or a key/attribute name (str); TOML may hold anything."""
    is_index = isinstance(output, int) and not isinstance(output, bool)
    if output is None or is_index or isinstance(output, str) and output.strip():
        return
    raise UsageError(f"config: teacher.output must be an index (e.g. 0) or a key or attribute name (e.g. \"logits\"), "
                     f"got {output!r}")
