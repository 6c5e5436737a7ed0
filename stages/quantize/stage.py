"""Stage 2 as the pipeline runs it: INT8 for a target's scheme, calibrated and fine-tuned on synthetic samples.

Reads the distilled run directory, writes student_fp32.onnx, student_int8.onnx (Q/DQ) and the stage's
summary in run.json.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from core import workdir as wd
from core.device import set_up
from core.evaluation import onnx_predict
from core.teacher import load_teacher
from core.ui import Console
from stages.distill.engine import vae_memory
from stages.distill.networks import build_sampler
from stages.distill.probes import synthesize_probes
from stages.distill.stage import load_vae, rebuild_student
from stages.quantize.onnx_tidy import tidy_qdq
from stages.quantize.qat import export_onnx, qdq_summary, quantize

QUANTIZE_PROBE_STEPS = 100


def _load_stage_models(cfg, out: Path, device: torch.device):
    teacher, spec = load_teacher(cfg)
    teacher.to(device)
    student = wd.load_module(rebuild_student(json.loads((out / wd.STUDENT_SPEC).read_text())), out / wd.STUDENT)
    generator = build_sampler(cfg.distill.synthesizer, cfg.distill.latent_dim, spec.input_shape, spec.num_classes,
                              width=cfg.distill.generator_width)
    generator = wd.load_module(generator, out / wd.GENERATOR).to(device).eval()
    vae = None
    if (out / wd.VAE_FILE).is_file():
        vae = load_vae(json.loads((out / wd.VAE_SPEC).read_text()), out / wd.VAE_FILE).to(device).eval()
    return teacher, spec, student.to(device).eval(), generator, vae


def synthetic_sources(cfg, teacher, generator, vae, shape, device):
    """Callables returning batches of synthetic inputs: the only data stage 2 ever sees."""
    # The run's own VAE settings (class balancing on or off) decide how fine-tuning's replayed samples are drawn too
    memory = vae_memory(cfg.distill, vae, teacher, trained=True) if vae is not None else None

    def from_generator(n: int) -> torch.Tensor:
        with torch.no_grad():
            return generator(torch.randn(n, cfg.distill.latent_dim, device=device))

    def from_vae(n: int) -> torch.Tensor:
        return memory.sample(n) if memory is not None else from_generator(n)

    def from_noise(n: int) -> torch.Tensor:
        return torch.randn(n, *shape, device=device)

    def mixed(n: int) -> torch.Tensor:
        return torch.cat([from_vae(n // 2), from_generator(n - n // 2)])

    return {"mixed": mixed, "vae": from_vae, "generator": from_generator, "noise": from_noise}


def stage_quantize(cfg, out: Path, console: Console, scheme: str) -> dict:
    """Stage 2 with the run's stored config `cfg` (its target already set) for the INT8 `scheme`."""
    run = wd.read_run(out)
    device = set_up(cfg)
    torch.manual_seed(cfg.seed + 1)
    teacher, spec, student, generator, vae = _load_stage_models(cfg, out, device)
    sources = synthetic_sources(cfg, teacher, generator, vae, spec.input_shape, device)
    # The generator's samples set the ranges: VAE samples are smoother than what the student meets, and ranges
    # calibrated on them, even on half of them, clipped real inputs of some students.
    calibration = "generator"
    q = cfg.quantize
    batches = [sources[calibration](min(q.qat_batch, q.calibration_samples - i)).cpu()
               for i in range(0, q.calibration_samples, q.qat_batch)]

    def qat_batch() -> torch.Tensor:
        # KD on a mix of replayed memories and fresh generator samples, as in distillation.
        return sources["mixed"](q.qat_batch).cpu()

    example = torch.randn(1, *spec.input_shape)
    # QAT and export run on the CPU (the NNCF path this project verifies); a copy keeps the synthetic
    # sources' teacher on `device` (Module.cpu() moves in place).
    teacher_cpu = copy.deepcopy(teacher).cpu()
    # One probe set ranks the layers and checks the result, so the estimated and measured drops compare. It sets a
    # model against its own quantized copy, not against another architecture, so the shorter optimisation the
    # drop estimates were measured with serves (the longer one distillation needs would cost stage 2 as much).
    probes, labels = synthesize_probes(teacher_cpu, spec.input_shape, spec.num_classes,
                                       max(8, cfg.distill.probe_per_class), steps=QUANTIZE_PROBE_STEPS,
                                       seed=cfg.seed + 777)
    pixels = spec.pixel_range()
    with console.progress("quantize (QAT)", q.qat_steps) as advance:
        result = quantize(student.cpu(), teacher_cpu, batches, qat_batch, q, scheme, calibration, example,
                          kd_loss=cfg.distill.kd_loss, kd_temperature=cfg.distill.kd_temperature,
                          progress=lambda step: advance(step, {}), probes=probes, input_range=pixels)
    fp32_path = export_onnx(result.folded_fp32, out / wd.FP32_ONNX, example, cfg.export.opset)
    int8_path = export_onnx(result.model, out / wd.INT8_ONNX, example, cfg.export.opset)
    qdq = qdq_summary(int8_path)
    tidy = tidy_qdq(int8_path)
    agreement = _probe_agreement(probes, labels, fp32_path, int8_path, result.model)
    summary = {
        "scheme": scheme,
        "calibration_source": calibration,
        "calibration_samples": result.calibration_samples,
        "input_range": None if pixels is None else [round(v, 4) for v in pixels],
        "qat_steps": result.qat_steps,
        "qat_final_loss": result.qat_losses[-1] if result.qat_losses else None,
        "num_quantizers": qdq["dequantize_linear"],
        "qdq": qdq,
        "tidy": tidy,
        **agreement,
        "sensitivity": {**result.sensitivity,
                        "measured_drop_points": round(100 * (1 - agreement["int8_fp32_agreement"]), 2)},
        "wall_s": round(result.wall_s, 2),
    }
    run["config"]["target"] = cfg.target
    run["config"]["quantize"]["max_drop"] = q.max_drop
    run["stages"]["quantize"] = summary
    run["stages"].pop("export", None)
    wd.write_run(out, run)
    return summary


def _probe_agreement(probes: torch.Tensor, labels: torch.Tensor, fp32_path: Path, int8_path: Path, qmodel) -> dict:
    """Data-free check of what quantization cost: agreement on teacher-derived probes."""
    p_fp32 = onnx_predict(fp32_path, probes.numpy()).argmax(1)
    p_int8 = onnx_predict(int8_path, probes.numpy()).argmax(1)
    with torch.no_grad():
        p_torch_q = qmodel(probes).argmax(1).numpy()
    return {
        "probe_samples": int(len(labels)),
        "teacher_agreement_fp32": float((p_fp32 == labels.numpy()).mean()),
        "teacher_agreement_int8": float((p_int8 == labels.numpy()).mean()),
        "int8_fp32_agreement": float((p_int8 == p_fp32).mean()),
        "onnx_torch_int8_agreement": float((p_int8 == p_torch_q).mean()),
    }
