"""Where this process stands when `torchrun` started several: rank, world size, local rank.

Read from the environment torchrun sets, without importing torch, so the CLI can decide early which
process prepares the output directory and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.errors import UsageError

# Only distillation is split across processes; the later stages run once, on rank 0.
DISTRIBUTED_COMMANDS = ("run", "distill")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> int:
        """This rank's part of a global batch of n (the remainder goes to the lowest ranks)."""
        return n // self.size + (1 if self.rank < n % self.size else 0)


SINGLE = World()


def world_from_env(environ: dict | None = None) -> World:
    """The process's place as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    env = os.environ if environ is None else environ
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise UsageError(f"torchrun environment is malformed (RANK, WORLD_SIZE, LOCAL_RANK must be integers): {exc}") from exc
    if size < 1 or not 0 <= rank < size or local < 0:
        raise UsageError(f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local}")
    return World(rank, size, local)
