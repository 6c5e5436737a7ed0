"""benchmarks/distill.py keeps each run in a directory of its own plan; benchmarks/quantize.py finds the default's."""

from __future__ import annotations

from tests.bench_modules import load

distill_bench = load("distill")
quantize_bench = load("quantize")


def test_a_budget_or_a_set_gets_its_own_run_directory():
    names = {distill_bench.run_name("adversarial", "vae", 0, []),
             distill_bench.run_name("adversarial", "vae", 0, [], 840.0),
             distill_bench.run_name("adversarial", "vae", 0, [], 600.0),
             distill_bench.run_name("adversarial", "vae", 0, ["distill.w_adv=0.3"]),
             distill_bench.run_name("adversarial", "vae", 0, ["distill.w_adv=0.3"], 840.0),
             distill_bench.run_name("adversarial", "vae", 1, [])}
    assert len(names) == 6
    assert distill_bench.run_name("adversarial", "vae", 0, [], 840.0) == "adversarial-vae-0-budget840"


def test_kept_run_prefers_the_unbudgeted_run_then_the_largest_budget_and_skips_variants(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_bench, "CACHE", tmp_path)
    runs = tmp_path / "distill-runs" / "bn_cnn"

    def keep(name: str, student: bool = True) -> None:
        (runs / name).mkdir(parents=True)
        if student:
            (runs / name / "student.safetensors").write_bytes(b"weights")

    assert quantize_bench.kept_run("bn_cnn", 0) is None
    keep(distill_bench.run_name("adversarial", "vae", 0, ["distill.w_adv=0.3"]))  # a variant is never the default's
    keep(distill_bench.run_name("adversarial", "vae", 0, [], 600.0))
    keep(distill_bench.run_name("adversarial", "vae", 0, [], 840.0))
    keep(distill_bench.run_name("adversarial", "vae", 1, [], 900.0))
    assert quantize_bench.kept_run("bn_cnn", 0).name == "adversarial-vae-0-budget840"
    keep(distill_bench.run_name("adversarial", "vae", 0, []), student=False)  # failed before saving a student
    assert quantize_bench.kept_run("bn_cnn", 0).name == "adversarial-vae-0-budget840"
    (runs / "adversarial-vae-0" / "student.safetensors").write_bytes(b"weights")
    assert quantize_bench.kept_run("bn_cnn", 0).name == "adversarial-vae-0"


def test_runs_use_one_thread_unless_a_set_asks_for_more():
    assert distill_bench.run_threads([]) == 1
    assert distill_bench.run_threads(["distill.w_adv=0.3"]) == 1
    assert distill_bench.run_threads(["threads=2"]) == 2
    assert distill_bench.run_threads(["threads=2", "distill.kd_steps=3", "threads = 4"]) == 4


def test_requantizing_takes_the_current_later_stage_settings_of_the_config_preset_and_sets(tmp_path):
    cfg = tmp_path / "teacher.toml"
    cfg.write_text('[teacher]\nbuiltin = "digits"\n[quantize]\nqat_steps = 30\n')
    default = distill_bench.later_stages(cfg, "default", [])
    assert set(default) == {"quantize", "export"}
    assert default["quantize"]["qat_steps"] == 30  # the file's value over the preset's
    smoke = distill_bench.later_stages(cfg, "smoke", ["quantize.qat_lr=0.02", "distill.iterations=9"])
    assert smoke["quantize"]["qat_lr"] == 0.02 and smoke["quantize"]["calibration_samples"] == 64
    assert smoke["quantize"]["qat_steps"] == 30


def test_each_qat_learning_rate_compared_gets_its_columns():
    class Args:
        qat_lr = None

    assert quantize_bench.result_columns("student", Args)[4:6] == ["INT8 after QAT", "QAT - FP32 (pt)"]
    Args.qat_lr = "0.0001,0.01"
    columns = quantize_bench.result_columns("student", Args)
    assert columns[4:8] == ["INT8 after QAT, qat_lr 0.0001", "QAT - FP32 (pt), qat_lr 0.0001",
                            "INT8 after QAT, qat_lr 0.01", "QAT - FP32 (pt), qat_lr 0.01"]
    assert quantize_bench.qat_lrs(Args, None) == [0.0001, 0.01]
