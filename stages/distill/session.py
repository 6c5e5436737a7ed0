"""What the distillation loop works on, built once around it: the models, optimisers, memory and probes,
the resume state, several processes and the memory layout. The loop itself is in engine.py."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.errors import RunError, UsageError
from core.fileio import atomic_path
from core.world import World
from stages.distill import augment, parallel
from stages.distill.averaging import WeightAverage
from stages.distill.config import DistillConfig
from stages.distill.memory import NoReplay, VAEMemory
from stages.distill.networks import VAE, auto_vae_width
from stages.distill.probes import fit as probe_fit, make_probes, probes_per_class
from stages.distill.stopping import Pace, cool_down_end, fitting_iterations, plateaued
from stages.distill.synthesizer import build_synthesizer

CHECKPOINT = "checkpoint.pt"
# Iterations timed (after a warm-up one) before the run's length is estimated.
ESTIMATE_AFTER = 3


@dataclass
class DistillResult:
    student: nn.Module
    generator: nn.Module
    memory: object
    history: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    iterations: int = 0  # iterations run, the resumed ones included
    resumed_from: int | None = None
    stopped_by: str = "iterations"  # iterations (the cap) | plateau | time-budget
    plateau_at: int | None = None  # the iteration the plateau was found at; the run stopped after its cool-down
    estimate: dict = field(default_factory=dict)  # the pace measured on the first iterations, and what it predicted
    probes_s: float = 0.0  # the probe set's synthesis, before the loop's clock starts
    probes_robust: bool = False  # the probe set was made again robustly (probes.make_probes)

    @property
    def vae(self) -> VAE | None:
        return self.memory.vae if isinstance(self.memory, VAEMemory) else None


def vae_memory(cfg: DistillConfig, vae: VAE, teacher: nn.Module, trained: bool = False) -> VAEMemory:
    """A VAE memory around `vae` (a fresh one, or a bundle's) with the run's VAE settings. `trained`: the VAE
    has learned a stream already (a shipped one), so it replays from the first draw."""
    memory = VAEMemory(vae, teacher, lr=cfg.lr_vae, kld_weight=cfg.vae_kld_weight, balanced=cfg.vae_balanced,
                       rehearse=cfg.vae_rehearse)
    if trained:
        memory.updates = 1  # `sample` refuses an untrained VAE, which would replay noise
    return memory


def build_vae(cfg: DistillConfig, shape: tuple[int, ...]) -> VAE:
    """A fresh VAE of the run's latent size and width (`vae_width = 0` sizes it from the input)."""
    return VAE(shape, cfg.vae_latent_dim, width=cfg.vae_width or auto_vae_width(shape))


def build_memory(cfg: DistillConfig, shape: tuple[int, ...], teacher: nn.Module, device: torch.device):
    if cfg.replay == "vae":
        return vae_memory(cfg, build_vae(cfg, shape).to(device), teacher)
    return NoReplay()


def student_optimizer(cfg: DistillConfig, student: nn.Module) -> torch.optim.Optimizer:
    if cfg.student_optimizer == "sgd":
        return torch.optim.SGD(student.parameters(), lr=cfg.lr_student, momentum=0.9, weight_decay=5e-4)
    return torch.optim.Adam(student.parameters(), lr=cfg.lr_student)


class Layout:
    """Channels-last weights for image models on the CPU, where oneDNN's convolutions run faster in that layout.
    Every model it touched, the caller's teacher included, goes back to the default layout."""

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


class TeacherFrozen:
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


class Session:
    """Everything the loop works on, built once: models, optimisers, memory, probes, resume state, DDP."""

    def __init__(self, cfg: DistillConfig, teacher: nn.Module, student: nn.Module, shape: tuple[int, ...],
                 out_dir: Path, device: torch.device, seed: int, memory, world: World, layout: Layout,
                 steer: Callable[[int], list[int] | None] | None = None, constant_lr: bool = False,
                 inform: Callable[[str], None] | None = None):
        if world.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        self.cfg, self.out_dir, self.world, self.seed, self.device = cfg, out_dir, world, seed, device
        self.teacher = teacher.to(device).eval()
        self.student = student.to(device)
        num_classes = _num_classes(self.teacher, shape, device)
        self.synth = build_synthesizer(cfg, self.teacher, shape, device, num_classes)
        self.memory = memory if memory is not None else build_memory(cfg, shape, self.teacher, device)
        # The student replays only a memory handed in (an update's shipped VAE: what the old teacher taught). A VAE
        # this run builds only learns the stream, for the bundle's later updates: replayed within its own run, it
        # cost teacher passes and did not pay (benchmarks/README.md, replay modes).
        self.replays = memory is not None
        layout.adopt(self.teacher, self.student, self.synth.generator, self.vae)
        layout.check(shape, device, self.teacher, self.student)
        self.opt = student_optimizer(cfg, self.student)
        self.sched = None if constant_lr else torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.iterations)
        self.average = WeightAverage(self.student, cfg.ema_decay) if cfg.ema_decay > 0 else None
        layout.adopt(self.average.model if self.average is not None else None)
        self.shipped = self.average.model if self.average is not None else self.student  # evaluated and returned
        self.steer = steer
        self.probes, self.probe_labels, self.probe_log_probs, self.probes_s = None, None, None, 0.0
        self.probes_robust = False
        if world.is_main:
            t0 = time.perf_counter()
            announce = _probe_announcer(num_classes * probes_per_class(num_classes, cfg.probe_per_class), inform)
            probes = make_probes(self.teacher, shape, num_classes, cfg.probe_per_class, seed=seed + 1234,
                                 device=device, announce=announce)
            self.probes, self.probe_labels, self.probes_robust = probes.inputs, probes.labels, probes.robust
            self.probes_s = time.perf_counter() - t0
            with torch.no_grad():
                self.probe_log_probs = torch.log_softmax(self.teacher(self.probes), dim=1)
        if world.distributed:
            torch.manual_seed(_rank_seed(seed, world))  # same initial weights (DDP checks), own sample streams
        self.batch, self.replay_batch = world.share(cfg.batch_size), world.share(cfg.replay_batch)
        self.perturbed = cfg.input_noise > 0 or cfg.input_attack > 0
        self.reach = 1.0  # the fraction of the configured noise and attack the KD batch gets (size_perturbation)
        self.history: list[dict] = []
        self.start, self.elapsed_before, self.resumed_from, self.wall_s = 0, 0.0, None, 0.0
        self.done, self.stopped_by, self.estimate, self.pace = 0, "iterations", {}, Pace()
        self.plateau_at: int | None = None  # found there; the cool-down then ends at the schedule's T_max
        self.student_train = self.student

    @property
    def vae(self) -> VAE | None:
        return self.memory.vae if isinstance(self.memory, VAEMemory) else None

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / CHECKPOINT

    def focus(self, it: int) -> list[int] | None:
        """The classes the generator is steered to at `it` (a benchmark's stress), or None: all of them."""
        return self.steer(it) if self.steer is not None else None

    def remember(self, x_new: torch.Tensor, replay: torch.Tensor | None, t_all: torch.Tensor | None) -> None:
        """The memory learns the clean samples; without the teacher's answers (a perturbed batch) it asks itself."""
        if t_all is None:
            self.memory.observe(x_new, None, replay, None)
        else:
            n = x_new.shape[0]
            self.memory.observe(x_new, t_all[:n], replay, None if replay is None else t_all[n:])

    def size_perturbation(self, samples: int = 256) -> None:
        """Re-size the KD batch's perturbation on the generator's current samples; rank 0 decides for all."""
        reach = None
        if self.world.is_main:
            with torch.no_grad():
                x = self.synth.sample(samples)
            reach = augment.label_safe_reach(x, self.teacher, self.cfg.input_noise, self.cfg.max_label_flips)
        self.reach = parallel.broadcast(reach, self.world)

    def finite(self, value: torch.Tensor, what: str, step: int) -> None:
        if not torch.isfinite(value):
            where = f"; last good checkpoint kept at {self.checkpoint}" if self.checkpoint.exists() else ""
            raise RunError(f"distill: {what} became {value.item()} at step {step}{where}")

    def _parts(self) -> dict:
        parts = {"student": self.student, "synthesizer": self.synth, "memory": self.memory, "opt_s": self.opt}
        if self.sched is not None:
            parts["sched"] = self.sched
        if self.average is not None:
            parts["average"] = self.average
        return parts

    def restore(self) -> None:
        """Continue from the checkpoint in `out_dir`, if there is one (rank 0 reads it for all)."""
        found = self.world.is_main and self.checkpoint.exists()
        state = parallel.broadcast(_load_checkpoint(self.checkpoint) if found else None, self.world)
        if state is None:
            return
        if self.average is not None and "average" not in state:
            raise UsageError(f"checkpoint {self.checkpoint} was written without distill.ema_decay; resume with "
                             "--set distill.ema_decay=0 or start afresh")
        for name, part in self._parts().items():
            part.load_state_dict(state[name])
        self.history = list(state["history"])
        self.reach = float(state.get("reach", 1.0))
        self.plateau_at = state.get("plateau_at")
        self.start = self.resumed_from = self.done = int(state["iteration"])
        self.elapsed_before = self.wall_s = float(state["elapsed"])
        rngs = state["rng_ranks"]
        if len(rngs) == self.world.size:
            torch.set_rng_state(rngs[self.world.rank])
        else:  # resumed with another process count: fresh, still reproducible streams
            torch.manual_seed(_rank_seed(self.seed, self.world) + self.start)

    def wrap(self) -> None:
        """Several processes: DDP averages the gradients of what each rank trains; the bare modules stay for
        everything that needs no synchronisation (the student judged by the generator, sampling, eval)."""
        if self.world.distributed and self.cfg.synthesizer == "conditional":
            raise UsageError("distill.synthesizer 'conditional' runs in one process; several processes share the "
                             "adversarial and meta synthesizers only")
        self.student_train = parallel.wrap(self.student, self.world, self.device)
        self.synth.trainer = parallel.wrap(self.synth.learner, self.world, self.device)
        if self.vae is not None:
            self.memory.trainer = parallel.wrap(self.vae, self.world, self.device)

    def after_iteration(self, step: int, started: float, t0: float, evaluate, progress, inform, loss_s, loss_g,
                        train_agreement: float) -> str | None:
        """Evaluate, report, checkpoint; returns why distillation stops here, or None to go on."""
        now = time.perf_counter()
        elapsed = self.elapsed_before + now - t0
        self.pace.add(now - started)
        main = self.world.is_main
        if self.pace.timed == ESTIMATE_AFTER and main:
            self._estimate(step, elapsed, inform)
        stop, cool = None, None
        if main and (step % self.cfg.eval_every == 0 or step == self.cfg.iterations):
            self.history.append(self._row(step, elapsed, evaluate, loss_s, loss_g, train_agreement))
            if self.plateau_at is None and plateaued([r["agreement"] for r in self.history],
                                                     [r.get("probe_kl") for r in self.history],
                                                     self.cfg.patience, self.cfg.min_gain):
                cool = step
        if main and self.plateau_at is not None and step >= self.sched.T_max:  # the cool-down has ended
            stop = "plateau"
        if main and stop is None and self.cfg.time_budget and elapsed >= self.cfg.time_budget:
            stop = "time-budget"
        cool = parallel.broadcast(cool, self.world)
        if cool is not None:
            stop = stop or self._cool_down(cool)
        stop = parallel.broadcast(stop, self.world)  # rank 0 decides for all
        if stop is not None and main and (not self.history or self.history[-1]["step"] != step):  # evaluate the end
            self.history.append(self._row(step, elapsed, evaluate, loss_s, loss_g, train_agreement))
        if progress and main:
            progress(step, self.history[-1] if self.history else {})
        if stop is None and step % self.cfg.checkpoint_every == 0 and step < self.cfg.iterations:
            rngs = parallel.gather(torch.get_rng_state(), self.world)  # every rank's stream, for an exact resume
            if main:
                self._save(step, elapsed, rngs)
        self.wall_s, self.done = elapsed, step
        if stop is not None:
            self.stopped_by = stop
        return stop

    def _cool_down(self, step: int) -> str | None:
        """A plateau at `step`: the learning rate anneals from where it is to its floor over the cool-down, then
        the run stops ("plateau"); at once where there is no schedule or it has ended already."""
        self.plateau_at = step
        if self.sched is None:
            return "plateau"
        end = cool_down_end(step, self.cfg.eval_every, self.sched.T_max)
        if end <= step:
            return "plateau"
        self.sched.T_max = end  # the cosine's tail from here: (1 + cos(pi t / T)) falls to 0 at T
        return None

    def anneal(self) -> None:
        """One step of the cosine schedule, held at its floor past `T_max`: a budget's plan may end before the
        run does, and cosine annealing run past its period would raise the learning rate again."""
        if self.sched is not None and self.sched.last_epoch < self.sched.T_max:
            self.sched.step()

    def _row(self, step: int, elapsed: float, evaluate, loss_s, loss_g, train_agreement: float) -> dict:
        agreement, kl = probe_fit(self.shipped, self.probes, self.probe_labels, self.probe_log_probs)
        return {"step": step, "agreement": agreement, "probe_kl": round(kl, 6),
                "train_agreement": round(train_agreement, 4), "reach": round(self.reach, 4),
                "lr_student": self.opt.param_groups[0]["lr"],
                "accuracy": evaluate(self.shipped) if evaluate else None,
                "loss_student": float(loss_s.detach()), "loss_generator": float(loss_g.detach()),
                "elapsed_s": round(elapsed, 3)}

    def _estimate(self, step: int, elapsed: float, inform) -> None:
        """The pace of the first iterations, what it predicts for the whole run, and under a time budget how
        many iterations fit (the learning rate then anneals over those)."""
        per_it = self.pace.per_iteration
        cap = self.cfg.iterations
        planned = cap
        if self.cfg.time_budget:
            planned = fitting_iterations(per_it, self.cfg.time_budget, elapsed, step, cap)
            if self.sched is not None and planned < cap:
                self.sched.T_max = planned
        self.estimate = {"s_per_iteration": round(per_it, 4), "planned_iterations": planned,
                         "estimated_s": round(elapsed + per_it * (planned - step), 1)}
        if inform is not None:
            budget = f" within the {self.cfg.time_budget:g} s budget" if self.cfg.time_budget else ""
            early = "; it stops earlier once the student stops learning the teacher on the probes" if self.cfg.patience else ""
            inform(f"distill: {per_it:.2f} s per iteration: about {self.estimate['estimated_s']:.0f} s for "
                   f"{planned} iterations{budget}{early}")

    def _save(self, step: int, elapsed: float, rngs: list[torch.Tensor]) -> None:
        state = {name: part.state_dict() for name, part in self._parts().items()}
        state.update({"iteration": step, "history": self.history, "elapsed": elapsed, "rng_ranks": rngs,
                      "reach": self.reach, "plateau_at": self.plateau_at})
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def result(self) -> DistillResult:
        self.student.eval()
        models = {"student": self.student, "generator": self.synth.generator}
        if self.average is not None:
            models["average"] = self.average.model
        if self.vae is not None:
            models["vae"] = self.vae
        parallel.check_in_sync(models, self.world)
        if self.vae is not None:
            self.memory.trainer = self.vae  # the DDP wrapper dies with the process group
        return DistillResult(self.shipped, self.synth.sampler, self.memory, self.history, self.wall_s,
                             self.done, self.resumed_from, self.stopped_by, self.plateau_at, self.estimate,
                             self.probes_s, self.probes_robust)


def _probe_announcer(count: int, inform: Callable[[str], None] | None) -> Callable[[float, bool], None] | None:
    if inform is None:
        return None

    def announce(seconds: float, again: bool) -> None:
        if again:
            inform(f"distill: the teacher's labels on the probes break under mild noise: making them again, "
                   f"robustly, about {seconds:.0f} s more")
        else:
            inform(f"distill: synthesizing {count} held-out probes for the stopping rule: about {seconds:.0f} s "
                   "before the first iteration")
    return announce


def _rank_seed(seed: int, world: World) -> int:
    """Each process draws its own samples; a prime stride keeps the ranks' streams apart for nearby seeds."""
    return seed + 7919 * world.rank


def _num_classes(teacher: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    with torch.no_grad():
        return int(teacher(torch.zeros(2, *shape, device=device)).shape[1])


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"checkpoint {path} is corrupt or not from this pipeline; delete it or drop --resume ({str(exc)[:120]})") from exc


