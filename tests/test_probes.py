"""The data-free probe set: the teacher reads each probe as the class it was made for, and the image prior
makes the probes smooth without costing that."""

from __future__ import annotations

import torch
from torch import nn

from stages.distill import probes as P
from stages.distill.probes import agreement, divergence, fit, synthesize_probes, total_variation


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10)).eval()


def test_probes_are_read_as_their_classes_and_the_prior_smooths_them():
    teacher = _teacher()
    rough, rough_labels = synthesize_probes(teacher, (1, 8, 8), 10, 4, tv=0.0)
    smooth, smooth_labels = synthesize_probes(teacher, (1, 8, 8), 10, 4)
    asked = torch.arange(10).repeat_interleave(4)
    assert (rough_labels == asked).float().mean() >= 0.9 and (smooth_labels == asked).float().mean() >= 0.9
    assert total_variation(smooth) < 0.5 * total_variation(rough)
    assert agreement(teacher, smooth, smooth_labels) == 1.0  # the labels are the teacher's own


def test_total_variation_weighs_the_same_picture_alike_at_any_resolution():
    ramp = torch.linspace(0, 1, 8).expand(1, 1, 8, 8)
    fine = torch.nn.functional.interpolate(ramp, size=(32, 32), mode="bilinear", align_corners=True)
    assert abs(total_variation(fine) / total_variation(ramp) - 1) < 0.1
    assert total_variation(torch.ones(1, 1, 8, 8)) == 0


def test_default_probes_match_the_teachers_batchnorm_statistics_closer_than_short_ones():
    from stages.distill.criteria import BNStatistics

    teacher = _teacher()

    def bn_gap(x):
        bn = BNStatistics(teacher)
        try:
            with torch.no_grad(), bn:
                teacher(x)
                return float(bn.loss())
        finally:
            bn.remove()

    short, _ = synthesize_probes(teacher, (1, 8, 8), 10, 4, steps=100)
    full, labels = synthesize_probes(teacher, (1, 8, 8), 10, 4)
    assert bn_gap(full) < bn_gap(short)  # equal if the default fell back to the short optimisation
    assert (labels == torch.arange(10).repeat_interleave(4)).float().mean() >= 0.9


def test_divergence_is_zero_for_the_teacher_and_falls_as_a_student_learns_it():
    teacher = _teacher()
    probes, labels = synthesize_probes(teacher, (1, 8, 8), 10, 4, steps=50)
    with torch.no_grad():
        target = torch.log_softmax(teacher(probes), dim=1)
    assert abs(divergence(teacher, probes, target)) < 1e-6
    torch.manual_seed(1)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    before = divergence(student, probes, target)
    for _ in range(200):
        loss = torch.nn.functional.kl_div(torch.log_softmax(student(probes), 1), target, log_target=True,
                                          reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = divergence(student, probes, target)
    assert 0 < after < 0.5 * before
    # one pass for both, in batches that split the probes unevenly, gives what the two passes give
    agree, kl = fit(student, probes, labels, target, batch=7)
    assert agree == agreement(student, probes, labels) and abs(kl - after) < 1e-5 * after  # summed in another order
    assert abs(after - float(loss)) < 0.05 * before  # the same quantity the fit minimised, up to its last step


def test_a_teacher_that_normalises_each_input_gets_probes_at_the_inputs_scale_that_survive_noise():
    torch.manual_seed(0)
    # GroupNorm after a bias-free convolution: the teacher reads x and 0.01 x alike, so nothing pins the probes' scale
    teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8), nn.ReLU(),
                            nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    asked = torch.arange(10).repeat_interleave(4)
    gen = torch.Generator().manual_seed(3)
    faint, faint_labels = P._optimise(teacher, (1, 8, 8), asked, P.STEPS, gen, P.TV_PER_SIDE, None, robust=False)
    made = P.make_probes(teacher, (1, 8, 8), 10, 4)
    probes, labels = made.inputs, made.labels
    gen = torch.Generator().manual_seed(4)
    assert made.robust
    assert faint.flatten(1).std(1).median() < 0.2 and P.fragility(teacher, faint, faint_labels, gen) > P.FRAGILE
    assert torch.allclose(probes.flatten(1).std(1), torch.ones(len(probes)), atol=1e-3)
    assert P.fragility(teacher, probes, labels, gen) <= P.FRAGILE
    assert (labels == asked).float().mean() >= 0.6  # a tiny random teacher: most read as asked through the jitter


def test_a_set_that_survives_noise_is_kept_as_optimised():
    teacher = _teacher()
    probes, labels = synthesize_probes(teacher, (1, 8, 8), 10, 4)
    gen = torch.Generator().manual_seed(1234)
    plain, plain_labels = P._optimise(teacher, (1, 8, 8), torch.arange(10).repeat_interleave(4), P.STEPS, gen,
                                      P.TV_PER_SIDE, None, robust=False)
    assert torch.equal(probes, plain) and torch.equal(labels, plain_labels)
    assert not P.make_probes(teacher, (1, 8, 8), 10, 4, steps=20).robust


def test_a_teacher_with_many_classes_gets_a_set_of_ten_classes_size_with_every_class_in_it():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 40)).eval()
    made = P.make_probes(teacher, (16,), 40, 8, steps=5)
    assert len(made.inputs) == 10 * 8  # two of each of the 40 classes, not eight
    many = nn.Sequential(nn.Flatten(), nn.Linear(16, 1000)).eval()
    assert len(P.make_probes(many, (16,), 1000, 2, steps=1).inputs) == 1000  # more classes than that: one of each
    assert P.probes_per_class(10, 32) == 32 and P.probes_per_class(2, 32) == 32  # up to ten classes: as set
    assert P.probes_per_class(100, 32) == 3 and P.probes_per_class(1000, 32) == 1
