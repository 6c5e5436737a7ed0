"""Distillation stage: loss terms, replay memories, history rows, exact resume (smoke-sized, CPU)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from pipeline.config import load_config
from core.errors import UsageError
from stages.distill import criteria, synthesizer
from stages.distill.averaging import WeightAverage
from stages.distill.engine import build_memory, build_vae, distill, expected_accuracy, largest_drop, vae_memory
from stages.distill.memory import NoReplay, VAEMemory
from stages.distill.networks import VAE, auto_vae_width, build_student, param_count, student_spec

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class TinyTeacher(nn.Module):
    """A BN-first teacher: its first BatchNorm sees the raw input, so its statistics are known."""

    def __init__(self, mean: float = 0.5, std: float = 2.0):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(1)
        self.bn0.running_mean.fill_(mean)
        self.bn0.running_var.fill_(std**2)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.conv(self.bn0(x)))


def _smoke_cfg(**distill):
    cfg = load_config(overrides={"preset": "smoke"}).distill
    return dataclasses.replace(cfg, **distill)


def _student():
    return build_student(student_spec(SHAPE, 10, 4000, 0.5))


# ---- loss terms ---------------------------------------------------------------------------------------

def test_bn_term_near_zero_on_matching_stats_and_larger_when_shifted():
    torch.manual_seed(0)
    teacher = TinyTeacher(mean=0.5, std=2.0).eval()
    only_first = criteria.BNStatistics(teacher)
    only_first.layers = only_first.layers[:1]
    x = torch.randn(4096, *SHAPE)
    matched = (x - x.mean()) / x.std(unbiased=False) * 2.0 + 0.5
    with only_first:
        teacher(matched)
        loss_matched = only_first.loss().item()
    with only_first:
        teacher(matched + 1.5)
        loss_shifted = only_first.loss().item()
    with only_first:
        teacher(matched * 3.0)
        loss_scaled = only_first.loss().item()
    only_first.remove()
    assert loss_matched < 1e-3
    # in running-std units: a shift of 1.5 is 0.75 of the layer's std of 2; a scale of 3 is a log-variance of 2.2
    assert loss_shifted > 0.5 and loss_scaled > 1.0
    assert loss_shifted > 100 * loss_matched


@pytest.mark.parametrize("layout", ["default", "channels_last", "vector"])
def test_bn_term_matches_the_textbook_statistics(layout):
    torch.manual_seed(0)
    bn_layer = nn.BatchNorm1d(6) if layout == "vector" else nn.BatchNorm2d(6)
    bn_layer.running_mean.uniform_(-1, 1)
    bn_layer.running_var.uniform_(0.5, 2)
    bn_layer.eval()
    x = torch.randn(32, 6) * 1.7 + 0.3 if layout == "vector" else torch.randn(32, 6, 5, 5) * 1.7 + 0.3
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    dims = [0] + list(range(2, x.dim()))
    running_var = bn_layer.running_var + bn_layer.eps
    shift = (x.mean(dims) - bn_layer.running_mean) / running_var.sqrt()
    spread = torch.log((x.var(dims, unbiased=False) + bn_layer.eps) / running_var)
    expected = shift.pow(2).mean().sqrt() + spread.pow(2).mean().sqrt()
    term = criteria.BNStatistics(bn_layer)
    with term:
        bn_layer(x)
        got = term.loss()
    term.remove()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bn_hooks_only_record_inside_context():
    teacher = TinyTeacher().eval()
    bn = criteria.BNStatistics(teacher)
    teacher(torch.randn(8, *SHAPE))
    assert bn.loss().item() == 0.0
    with bn:
        teacher(torch.randn(8, *SHAPE))
        assert bn.loss().item() > 0
    bn.remove()


def test_class_balance_minimal_for_uniform_class_predictions():
    k = 10
    uniform = torch.eye(k).repeat(5, 1) * 20.0  # confident, every class equally often
    skewed = torch.zeros(50, k)
    skewed[:, 3] = 20.0  # confident, always class 3
    assert criteria.class_balance(uniform).item() == pytest.approx(-math.log(k), abs=1e-4)
    assert criteria.class_balance(skewed).item() > criteria.class_balance(uniform).item() + 1.0
    random_logits = torch.randn(50, k) * 3
    assert criteria.class_balance(random_logits).item() >= -math.log(k) - 1e-6


def test_js_divergence_zero_for_equal_logits_positive_otherwise():
    a = torch.randn(16, 10)
    assert criteria.js_divergence(a, a.clone()).item() == pytest.approx(0.0, abs=1e-6)
    b = a + torch.randn(16, 10) * 4
    js = criteria.js_divergence(a, b).item()
    assert 0 < js <= math.log(2) + 1e-6
    assert criteria.js_divergence(b, a).item() == pytest.approx(js, rel=1e-5)  # symmetric
    # the generator minimises the negated disagreement
    assert criteria.adversarial_loss(a, b).item() == pytest.approx(-js, rel=1e-6)


def test_onehot_lower_for_confident_logits():
    confident = torch.eye(10) * 15.0
    vague = torch.eye(10) * 0.5
    assert criteria.onehot(confident).item() < criteria.onehot(vague).item()
    assert criteria.onehot(confident).item() < 1e-3


def test_class_steering_pushes_samples_into_the_group_and_balances_within_it():
    group = [2, 7]
    in_group = torch.zeros(4, 10)
    in_group[[0, 1], 2] = 15.0
    in_group[[2, 3], 7] = 15.0  # confident, two of each group class
    outside = torch.zeros(4, 10)
    outside[:, 4] = 15.0  # confident, but in class 4
    # Confident samples of an outside class are fine unsteered and costly steered.
    assert criteria.onehot(outside).item() < 1e-3
    assert criteria.onehot(outside, group).item() > 10.0
    assert criteria.onehot(in_group, group).item() < 1e-3
    # The gradient of the steered term raises the most likely group class, not the sample's own argmax.
    logits = outside.clone()
    logits[:, 7] = 1.0
    logits.requires_grad_(True)
    criteria.onehot(logits, group).backward()
    assert (logits.grad[:, 7] < 0).all() and (logits.grad[:, 4] > 0).all()
    # Balance within the group: both group classes equally often is optimal, whatever happens outside.
    only_two = in_group.clone()
    only_two[:, 2] = 15.0
    only_two[:, 7] = 0.0
    assert criteria.class_balance(in_group, group).item() == pytest.approx(-math.log(2), abs=1e-4)
    assert criteria.class_balance(only_two, group).item() > criteria.class_balance(in_group, group).item() + 0.5


def test_activation_and_kd_losses():
    assert criteria.activation(torch.ones(4, 3)).item() == -1.0
    assert criteria.activation(None).item() == 0.0
    a = torch.randn(8, 10)
    assert criteria.kd_loss("l1", a, a).item() == 0.0
    assert criteria.kd_loss("kl", a, a, temperature=2.0).item() == pytest.approx(0.0, abs=1e-5)
    assert criteria.kd_loss("kl", a, a + torch.randn(8, 10)).item() > 0


def test_generator_objective_is_a_switchable_weighted_sum():
    terms = {"adversarial": torch.tensor(-2.0), "bn": torch.tensor(3.0), "balance": torch.tensor(-1.0)}
    assert criteria.generator_objective({"adversarial": 1.0, "bn": 0.5, "balance": 0.0}, terms).item() == pytest.approx(-0.5)
    assert criteria.generator_objective({"bn": 0.0}, terms).item() == 0.0


def test_feature_diversity_charges_samples_alike_within_a_batch_and_like_recent_batches():
    torch.manual_seed(0)
    spread = torch.randn(16, 32)
    alike = torch.randn(1, 32) + 0.05 * torch.randn(16, 32)
    assert criteria.FeatureDiversity().loss(alike).item() > criteria.FeatureDiversity().loss(spread).item() + 1.0

    term = criteria.FeatureDiversity(size=40)
    first = term.loss(spread).item()
    assert term.loss(spread).item() > first + 1.0  # the same samples again cost more: the bank remembers them
    for _ in range(3):
        term.loss(torch.randn(16, 32))
    assert term.bank.shape == (40, 32)  # the newest `size` features, detached
    assert not term.bank.requires_grad

    fresh = criteria.FeatureDiversity()
    fresh.load_state_dict(term.state_dict())
    assert torch.equal(fresh.bank, term.bank)
    empty = criteria.FeatureDiversity()
    empty.load_state_dict(criteria.FeatureDiversity().state_dict())
    assert empty.bank is None
    assert criteria.FeatureDiversity().loss(torch.randn(1, 8)).item() == 0.0  # nothing to differ from


def test_feature_diversity_gradient_spreads_the_features():
    torch.manual_seed(0)
    f = (torch.randn(1, 16) + 0.3 * torch.randn(32, 16)).requires_grad_()
    term, opt = criteria.FeatureDiversity(), torch.optim.Adam([f], lr=0.05)

    def mean_cosine():
        u = torch.nn.functional.normalize(f.detach(), dim=1)
        return ((u @ u.T).sum() - len(u)).item() / (len(u) * (len(u) - 1))

    before = mean_cosine()
    for _ in range(20):
        opt.zero_grad()
        term.loss(f).backward()
        opt.step()
    assert mean_cosine() < before - 0.3


def test_feature_diversity_is_in_the_objective_only_for_a_teacher_with_batchnorm():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with_bn, without_bn = (synthesizer.build_synthesizer(_smoke_cfg(), t, SHAPE, torch.device("cpu"), 10)
                           for t in (TinyTeacher().eval(), plain.eval()))
    try:
        assert with_bn.weights["diversity"] == _smoke_cfg().w_diversity > 0
        assert without_bn.weights["diversity"] == 0.0
        x = torch.randn(8, *SHAPE)
        with_bn.objective(x, _student().eval(), None)
        without_bn.objective(x, _student().eval(), None)
        assert with_bn.diversity.bank.shape == (8, 8)  # TinyTeacher's penultimate features: 8 channels
        assert without_bn.diversity.bank is None
    finally:
        with_bn.close()
        without_bn.close()


def test_confidence_is_eased_only_where_the_batchnorm_prior_steers_samples_for_a_student():
    """The confidence term keeps its whole weight without the BN prior (no BatchNorm, or w_bn 0) and for samples
    no student learns from (a model quantized as it is)."""
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    cfg, cpu = _smoke_cfg(), torch.device("cpu")
    made = {"bn": synthesizer.AdversarialSynthesizer(cfg, TinyTeacher().eval(), SHAPE, cpu),
            "plain": synthesizer.AdversarialSynthesizer(cfg, plain, SHAPE, cpu),
            "bn prior off": synthesizer.AdversarialSynthesizer(dataclasses.replace(cfg, w_bn=0.0),
                                                               TinyTeacher().eval(), SHAPE, cpu),
            "no student": synthesizer.AdversarialSynthesizer(cfg, TinyTeacher().eval(), SHAPE, cpu,
                                                             for_student=False)}
    try:
        assert made["bn"].weights["onehot"] == pytest.approx(cfg.w_onehot * synthesizer.EASED_CONFIDENCE)
        assert synthesizer.EASED_CONFIDENCE < 1
        for name in ("plain", "bn prior off", "no student"):
            assert made[name].weights["onehot"] == cfg.w_onehot, name
        assert made["no student"].weights["diversity"] == 0.0 < made["bn"].weights["diversity"]
    finally:
        for s in made.values():
            s.close()


@pytest.mark.parametrize("shape, shift", [((1, 16, 16), 1), (SHAPE, 0), ((64,), 0)])
def test_the_generator_objective_reads_images_moved_and_small_or_flat_inputs_as_they_are(shape, shift):
    """The teacher and the student see the synthesizer's images through the same random translation per batch,
    of at most max_shift pixels each way, so the generator learns inputs the teacher reads alike when moved;
    images under 14 pixels a side and flat inputs (tabular features, pixels given as a vector) are read as made."""
    def model():
        return TinyTeacher() if len(shape) == 3 else nn.Linear(64, 10)

    teacher, student = model().eval(), model().eval()
    synth = synthesizer.build_synthesizer(_smoke_cfg(), teacher, shape, torch.device("cpu"), 10)
    seen = {teacher: [], student: []}
    for m in seen:
        m.register_forward_pre_hook(lambda m, args: seen[m].append(args[0].detach().clone()))
    x = torch.randn(4, *shape)
    try:
        for _ in range(60):
            synth.objective(x, student, None)
    finally:
        synth.close()
    assert synthesizer.max_shift(shape) == shift and synthesizer.max_shift((1, 28, 28)) == 2
    assert all(torch.equal(t, s) for t, s in zip(seen[teacher], seen[student], strict=True))
    if shift == 0:
        assert all(torch.equal(v, x) for v in seen[teacher])
        return
    rolls = {(dy, dx): torch.roll(x, (dy, dx), (2, 3)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    # StopIteration here: a move that is no translation within reach
    moves = [next(k for k, r in rolls.items() if torch.equal(v, r)) for v in seen[teacher]]
    assert len(set(moves)) == 9  # every translation within reach is drawn


def test_a_conditional_run_saves_the_sampler_that_stage_2_rebuilds(tmp_path):
    """A conditional run's saved generator draws as its synthesizer did (every class asked for equally, through the
    round's noisy layer), and stage 2's rebuild from the file draws the same samples; a file holding the bare
    generator (fed noise, it makes what the student never learnt from) is refused rather than calibrated on."""
    from core import workdir as wd
    from core.errors import RunError
    from stages.distill.networks import build_generator, build_sampler

    cfg = _smoke_cfg(synthesizer="conditional", iterations=2)
    res = distill(cfg, TinyTeacher().eval(), _student(), SHAPE, tmp_path / "run", torch.device("cpu"))
    path = wd.save_module(res.generator, tmp_path / "generator.safetensors")
    loaded = wd.load_module(build_sampler("conditional", cfg.latent_dim, SHAPE, 10, cfg.generator_width), path)
    asked = []
    loaded.condition.embedding.register_forward_hook(lambda m, args, out: asked.append(args[0]))
    made = []
    for sampler in (res.generator.eval(), loaded.eval()):
        torch.manual_seed(3)
        with torch.no_grad():
            made.append(sampler(torch.randn(40, cfg.latent_dim)))
    assert torch.equal(made[0], made[1])
    assert torch.bincount(asked[0], minlength=10).tolist() == [4] * 10
    bare = wd.save_module(build_generator(cfg.latent_dim, SHAPE, width=cfg.generator_width), tmp_path / "bare.safetensors")
    with pytest.raises(RunError, match="does not fit"):
        wd.load_module(build_sampler("conditional", cfg.latent_dim, SHAPE, 10, cfg.generator_width), bare)


# ---- memories -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [SHAPE, (12,)])
def test_vae_memory_sample_shapes_and_nbytes(shape):
    torch.manual_seed(0)
    teacher = TinyTeacher().eval() if len(shape) == 3 else nn.Sequential(nn.Linear(12, 10)).eval()
    vae = VAE(shape, 8)
    mem = VAEMemory(vae, teacher, lr=1e-3)
    assert mem.sample(5) is None  # nothing learnt yet: no replay
    info = mem.observe(torch.randn(16, *shape))
    assert math.isfinite(info["vae_loss"])
    mem.observe(torch.randn(16, *shape))  # second update rehearses its own samples
    x = mem.sample(5)
    assert x.shape == (5, *shape)
    expected = sum(p.numel() * 4 for p in vae.parameters()) + sum(b.numel() * b.element_size() for b in vae.buffers())
    assert mem.nbytes() == expected > 0
    assert mem.updates == 2


def test_vae_memory_asks_the_teacher_only_for_what_it_was_not_given():
    """With the batch's logits handed in, a rehearsing update asks the teacher about its rehearsal samples
    only, and learns exactly what it learns when it asks about everything."""
    teacher = TinyTeacher().eval()
    seen = []
    teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    x1, x2 = torch.randn(16, *SHAPE), torch.randn(16, *SHAPE)
    with torch.no_grad():
        logits2 = teacher(x2)
    vaes = []
    for given in (None, logits2):
        torch.manual_seed(0)
        mem = VAEMemory(VAE(SHAPE, 8), teacher, lr=1e-3)
        mem.observe(x1)
        seen.clear()
        mem.observe(x2, given)
        vaes.append(mem.vae)
        # 4 rehearsal samples: one class-balancing step on them; their answers; the 8 + 4 reconstructions
        assert seen == ([4, 12, 12] if given is None else [4, 4, 12])
    for a, b in zip(vaes[0].parameters(), vaes[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_class_balanced_sampling_moves_towards_balanced_classes():
    torch.manual_seed(0)
    teacher = TinyTeacher().eval()
    with torch.no_grad():
        teacher.head[-1].bias[0] = 2.0  # the teacher favours class 0: prior samples are unbalanced
    mem = VAEMemory(VAE(SHAPE, 8), teacher, lr=1e-3, z_steps=5)
    mem.observe(torch.randn(16, *SHAPE))
    mem.vae.eval()
    torch.manual_seed(1)
    mem.balanced = False
    z0 = mem._balanced_latents(256)
    mem.balanced = True
    torch.manual_seed(1)
    z1 = mem._balanced_latents(256)
    with torch.no_grad():
        b0 = criteria.class_balance(teacher(mem.vae.decoder(z0))).item()
        b1 = criteria.class_balance(teacher(mem.vae.decoder(z1))).item()
    assert b1 < b0


def test_no_replay_interface():
    mem = NoReplay()
    assert mem.sample(4) is None and mem.nbytes() == 0 and mem.observe(torch.randn(2, *SHAPE)) == {}


# ---- the loop ------------------------------------------------------------------------------------------------

class FixedMemory(NoReplay):
    """Always replays the same batch, so we can tell whether replay reaches the student."""

    name = "fixed"

    def __init__(self, batch: torch.Tensor):
        self.batch = batch
        self.calls = 0

    def sample(self, n):
        self.calls += 1
        return self.batch[:n]


def test_replay_samples_reach_the_students_loss(tmp_path):
    cfg = _smoke_cfg(iterations=1, kd_steps=1, batch_size=8, replay_batch=4, eval_every=1, checkpoint_every=100,
                     input_noise=0.0, input_attack=0.0)
    teacher = TinyTeacher().eval()
    seen: list[torch.Tensor] = []

    def run(batch):
        torch.manual_seed(0)
        student = _student()
        student.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
        res = distill(cfg, teacher, student, SHAPE, tmp_path / str(len(seen)), torch.device("cpu"), memory=FixedMemory(batch))
        return res

    marker = torch.full((4, *SHAPE), 7.0)
    res_a = run(marker)
    # the student's training batch = fresh generator samples followed by exactly the replayed batch
    train_inputs = [x for x in seen if x.shape[0] == cfg.batch_size + cfg.replay_batch]
    assert train_inputs, "student never trained on a mixed batch"
    assert torch.equal(train_inputs[0][-4:], marker)
    # and a different replay batch changes the student's update (same seed otherwise)
    seen.clear()
    res_b = run(torch.full((4, *SHAPE), -7.0))
    wa = torch.cat([p.flatten() for p in res_a.student.parameters()])
    wb = torch.cat([p.flatten() for p in res_b.student.parameters()])
    assert not torch.equal(wa, wb)
    assert res_a.history[-1]["loss_student"] != res_b.history[-1]["loss_student"]


def test_one_teacher_labelling_serves_steps_per_batch_student_steps(tmp_path):
    cfg = _smoke_cfg(iterations=1, kd_steps=2, steps_per_batch=3, batch_size=8, replay_batch=4, eval_every=1,
                     checkpoint_every=100, input_noise=0.0, input_attack=0.0)
    teacher, student = TinyTeacher().eval(), _student()
    labelled, learnt = [], []
    teacher.register_forward_hook(lambda m, inp, out: labelled.append(inp[0].detach().clone())
                                  if not torch.is_grad_enabled() and inp[0].shape[0] == 12 else None)
    student.register_forward_pre_hook(lambda m, inp: learnt.append(inp[0].detach().clone()) if m.training else None)
    distill(cfg, teacher, student, SHAPE, tmp_path, torch.device("cpu"), memory=FixedMemory(torch.zeros(4, *SHAPE)))
    assert len(labelled) == cfg.kd_steps
    assert len(learnt) == cfg.kd_steps * cfg.steps_per_batch
    # each labelled batch is the one the student learns from, three steps in a row
    for k, batch in enumerate(labelled):
        assert all(torch.equal(x, batch) for x in learnt[3 * k:3 * k + 3])
    assert not torch.equal(labelled[0], labelled[1])


class RecordingMemory(FixedMemory):
    """A fixed replay batch that also records what it is asked to learn."""

    def __init__(self, batch: torch.Tensor):
        super().__init__(batch)
        self.observed: list[torch.Tensor] = []

    def observe(self, x, *args, **kwargs):
        self.observed.append(x.detach().clone())
        return {}


def test_input_noise_reaches_the_student_but_not_the_memory(tmp_path):
    cfg = _smoke_cfg(iterations=1, kd_steps=1, vae_steps=1, batch_size=8, replay_batch=256, eval_every=1,
                     checkpoint_every=100, input_noise=0.5, input_attack=0.0)
    seen: list[torch.Tensor] = []
    student = _student()
    student.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    memory = RecordingMemory(torch.zeros(256, *SHAPE))
    distill(cfg, TinyTeacher().eval(), student, SHAPE, tmp_path, torch.device("cpu"), memory=memory)
    batch = next(x for x in seen if x.shape[0] == 8 + 256)
    noise = batch[8:]  # the replayed zeros plus the student's input noise
    assert abs(noise.std().item() - 0.5) < 0.05 and abs(noise.mean().item()) < 0.05
    # the memory learns the generator's clean samples, not their noisy copies
    assert len(memory.observed) == 1 and not torch.equal(memory.observed[0], batch[:8])
    assert torch.allclose(memory.observed[0], batch[:8], atol=0.5 * 6)


class PixelTeacher(nn.Module):
    """Reads its class off ten pixels: the labels change under any noise on the order of those pixels' spread."""

    def forward(self, x):
        return 4.0 * x.flatten(1)[:, :10]


def test_a_teacher_whose_labels_break_under_the_noise_gets_less_of_it(tmp_path):
    cfg = _smoke_cfg(iterations=1, kd_steps=1, vae_steps=1, batch_size=8, replay_batch=256, eval_every=1,
                     checkpoint_every=100, input_noise=0.5, input_attack=0.0, max_label_flips=0.1)
    seen: list[torch.Tensor] = []
    student = _student()
    student.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    res = distill(cfg, PixelTeacher(), student, SHAPE, tmp_path, torch.device("cpu"),
                  memory=RecordingMemory(torch.zeros(256, *SHAPE)))
    reach = res.history[0]["reach"]
    assert 0 < reach < 0.5
    noise = next(x for x in seen if x.shape[0] == 8 + 256)[8:]  # the replayed zeros plus the KD batch's noise
    assert abs(noise.std().item() - reach * 0.5) < 0.1 * reach * 0.5


def test_steer_moves_the_generator_to_the_group_it_names(tmp_path):
    # The benchmarks' class-phased stress: the last half of the run steers to the odd classes {1, 3, 5, 7, 9}.
    cfg = _smoke_cfg(iterations=24, kd_steps=1, vae_steps=0, replay="none", w_adv=0.0, w_bn=0.0, w_activation=0.0,
                     lr_generator=1e-2, eval_every=24, checkpoint_every=100)
    torch.manual_seed(3)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()  # every class is reachable from the input
    asked = []

    def halves(it: int) -> list[int]:
        asked.append(it)
        return [0, 2, 4, 6, 8] if it < 12 else [1, 3, 5, 7, 9]

    def odd_share(steer) -> float:
        torch.manual_seed(0)
        res = distill(cfg, teacher, _student(), SHAPE, tmp_path / str(steer is None), torch.device("cpu"), seed=0,
                      steer=steer)
        with torch.no_grad():
            res.generator.eval()
            labels = teacher(res.generator(torch.randn(256, cfg.latent_dim))).argmax(1)
        return (labels % 2 == 1).float().mean().item()

    steered, free = odd_share(halves), odd_share(None)
    assert asked == list(range(24))  # asked once per iteration, before the generator's step
    assert steered > 0.9
    assert steered > free + 0.2


def test_constant_lr_keeps_the_students_steps_as_large_as_the_first_and_the_default_anneals_them(tmp_path):
    # The benchmarks' hasty-student stress. Both runs take the same first iteration; under the cosine schedule
    # the last of 4 runs at 15% of the learning rate, and Adam's steps shrink with it.
    cfg = _smoke_cfg(iterations=4, kd_steps=2, eval_every=4, checkpoint_every=100, batch_size=16, replay_batch=8,
                     ema_decay=0.0)

    def steps(constant: bool) -> list[float]:
        torch.manual_seed(0)
        student = _student()
        weights = [torch.cat([p.detach().flatten() for p in student.parameters()])]

        def progress(step, row):
            weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))

        distill(cfg, TinyTeacher().eval(), student, SHAPE, tmp_path / str(constant), torch.device("cpu"),
                progress=progress, constant_lr=constant)
        return [(b - a).abs().mean().item() for a, b in zip(weights, weights[1:])]

    annealed, constant = steps(False), steps(True)
    assert annealed[0] == constant[0]
    assert annealed[-1] < 0.3 * constant[-1]


@pytest.mark.parametrize("mode", ["vae", "none"])
def test_history_rows_and_modes_share_one_loop(tmp_path, mode):
    cfg = _smoke_cfg(replay=mode, iterations=4, eval_every=2, checkpoint_every=100, batch_size=16, replay_batch=8)
    teacher = TinyTeacher().eval()
    memory = build_memory(cfg, SHAPE, teacher, torch.device("cpu"))
    res = distill(cfg, teacher, _student(), SHAPE, tmp_path, torch.device("cpu"), evaluate=lambda m: 0.5, memory=memory)
    assert [r["step"] for r in res.history] == [2, 4]
    for row in res.history:
        assert 0.0 <= row["agreement"] <= 1.0
        assert row["accuracy"] == 0.5
        assert math.isfinite(row["loss_student"]) and math.isfinite(row["loss_generator"])
    assert res.iterations == 4 and res.resumed_from is None
    assert (res.vae is not None) == (mode == "vae")
    if mode == "vae":
        assert res.memory.updates == 4 * cfg.vae_steps


@pytest.mark.parametrize("handed_in", [False, True])
def test_a_vae_the_run_builds_learns_the_stream_without_being_replayed_and_a_shipped_one_is_replayed(tmp_path,
                                                                                                  handed_in):
    cfg = _smoke_cfg(iterations=3, kd_steps=2, eval_every=3, checkpoint_every=100, batch_size=16,
                     replay_batch=8, input_noise=0.0, input_attack=0.0)
    teacher = TinyTeacher().eval()
    memory = vae_memory(cfg, build_vae(cfg, SHAPE), teacher, trained=True) if handed_in else None
    sizes: list[int] = []
    student = _student()
    student.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]) if m.training else None)
    res = distill(cfg, teacher, student, SHAPE, tmp_path, torch.device("cpu"), memory=memory)
    replayed = sizes.count(cfg.batch_size + cfg.replay_batch)
    if handed_in:  # an update's shipped VAE: what the old teacher taught is replayed
        assert replayed > 0
    else:
        assert replayed == 0 and sizes.count(cfg.batch_size) > 0
        assert res.memory.updates == 3 * cfg.vae_steps  # the bundle's memory learnt every iteration


def test_weight_average_follows_the_student_at_its_rate():
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(student, decay=0.99)
    start = student[0].weight.detach().clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(7.0)
        student[1].num_batches_tracked.fill_(3)
    avg.update(student)  # first update: short horizon (keeps 1/10 of the old weights)
    assert torch.allclose(avg.model[0].weight, start + 0.9)
    assert torch.allclose(avg.model[1].running_mean, torch.full((2,), 6.3))  # statistics averaged alike
    assert avg.model[1].num_batches_tracked.item() == 3  # counters are taken as they are
    for _ in range(2000):
        avg.update(student)
    assert avg.updates == 2001 and avg._rate() == 0.99  # the decay rules once the warm-up is over
    assert torch.allclose(avg.model[0].weight, student[0].weight)
    assert torch.allclose(avg.model[1].running_mean, student[1].running_mean)
    assert all(p.requires_grad for p in avg.model.parameters())  # later stages fine-tune it
    with pytest.raises(ValueError):
        WeightAverage(student, decay=1.0)


@pytest.mark.parametrize("decay", [0.0, 0.9])
def test_the_evaluated_and_returned_student_is_the_weight_average(tmp_path, decay):
    cfg = _smoke_cfg(iterations=3, kd_steps=2, eval_every=1, checkpoint_every=100, batch_size=16, replay_batch=8,
                     ema_decay=decay)
    student = _student()
    seen = []
    res = distill(cfg, TinyTeacher().eval(), student, SHAPE, tmp_path, torch.device("cpu"),
                  evaluate=lambda m: seen.append(m) or 0.5)
    assert len(seen) == 3 and all(m is res.student for m in seen)
    if decay == 0.0:
        assert res.student is student
    else:  # a separate model that trails the trained one
        assert res.student is not student
        raw, avg = student.state_dict(), res.student.state_dict()
        assert any(not torch.equal(raw[k], avg[k]) for k in raw if raw[k].is_floating_point())


@pytest.mark.parametrize("perturbed", [False, True])
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, perturbed):
    # perturbed: the KD batch's perturbation is re-sized every 2 iterations and resumed between two re-sizings
    noise = {"input_noise": 0.5, "input_attack": 0.3, "max_label_flips": 0.1} if perturbed else {}
    cfg = _smoke_cfg(iterations=6, checkpoint_every=3, eval_every=2, batch_size=16, replay_batch=8, **noise)
    teacher = PixelTeacher() if perturbed else TinyTeacher().eval()

    torch.manual_seed(123)
    full = distill(cfg, teacher, _student(), SHAPE, tmp_path / "full", torch.device("cpu"), seed=5)

    # interrupted during iteration 4, after the checkpoint of iteration 3 was written
    part_dir = tmp_path / "part"
    torch.manual_seed(123)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, teacher, _student(), SHAPE, part_dir, torch.device("cpu"), seed=5, progress=_stop_at(4))
    assert (part_dir / "checkpoint.pt").exists()
    resumed = distill(cfg, teacher, _student(), SHAPE, part_dir, torch.device("cpu"), seed=5, resume=True)
    assert resumed.resumed_from == 3
    for (name, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(full.memory.vae.state_dict().values(), resumed.memory.vae.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["step"] for r in resumed.history] == [r["step"] for r in full.history]
    assert [r["agreement"] for r in resumed.history] == [r["agreement"] for r in full.history]
    assert [r["reach"] for r in resumed.history] == [r["reach"] for r in full.history]
    assert all(r["reach"] < 1 for r in full.history) == perturbed


def _layouts(*models):
    return {(i, n): p.is_contiguous() for i, m in enumerate(models) for n, p in m.state_dict().items() if p.dim() == 4}


def test_models_come_back_in_the_default_layout_after_a_run_and_after_an_interrupt(tmp_path):
    # The CPU loop runs image models channels-last; safetensors and ONNX export need the default
    # layout back on everything the caller holds, the teacher included, however the run ends.
    cfg = _smoke_cfg(iterations=4, checkpoint_every=2, eval_every=2, batch_size=16, replay_batch=8)
    teacher, student = TinyTeacher().eval(), _student()
    seen = []
    res = distill(cfg, teacher, student, SHAPE, tmp_path / "a", torch.device("cpu"),
                  evaluate=lambda m: seen.append(next(p for p in m.parameters() if p.dim() == 4)
                                                 .is_contiguous(memory_format=torch.channels_last)) or 0.5)
    assert seen and all(seen)  # channels-last while training
    layouts = _layouts(teacher, student, res.student, res.generator, res.memory.vae)
    assert len(layouts) >= 8 and all(layouts.values())
    teacher2, student2 = TinyTeacher().eval(), _student()
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, teacher2, student2, SHAPE, tmp_path / "b", torch.device("cpu"), progress=_stop_at(3))
    assert all(_layouts(teacher2, student2).values())


def test_the_teacher_computes_no_weight_gradients_and_gets_its_flags_back(tmp_path):
    # Every backward pass through the teacher needs input gradients only; its flags are the caller's again
    # after the run, a flag the caller had turned off included, and after an interrupt too.
    cfg = _smoke_cfg(iterations=3, eval_every=1, batch_size=16, replay_batch=8)
    teacher = TinyTeacher().eval()
    teacher.conv.bias.requires_grad_(False)
    before = [p.requires_grad for p in teacher.parameters()]
    seen = []
    res = distill(cfg, teacher, _student(), SHAPE, tmp_path / "a", torch.device("cpu"),
                  evaluate=lambda m: seen.append([p.requires_grad for p in teacher.parameters()]) or 0.5)
    assert len(res.history) == 3 and isinstance(res.memory, VAEMemory) and cfg.input_attack > 0
    assert seen and not any(any(flags) for flags in seen)
    assert all(p.grad is None for p in teacher.parameters())
    assert [p.requires_grad for p in teacher.parameters()] == before and before.count(False) == 1
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, teacher, _student(), SHAPE, tmp_path / "b", torch.device("cpu"), progress=_stop_at(2))
    assert [p.requires_grad for p in teacher.parameters()] == before


class ViewTeacher(nn.Module):
    """Flattens with .view(), as many hand-written models do: a channels-last activation refuses that."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def test_a_teacher_that_views_its_activations_runs_in_the_default_layout(tmp_path):
    teacher = ViewTeacher().eval()
    with pytest.raises(RuntimeError, match="view"):  # what the run would meet without the check
        teacher.to(memory_format=torch.channels_last)(torch.zeros(2, *SHAPE).contiguous(memory_format=torch.channels_last))
    teacher.to(memory_format=torch.contiguous_format)
    cfg = _smoke_cfg(iterations=2, eval_every=1, batch_size=16, replay_batch=8)
    res = distill(cfg, teacher, _student(), SHAPE, tmp_path, torch.device("cpu"), evaluate=lambda m: 0.5)
    assert [r["step"] for r in res.history] == [1, 2]
    assert all(_layouts(teacher, res.student, res.generator, res.memory.vae).values())


def _stop_at(step):
    """A progress callback that interrupts the run (like Ctrl-C) when it reaches `step`."""
    def progress(s, row):
        if s == step:
            raise KeyboardInterrupt
    return progress


def test_summary_helpers():
    hist = [{"accuracy": a} for a in [0.1, 0.2, 0.9, 0.8, 0.95, 0.9]]
    assert expected_accuracy(hist) == pytest.approx((0.8 + 0.95 + 0.9) / 3)
    assert largest_drop(hist) == pytest.approx(0.05)
    assert expected_accuracy([{"accuracy": None}]) is None


def test_student_spec_sizes_towards_ratio():
    spec = student_spec(SHAPE, 10, 94_186, 0.25)
    n = param_count(build_student(spec))
    assert 0.5 * 94_186 * 0.25 < n < 1.5 * 94_186 * 0.25


def _resolutions(model: nn.Module, shape) -> list[int]:
    """The side length each convolution of `model` works at."""
    sides: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    model.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return sides


def test_new_students_pool_late_and_students_specified_before_rebuild_early(tmp_path):
    from core import workdir as wd

    spec = student_spec(SHAPE, 10, 94_186, 0.25)
    assert spec["pooling"] == "late"
    assert _resolutions(build_student(spec), SHAPE) == [8, 8, 4]  # full resolution through two convolutions
    before = {k: v for k, v in spec.items() if k != "pooling"}  # a student.json written before late pooling
    old = build_student(before)
    assert _resolutions(old, SHAPE) == [8, 4, 4]
    wd.save_module(old, tmp_path / "student.safetensors")
    again = wd.load_module(build_student(before), tmp_path / "student.safetensors")
    x = torch.randn(4, *SHAPE)
    assert torch.equal(again.eval()(x), old.eval()(x))  # its weights still compute what they were trained to
    # From 16 pixels a side there is room for a pooling between every two stages: both rules agree
    big = {**spec, "shape": [3, 32, 32]}
    assert _resolutions(build_student(big), (3, 32, 32)) == _resolutions(build_student({**big, "pooling": "early"}),
                                                                          (3, 32, 32)) == [32, 16, 8]
    with pytest.raises(ValueError, match="pooling"):
        build_student({**spec, "pooling": "middle"})


def test_new_students_read_a_grid_of_positions_and_students_specified_before_rebuild_a_global_average(tmp_path):
    from core import workdir as wd

    spec = student_spec((1, 28, 28), 10, 98_506, 0.25)
    assert spec["head"] == "grid"
    student = build_student(spec).eval()
    assert student.classifier.in_features == spec["widths"][-1] * 4 * 4  # a 7x7 map, padded to 8x8, read as 4x4
    # Where a feature fires reaches the classifier: the same blob in two corners gives two different answers
    a, b = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    a[..., 2:8, 2:8], b[..., 20:26, 20:26] = 3.0, 3.0
    assert not torch.allclose(student(a), student(b), atol=1e-4)
    before = {k: v for k, v in spec.items() if k != "head"}  # a student.json written before the grid head
    old = build_student(before).eval()
    assert old.classifier.in_features == spec["widths"][-1]
    wd.save_module(old, tmp_path / "student.safetensors")
    again = wd.load_module(build_student(before), tmp_path / "student.safetensors").eval()
    assert torch.equal(again(a), old(a))
    with pytest.raises(ValueError, match="head"):
        build_student({**spec, "head": "dense"})


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 20, 12)])
def test_grid_head_exports_to_onnx_and_runs_the_same_in_onnx_runtime(tmp_path, shape):
    import numpy as np
    import onnxruntime as ort

    student = build_student(student_spec(shape, 10, 60_000, 0.25)).eval()
    x = torch.randn(3, *shape)
    path = tmp_path / "student.onnx"
    torch.onnx.export(student, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    assert np.allclose(got, student(x).detach().numpy(), atol=1e-4)


def test_vae_width_is_its_own_setting_and_sized_from_the_input_by_default():
    teacher = TinyTeacher().eval()
    memory = build_memory(_smoke_cfg(vae_width=16, generator_width=32), SHAPE, teacher, torch.device("cpu"))
    assert memory.vae.width == 16 and memory.vae.decoder.width == 16
    assert build_memory(_smoke_cfg(vae_width=48), SHAPE, teacher, torch.device("cpu")).vae.decoder.width == 48
    assert _smoke_cfg().vae_width == 0  # auto
    assert build_memory(_smoke_cfg(), SHAPE, teacher, torch.device("cpu")).vae.width == 32  # 8x8
    assert auto_vae_width((1, 16, 16)) == 32 and auto_vae_width((1, 28, 28)) == 64 and auto_vae_width((3, 32, 32)) == 64
    assert auto_vae_width((12,)) == 64


def test_vae_files_written_with_the_removed_latent_prior_load_unless_it_was_fitted(tmp_path):
    # VAE files written while distill.vae_prior_decay existed carry its buffers: N(0, I) and a zero count
    # unless it was set. Those load and replay as before; a fitted one, which replay cannot use, is refused.
    from core import workdir as wd
    from safetensors.torch import save_file

    vae = VAE(SHAPE, 4)
    old = {**vae.state_dict(), "prior_mean": torch.zeros(4), "prior_cov": torch.eye(4),
           "prior_count": torch.zeros((), dtype=torch.long)}
    save_file(old, str(tmp_path / "vae.safetensors"))
    again = wd.load_module(VAE(SHAPE, 4), tmp_path / "vae.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), vae.state_dict().values()))
    save_file({**old, "prior_count": torch.tensor(7)}, str(tmp_path / "fitted.safetensors"))
    with pytest.raises(UsageError, match="distill.vae_prior_decay"):
        wd.load_module(VAE(SHAPE, 4), tmp_path / "fitted.safetensors")
