"""write_reports on realistic and partial reports: real files, real PNGs, parsed html."""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser

from rich.console import Console

from pipeline.report import latency_table, strip_samples, summary_table, write_reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report() -> dict:
    return {
        "target": "mobile",
        "created": "2025-06-01T12:00:00+00:00",
        "deploy": {"model": "student-fp32.onnx", "role": "student-fp32-onnx", "precision": "fp32",
                   "reason": "INT8 is slower than FP32 here", "p50_ms": 0.41, "other_p50_ms": 0.21,
                   "measured_on": "host: h, cpu", "bytes": 400_000, "accuracy": 0.9611, "teacher_accuracy": 0.975,
                   "evaluated_on": "digits", "probe_agreement": 0.9},
        "accuracy": {"teacher": 0.975, "student_fp32": 0.9611, "student_int8": None, "evaluated_on": "digits test split (360 images)"},
        "distillation": {
            "history": [{"step": s, "agreement": 0.1 + 0.008 * s, "accuracy": (0.05 + 0.009 * s) if s % 25 == 0 else None,
                         "reach": 1.0 if s < 50 else 0.23, "probe_kl": 1.5 - 0.01 * s} for s in range(0, 101, 5)],
            "replay": "vae",
            "replay_memory_bytes": 1_234_567,
            "steps": 100,
            "wall_s": 42.5,
            "probes_s": 7.5,
        },
        "quantization": {"calibration_source": "generator samples", "num_quantizers": 14, "int8_fp32_agreement": 0.9875, "preset": "performance"},
        "latency": [
            {"runtime": "onnxruntime", "provider": "CPUExecutionProvider", "model": "student-fp32.onnx", "batch": 1, "threads": 1,
             "p50_ms": 0.41, "p90_ms": 0.45, "p99_ms": 0.6, "mean_ms": 0.42, "throughput_per_s": 2380.9, "peak_rss_mb": 210.0,
             "session_mem_mb": 3.1, "size_bytes": 400_000, "runs": 5, "measured_on": "host: h, cpu, onnxruntime 1.32.0",
             "samples_ms": [0.4, 0.41, 0.41, 0.45, 0.6]},
            {"runtime": "onnxruntime", "provider": "CPUExecutionProvider", "model": "student-int8.onnx", "batch": 1, "threads": 1,
             "p50_ms": 0.21, "p90_ms": 0.25, "p99_ms": 0.3, "mean_ms": 0.22, "throughput_per_s": 4545.4, "peak_rss_mb": 211.0,
             "session_mem_mb": 1.2, "size_bytes": 120_000, "runs": 4, "measured_on": "host: h, cpu, onnxruntime 1.32.0",
             "samples_ms": [0.2, 0.21, 0.25, 0.3]},
        ],
        "artifacts": [
            {"path": "student.safetensors", "role": "student-checkpoint", "bytes": 410_000},
            {"path": "student-fp32.onnx", "role": "student-fp32-onnx", "bytes": 400_000},
            {"path": "student-int8.onnx", "role": "student-int8-onnx", "bytes": 120_000},
        ],
        "check": {"target": "mobile", "findings": [{"level": "warning", "message": "opset 17 needs ORT >= 1.14"}, "all ops supported"]},
    }


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]

    def handle_data(self, data):
        self.text.append(data)


def _parse(path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def test_json_is_input_minus_samples(tmp_path):
    report = _report()
    original = copy.deepcopy(report)
    paths = write_reports(tmp_path, report)
    assert report == original  # the caller's dict is not modified
    assert {p.name for p in paths} >= {"report.json", "report.md", "report.html"}
    assert all(p.is_file() for p in paths)
    stored = json.loads((tmp_path / "report.json").read_text())
    expected = copy.deepcopy(original)
    for row in expected["latency"]:
        del row["samples_ms"]
    assert stored == expected
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left no temporaries


def test_nan_becomes_null():
    out = strip_samples({"accuracy": {"teacher": float("nan")}, "latency": [{"p50_ms": 1.0, "samples_ms": [1.0]}]})
    assert out == {"accuracy": {"teacher": None}, "latency": [{"p50_ms": 1.0}]}


def test_report_opens_with_the_deploy_decision(tmp_path):
    report = _report()
    write_reports(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert md.split("## ")[1].startswith("Deploy\n")
    opening = md.split("## ")[1]
    for row in ("| Model | student-fp32.onnx (FP32) |", "| Accuracy | 96.11% on digits; teacher 97.50% |",
                "| Size | 390.62 KB |", "| Host latency | p50 0.410 ms at batch 1 (INT8: 0.210 ms), host: h, cpu |",
                "| Why | INT8 is slower than FP32 here |"):
        assert row in opening, row
    report["deploy"].update(accuracy=None, teacher_accuracy=None)
    write_reports(tmp_path, report)
    assert "agrees with the teacher on 90.00% of synthetic probes" in (tmp_path / "report.md").read_text()
    summary = _render(summary_table(report))
    assert "student-fp32.onnx (FP32): INT8 is slower than FP32 here" in summary


def test_sensitivity_section_shows_the_ranking_and_what_stays_in_float(tmp_path):
    report = _report()
    ranking = [{"layer": f"layer{i}", "agreement": 0.5 + 0.04 * i, "drop_points": 50 - 4 * i, "kl": 0.1 / (i + 1)}
               for i in range(12)]
    report["quantization"]["sensitivity"] = {"ranking": ranking, "max_drop": 1.0, "kept_float": ["layer0"],
                                             "estimated_drop_points": 0.8, "measured_drop_points": 1.25}
    write_reports(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Layer sensitivity")[1].split("## ")[0]
    assert "| 1 | layer0 | 50.00% | 50.00 | 0.10000 | float |" in section
    assert "| 2 | layer1 | 54.00% | 46.00 | 0.05000 | INT8 |" in section
    assert "layer10" not in section and "10 most sensitive of 12 layers" in section
    assert "estimated drop 0.80 points" in section and "1.25 points" in section
    assert "sensitivity" not in md.split("## Quantization")[1].split("## ")[0]  # not dumped as a raw dict


def test_markdown_tables(tmp_path):
    write_reports(tmp_path, _report())
    md = (tmp_path / "report.md").read_text()
    assert "## Accuracy" in md
    assert "| Teacher | 97.50% | digits test split (360 images) |" in md
    assert "| Student FP32 | 96.11% | digits test split (360 images) |" in md
    assert "| Student INT8 | not evaluated | — |" in md
    assert "| student-int8.onnx | onnxruntime | CPU | 1 | 1 | 0.210 |" in md
    assert "| INT8 vs FP32 agreement | 98.75% |" in md
    assert "| Final agreement | Final probe KL | Stopped by | Estimated time | Probe synthesis (before the clock) | KD batch perturbation (of set size) | Converged |" in md
    assert "| 90.00% | 0.500 |" in md  # the last evaluation's agreement and probe KL
    assert "| 7.5 s |" in md
    assert "| 0.23 |" in md  # the last evaluation's reach
    report = _report()
    report["distillation"]["probes_robust"] = True
    write_reports(tmp_path, report)
    assert "| 7.5 s, made twice: the first set broke under noise |" in (tmp_path / "report.md").read_text()
    report["distillation"]["verdict"] = {"converged": None, "reason": "not judged: agreement on robust probes (0.680) does not rank students"}
    write_reports(tmp_path, report)
    assert "| not judged: agreement on robust probes (0.680) does not rank students |" in (tmp_path / "report.md").read_text()
    report["distillation"].update(stopped_by="plateau", plateau_at=120, steps=160)
    write_reports(tmp_path, report)
    assert "| plateau at iteration 120, then the learning rate annealed |" in (tmp_path / "report.md").read_text()
    # plots referenced from markdown exist as real PNGs beside it
    for name in ("distillation", "latency", "sizes"):
        assert f"](report_plots/{name}.png)" in md
        assert (tmp_path / "report_plots" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def test_html_self_contained_with_images(tmp_path):
    write_reports(tmp_path, _report())
    parsed = _parse(tmp_path / "report.html")
    srcs = [v for tag, k, v in parsed.attrs if tag == "img" and k == "src"]
    assert len(srcs) == 3
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    for tag, k, v in parsed.attrs:
        if k in ("src", "href"):
            assert not v.lower().startswith(("http://", "https://", "//")), (tag, k, v)
    assert "link" not in parsed.tags and "script" not in parsed.tags
    text = " ".join(parsed.text)
    for needle in ("Accuracy", "Quantization", "Latency", "Artifact sizes", "Distillation", "not evaluated",
                   "generator samples", "1.18 MB", "42.5 s", "opset 17 needs ORT >= 1.14"):
        assert needle in text, needle
    assert parsed.tags.count("table") == 7


def test_missing_sections_still_render(tmp_path):
    for report in ({}, {"target": "jetson"}, {"latency": [{"model": "m.onnx", "p50_ms": 1.0}]},
                   {"accuracy": {"teacher": None}, "distillation": {"history": []}, "check": {"findings": []}},
                   {"latency": "garbage", "artifacts": [1, None], "quantization": []}):
        paths = write_reports(tmp_path, report)
        html_text = (tmp_path / "report.html").read_text()
        _parse(tmp_path / "report.html")
        assert html_text.rstrip().endswith("</html>")
        assert json.loads((tmp_path / "report.json").read_text()) == strip_samples(report)
        assert all(p.is_file() for p in paths)
    # a latency row without samples falls back to the percentile bar chart, still embedded
    write_reports(tmp_path, {"latency": [{"model": "m.onnx", "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0}]})
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


def test_html_escapes_model_name(tmp_path):
    report = _report()
    report["latency"][0]["model"] = "<script>alert(1)</script>"
    report["check"]["findings"].append('"quoted" & <b>bold</b>')
    write_reports(tmp_path, report)
    html_text = (tmp_path / "report.html").read_text()
    assert "<script>" not in html_text and "<b>" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "script" not in _parse(tmp_path / "report.html").tags
    md = (tmp_path / "report.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md


def _render(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_console_tables():
    report = _report()
    text = _render(latency_table(report["latency"], report["accuracy"]))
    assert "student-fp32.onnx" in text and "96.11%" in text  # accuracy matched to the fp32 row
    assert "0.38" in text  # size MB of 400_000 bytes
    assert "4545.4" in text
    summary = _render(summary_table(report))
    assert "not evaluated" in summary and "98.75%" in summary and "0.210 ms (student-int8.onnx" in summary
    assert "Summary" in _render(summary_table({}))  # an empty report still renders
