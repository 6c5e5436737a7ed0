"""A run directory whose student is the model itself: INT8 of the user's own architecture, no distillation.

Writes what a distillation would leave for stage 2, so quantize and export run unchanged on it: the model's
FP32 weights as the student, with a spec that rebuilds its architecture from the `[teacher]` section, and
the generator of its synthetic samples. run.json names the source (the model itself) and holds no
distillation stage; fine-tuning is then self-distillation from the FP32 model, which is the teacher.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core import __version__
from core import workdir as wd
from core.device import set_up
from core.evaluation import check_compatible
from core.fileio import write_json
from core.teacher import has_batchnorm, load_teacher, refuse_batch_statistics
from core.ui import Console
from stages.distill.stage import task_dict
from stages.quantize.samples import train_generator


def prepare_own_model(cfg, out: Path, console: Console) -> dict:
    """Into the prepared directory `out`: the model as the student, its sample generator and run.json.
    Returns the samples' summary."""
    device = set_up(cfg)
    model, spec = load_teacher(cfg)
    check_compatible(cfg.eval, spec.input_shape, spec.num_classes, spec)
    refuse_batch_statistics(model, spec.source)
    if not has_batchnorm(model):
        console.warn("the model has no BatchNorm layers with running statistics: its synthetic samples follow its "
                     "class balance and confidence alone")
    steps = cfg.quantize.generator_steps
    console.info(f"quantize: {spec.source} itself, no distillation; training its sample generator ({steps} rounds)")
    with console.progress("samples", steps) as advance:
        generator, summary = train_generator(cfg.distill, model.to(device), spec.input_shape, steps, spec.num_classes,
                                             device, advance)
    wd.save_module(model, out / wd.STUDENT)
    write_json(out / wd.STUDENT_SPEC, {"family": "teacher", "teacher": dataclasses.asdict(cfg.teacher),
                                       "config_dir": cfg.config_dir})
    wd.save_module(generator, out / wd.GENERATOR)
    wd.write_run(out, {"pipeline_version": __version__, "source": wd.OWN_MODEL, "config": dataclasses.asdict(cfg),
                       "task": task_dict(spec), "stages": {"samples": summary}})
    made = f"the sample generator makes {summary['classes_made']} of {spec.num_classes} classes"
    if summary["classes_made"] < spec.num_classes:
        console.warn(f"{made}; more rounds (quantize.generator_steps) may reach the rest")
    else:
        console.info(f"samples: {made} ({summary['wall_s']:.0f} s)")
    return summary
