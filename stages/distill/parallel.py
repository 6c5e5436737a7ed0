"""Distillation across processes (`torchrun --nproc-per-node N`): DistributedDataParallel for the student,
the generator and the VAE; gloo on CPU, nccl on GPU.

The global batch stays what the config says: each of N processes synthesises batch/N samples from its own
random stream, and DDP averages the gradients, so N processes follow the single-process recipe and reach
its quality. Rank 0 alone evaluates, checkpoints and writes; the other ranks only train.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.errors import RunError, UsageError
from core.world import World


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group; returns this rank's device (cuda:LOCAL_RANK on GPU machines)."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        if torch.cuda.device_count() <= world.local_rank:
            raise UsageError(f"torchrun started local rank {world.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend)
        except Exception as exc:  # a rendezvous that cannot form is a set-up problem, said in one line
            raise RunError(f"distributed start ({backend}) failed: {str(exc).splitlines()[0][:200]}") from exc
    return device


def stop(world: World, clean: bool = True) -> None:
    """Leave the process group. After a clean finish every rank first waits for the others, so none tears
    its connections down while a peer still uses them; after an error there is no barrier, since a peer
    may be stuck in another collective and would pair with it."""
    if world.distributed and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[torch.device]:
    """`start` ... `stop` around a block, so that every way out of it (errors included) leaves the group:
    a process that exits still holding it can abort in the communication library's teardown."""
    device = start(world, device)
    try:
        yield device
    except BaseException:
        stop(world, clean=False)
        raise
    stop(world, clean=True)


def wrap(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DDP around a module when there are several processes; the module itself otherwise."""
    if not world.distributed:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def gather(obj, world: World) -> list:
    """Every rank's `obj`, in rank order, on every rank (one process: [obj])."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, world: World):
    """Rank 0's `obj` on every rank."""
    if not world.distributed:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def fingerprint(module: nn.Module) -> float:
    return float(sum(p.double().sum() for p in module.parameters()))


def check_in_sync(modules: dict[str, nn.Module], world: World) -> None:
    """After training every rank must hold the same weights; anything else is a bug worth stopping for."""
    if not world.distributed:
        return
    prints = gather({name: fingerprint(m) for name, m in modules.items()}, world)
    for name in modules:
        values = [p[name] for p in prints]
        if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
            raise RunError(f"distributed distillation: the {name} weights differ between ranks ({values})")
