"""The distillation loop: generator exploration, student KD with replay, VAE memory updates.

One outer iteration (as in the PRE-DFKD reference):
  1. generator step: synthesise a batch the teacher finds plausible but the student gets wrong;
  2. `kd_steps` student steps on fresh generator samples mixed with a replay batch from memory,
     the memory learning the newest samples during the first `vae_steps` of them.
No validation data: the final student is the last one (with `ema_decay`, the moving average of the
student's weights up to the last step; see averaging.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipeline.config import DistillConfig, check_against_teacher
from pipeline.errors import RunError, UsageError
from pipeline.fileio import atomic_path
from pipeline.world import SINGLE, World
from stages.distill import augment, criteria, parallel
from stages.distill.averaging import WeightAverage
from stages.distill.memory import NoReplay, ReservoirMemory, VAEMemory
from stages.distill.networks import VAE, auto_vae_width, build_generator
from stages.distill.probes import agreement, synthesize_probes

CHECKPOINT = "checkpoint.pt"


@dataclass
class DistillResult:
    student: nn.Module
    generator: nn.Module
    memory: object
    history: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    iterations: int = 0
    resumed_from: int | None = None

    @property
    def vae(self) -> VAE | None:
        return self.memory.vae if isinstance(self.memory, VAEMemory) else None


def vae_memory(cfg: DistillConfig, vae: VAE, teacher: nn.Module, trained: bool = False) -> VAEMemory:
    """A VAE memory around `vae` (a fresh one, or a bundle's) with the run's VAE settings. `trained`: the VAE
    has learned a stream already (a shipped one), so it replays from the first draw."""
    memory = VAEMemory(vae, teacher, lr=cfg.lr_vae, recon=cfg.vae_recon, kld_weight=cfg.vae_kld_weight,
                       balanced=cfg.vae_balanced, rehearse=cfg.vae_rehearse, features=cfg.vae_features,
                       prior_decay=cfg.vae_prior_decay)
    if trained:
        memory.updates = 1  # `sample` refuses an untrained VAE, which would replay noise
    return memory


def build_vae(cfg: DistillConfig, shape: tuple[int, ...]) -> VAE:
    """A fresh VAE of the run's latent size and width (`vae_width = 0` sizes it from the input)."""
    return VAE(shape, cfg.vae_latent_dim, width=cfg.vae_width or auto_vae_width(shape))


def build_memory(cfg: DistillConfig, shape: tuple[int, ...], teacher: nn.Module, device: torch.device):
    if cfg.replay == "vae":
        return vae_memory(cfg, build_vae(cfg, shape).to(device), teacher)
    if cfg.replay == "memory":
        return ReservoirMemory(shape, cfg.memory_bytes, device)
    return NoReplay()


def _student_optimizer(cfg: DistillConfig, student: nn.Module) -> torch.optim.Optimizer:
    if cfg.student_optimizer == "sgd":
        return torch.optim.SGD(student.parameters(), lr=cfg.lr_student, momentum=0.9, weight_decay=5e-4)
    return torch.optim.Adam(student.parameters(), lr=cfg.lr_student)


def _finite(value: torch.Tensor, what: str, step: int, out_dir: Path) -> None:
    if not torch.isfinite(value):
        kept = out_dir / CHECKPOINT
        where = f"; last good checkpoint kept at {kept}" if kept.exists() else ""
        raise RunError(f"distill: {what} became {value.item()} at step {step}{where}")


class _Layout:
    """Channels-last weights for image models on the CPU: oneDNN's convolutions make distillation there
    15-20% faster. Every model it touched, the caller's teacher included, goes back to the default layout."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.modules: list[nn.Module] = []

    def adopt(self, *modules: nn.Module | None) -> None:
        if not self.enabled:
            return
        for m in modules:
            if m is not None:
                m.to(memory_format=torch.channels_last)
                self.modules.append(m)

    @torch.no_grad()
    def check(self, shape: tuple[int, ...], device: torch.device, *models: nn.Module) -> None:
        """A user's model may `.view()` its activations, which channels-last tensors refuse: each one runs a
        channels-last batch once (eval mode, no state touched), and one failure turns the layout off for the run."""
        if not self.enabled:
            return
        x = torch.zeros((2, *shape), device=device).contiguous(memory_format=torch.channels_last)
        for m in models:
            was_training = m.training
            m.eval()
            try:
                m(x)
            except Exception:  # whatever it is, the default layout is what the model was written for
                self.restore()
                self.enabled = False
                return
            finally:
                m.train(was_training)

    def restore(self) -> None:
        for m in self.modules:
            m.to(memory_format=torch.contiguous_format)
        self.modules = []


def distill(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, shape: tuple[int, ...], out_dir: Path,
            device: torch.device, seed: int = 0, evaluate: Callable[[nn.Module], float] | None = None,
            resume: bool = False, progress: Callable[[int, dict], None] | None = None,
            memory=None, world: World = SINGLE) -> DistillResult:
    """Distil `teacher` into `student` without data. `memory` may carry an existing (shipped) VAE memory.
    Under torchrun (`world` of several processes) every rank calls this; rank 0 evaluates and checkpoints."""
    device = torch.device(device)
    layout = _Layout(enabled=len(shape) == 3 and device.type == "cpu")
    frozen = _Frozen(teacher)
    try:
        return _distill(cfg, teacher, student, shape, out_dir, device, seed, evaluate, resume, progress,
                        memory, world, layout)
    finally:
        frozen.restore()
        layout.restore()


class _Frozen:
    """The teacher's weights stop asking for gradients while it is distilled: every backward pass through it
    (the generator's, the probes', the memory's and the attack's) then computes input gradients only, not
    weight gradients nothing reads. The caller's flags come back however the run ends. `load_teacher` freezes the
    pipeline's teachers for good; this covers every other caller of `distill` (benchmarks, library use)."""

    def __init__(self, model: nn.Module):
        self.flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)

    def restore(self) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)


def _distill(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, shape: tuple[int, ...], out_dir: Path,
             device: torch.device, seed: int, evaluate: Callable[[nn.Module], float] | None, resume: bool,
             progress: Callable[[int, dict], None] | None, memory, world: World, layout: _Layout) -> DistillResult:
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    teacher = teacher.to(device).eval()
    student = student.to(device)
    generator = build_generator(cfg.latent_dim, shape, width=cfg.generator_width).to(device)
    memory = memory if memory is not None else build_memory(cfg, shape, teacher, device)
    layout.adopt(teacher, student, generator, memory.vae if isinstance(memory, VAEMemory) else None)
    layout.check(shape, device, teacher, student)
    opt_s = _student_optimizer(cfg, student)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_generator, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=cfg.iterations) if cfg.cosine_schedule else None
    average = WeightAverage(student, cfg.ema_decay) if cfg.ema_decay > 0 else None
    layout.adopt(average.model if average is not None else None)
    shipped = average.model if average is not None else student  # what is evaluated and returned
    num_classes = _num_classes(teacher, shape, device)
    check_against_teacher(cfg, shape, num_classes)
    groups = criteria.class_groups(num_classes, cfg.class_phases) if cfg.class_phases else None
    probes, probe_labels = None, None
    if world.is_main:
        probes, probe_labels = synthesize_probes(teacher, shape, num_classes,
                                                 cfg.probe_per_class, seed=seed + 1234, device=device)
    if world.distributed:
        torch.manual_seed(_rank_seed(seed, world))  # same initial weights (DDP checks), own sample streams
    bn = criteria.BNStatistics(teacher)
    feats = criteria.PenultimateFeatures(teacher)
    weights = {"adversarial": cfg.w_adv, "bn": cfg.w_bn if bn.layers else 0.0, "balance": cfg.w_balance,
               "onehot": cfg.w_onehot, "activation": cfg.w_activation}
    history: list[dict] = []
    start, elapsed_before, resumed_from = 0, 0.0, None

    ckpt_path = out_dir / CHECKPOINT
    found = resume and world.is_main and ckpt_path.exists()
    state = parallel.broadcast(_load_checkpoint(ckpt_path) if found else None, world)  # rank 0 reads for all
    if state is not None:
        student.load_state_dict(state["student"])
        generator.load_state_dict(state["generator"])
        memory.load_state_dict(state["memory"])
        opt_s.load_state_dict(state["opt_s"])
        opt_g.load_state_dict(state["opt_g"])
        if sched is not None:
            sched.load_state_dict(state["sched"])
        if average is not None:
            if "average" not in state:
                raise UsageError(f"checkpoint {ckpt_path} was written without distill.ema_decay; resume with "
                                 "--set distill.ema_decay=0 or start afresh")
            average.load_state_dict(state["average"])
        history = list(state["history"])
        start = resumed_from = int(state["iteration"])
        elapsed_before = float(state["elapsed"])
        rngs = state.get("rng_ranks") or [state["rng"]]
        if len(rngs) == world.size:
            torch.set_rng_state(rngs[world.rank])
        else:  # resumed with another process count: fresh, still reproducible streams
            torch.manual_seed(_rank_seed(seed, world) + start)

    # Several processes: DDP averages gradients of what each rank trains; the bare modules stay for
    # everything that needs no synchronisation (the student judged by the generator, sampling, eval).
    student_train = parallel.wrap(student, world, device)
    generator_train = parallel.wrap(generator, world, device)
    if isinstance(memory, VAEMemory):
        memory.trainer = parallel.wrap(memory.vae, world, device)
    batch, replay_batch = world.share(cfg.batch_size), world.share(cfg.replay_batch)
    perturbed = cfg.input_noise > 0 or cfg.input_shift > 0 or cfg.input_mix > 0 or cfg.input_attack > 0

    t0 = time.perf_counter()
    for it in range(start, cfg.iterations):
        # 1. Generator: explore where student and teacher disagree, on teacher-plausible inputs.
        generator.train()
        student.eval()
        focus = groups[criteria.phase_of(it, cfg.iterations, len(groups), cfg.phase_cycles)] if groups else None
        z = torch.randn(batch, cfg.latent_dim, device=device)
        x = generator_train(z)
        with bn:
            t_logits = teacher(x)
            bn_loss = bn.loss()
        terms = {
            "adversarial": criteria.adversarial_loss(cfg.adversarial, student(x), t_logits),
            "bn": bn_loss,
            "balance": criteria.class_balance(t_logits, focus),
            "onehot": criteria.onehot(t_logits, focus),
            "activation": criteria.activation(feats.features),
        }
        loss_g = criteria.generator_objective(weights, terms)
        _finite(loss_g, "generator loss", it, out_dir)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

        # 2. Student: learn the teacher on fresh samples plus replayed memories.
        student.train()
        for k in range(cfg.kd_steps):
            with torch.no_grad():
                x_new = generator(torch.randn(batch, cfg.latent_dim, device=device))
            replay = memory.sample(replay_batch)
            x_all = x_new if replay is None else torch.cat([x_new, replay])
            if perturbed:  # the teacher labels the perturbed inputs below: KD around each sample, not only on it
                x_all = augment.perturb(x_all, cfg.input_shift, cfg.input_mix, cfg.input_noise)
                x_all = augment.toward_disagreement(x_all, student, teacher, cfg.input_attack, cfg.attack_steps,
                                                    cfg.attack_fraction)
            with torch.no_grad():
                t_all = teacher(x_all)  # one teacher pass serves the student and the memory
            loss_s = criteria.kd_loss(cfg.kd_loss, student_train(x_all), t_all, cfg.kd_temperature)
            _finite(loss_s, "student loss", it, out_dir)
            opt_s.zero_grad(set_to_none=True)
            loss_s.backward()
            opt_s.step()
            if average is not None:
                average.update(student)
            if k < cfg.vae_steps:
                n = x_new.shape[0]
                if perturbed:  # the memory learns the clean samples; it asks the teacher itself
                    memory.observe(x_new, None, replay, None)
                else:
                    memory.observe(x_new, t_all[:n], replay, None if replay is None else t_all[n:])
        if sched is not None:
            sched.step()

        step = it + 1
        if world.is_main and (step % cfg.eval_every == 0 or step == cfg.iterations):
            row = {"step": step, "agreement": agreement(shipped, probes, probe_labels),
                   "accuracy": evaluate(shipped) if evaluate else None,
                   "loss_student": float(loss_s.detach()), "loss_generator": float(loss_g.detach()),
                   "elapsed_s": round(elapsed_before + time.perf_counter() - t0, 3)}
            history.append(row)
        if progress and world.is_main:
            progress(step, history[-1] if history else {})
        if step % cfg.checkpoint_every == 0 and step < cfg.iterations:
            rngs = parallel.gather(torch.get_rng_state(), world)  # every rank's stream, for an exact resume
            if world.is_main:
                _save_checkpoint(ckpt_path, step, student, generator, memory, opt_s, opt_g, sched, average, history,
                                 elapsed_before + time.perf_counter() - t0, rngs)
    bn.remove()
    feats.remove()
    student.eval()
    parallel.check_in_sync({"student": student, "generator": generator,
                            **({"average": average.model} if average is not None else {}),
                            **({"vae": memory.vae} if isinstance(memory, VAEMemory) else {})}, world)
    if isinstance(memory, VAEMemory):
        memory.trainer = memory.vae  # the DDP wrapper dies with the process group
    return DistillResult(shipped, generator, memory, history, elapsed_before + time.perf_counter() - t0,
                         cfg.iterations, resumed_from)


def _rank_seed(seed: int, world: World) -> int:
    """Each process draws its own samples; a prime stride keeps the ranks' streams apart for nearby seeds."""
    return seed + 7919 * world.rank


def _num_classes(teacher: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    with torch.no_grad():
        return int(teacher(torch.zeros(2, *shape, device=device)).shape[1])


def _save_checkpoint(path: Path, step: int, student, generator, memory, opt_s, opt_g, sched, average, history,
                     elapsed, rngs: list[torch.Tensor]) -> None:
    state = {"iteration": step, "student": student.state_dict(), "generator": generator.state_dict(),
             "memory": memory.state_dict(), "opt_s": opt_s.state_dict(), "opt_g": opt_g.state_dict(),
             "sched": sched.state_dict() if sched is not None else {}, "history": history,
             "elapsed": elapsed, "rng": rngs[0], "rng_ranks": rngs}
    if average is not None:
        state["average"] = average.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"checkpoint {path} is corrupt or not from this pipeline; delete it or drop --resume ({str(exc)[:120]})") from exc


def expected_accuracy(history: list[dict]) -> float | None:
    """Mean accuracy over the second half of training: the paper's robustness measure."""
    vals = [r["accuracy"] for r in history[len(history) // 2:] if r.get("accuracy") is not None]
    return sum(vals) / len(vals) if vals else None


def largest_drop(history: list[dict], key: str = "accuracy") -> float | None:
    vals = [r[key] for r in history[len(history) // 2:] if r.get(key) is not None]
    drops = [a - b for a, b in zip(vals, vals[1:])]
    return max([0.0] + drops) if vals else None


def _isfinite(v: float) -> bool:
    return v is not None and math.isfinite(v)
