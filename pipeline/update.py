"""On-device update: continue a deployed student toward a new teacher with replay from the bundle's VAE.

A bundle carries the student and the VAE, never data. The VAE is the memory of what the old teacher
taught; replaying it while distilling from the new teacher keeps what did not change. The result is
quantized and exported again for the bundle's target, and its manifest names its parent.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from core.bundle import manifest_sha256, verify_bundle
from core.errors import UsageError
from core.teacher import load_teacher
from core.ui import Console
from core.workdir import prepare_out_dir
from pipeline.config import RunConfig
from pipeline.run import export, quantize
from stages.distill.engine import vae_memory
from stages.distill.stage import load_vae, stage_distill


def default_update_out(bundle: Path) -> Path:
    return bundle.parent / f"{bundle.name}-update-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def update_bundle(bundle: Path, cfg: RunConfig, out: Path, console: Console, force: bool = False) -> dict:
    manifest = verify_bundle(bundle)  # a tampered bundle is refused before anything runs
    parent_sha = manifest_sha256(bundle)
    student_art, spec_art = manifest.artifact("student-checkpoint"), manifest.artifact("student-spec")
    if student_art is None or spec_art is None:
        raise UsageError(f"bundle {bundle} has no student checkpoint to update")
    vae_art, vae_spec_art = manifest.artifact("vae"), manifest.artifact("vae-spec")
    if cfg.distill.replay == "vae" and (vae_art is None or vae_spec_art is None):
        raise UsageError(f"bundle {bundle} carries no VAE memory; update with --replay none, or re-run the pipeline")
    shape = [d for d in manifest.input.get("shape", [])[1:]]
    cfg.target = manifest.target

    _, spec = load_teacher(cfg)
    if list(spec.input_shape) != shape or spec.num_classes != manifest.num_classes:
        raise UsageError(f"the new teacher takes {list(spec.input_shape)} with {spec.num_classes} classes; the bundle's "
                         f"student takes {shape} with {manifest.num_classes}")

    prepare_out_dir(out, force, resume=False)
    student_spec = json.loads((bundle / spec_art.path).read_text(encoding="utf-8"))
    memory_factory = None
    if cfg.distill.replay == "vae":
        vae_spec = json.loads((bundle / vae_spec_art.path).read_text(encoding="utf-8"))
        cfg.distill.vae_latent_dim = int(vae_spec["latent_dim"])

        def memory_factory(teacher, device):
            vae = load_vae(vae_spec, bundle / vae_art.path)
            return vae_memory(cfg.distill, vae.to(device), teacher, trained=True)  # replays the old stream at once

    console.info(f"update: {bundle} -> {out} (target {manifest.target}, replay {cfg.distill.replay})")
    stage_distill(cfg, out, False, console, memory_factory=memory_factory,
                  student_from=(student_spec, bundle / student_art.path))
    quantize(out, console, manifest.target)
    return export(out, console, manifest.target, parent=parent_sha, version=manifest.version + 1)
