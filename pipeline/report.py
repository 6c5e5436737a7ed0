"""A bundle's human reports: report.json, report.md and a self-contained report.html with plots.

Report schema (every section is optional; a report with only some keys still renders):

    {
      "target": "jetson" | "mobile",
      "created": "2025-01-01T00:00:00+00:00",
      "teacher": str,                     # where the teacher came from, e.g. "factory models.py:build"
      "source": "distilled" | "own model",  # a distilled student, or the model itself (quantize --config)
      "deploy": {                         # the opening section (stages.export.decision)
        "model": str, "precision": "int8" | "fp32", "reason": str, "p50_ms": float | null,
        "other_p50_ms": float | null, "measured_on": str | null, "bytes": int | null,
        "accuracy": float | null, "teacher_accuracy": float | null, "probe_agreement": float | null
      },
      "accuracy": {                       # fractions 0..1; null = not evaluated
        "teacher": float | null, "student_fp32": float | null, "student_int8": float | null,
        "evaluated_on": str | null        # e.g. "digits test split (360 images)"
      },
      "samples": {                        # own model only: the generator of its synthetic samples
        "generator_steps": int, "bn_prior": bool, "class_counts": [int, ...], "classes_made": int, "wall_s": float
      },
      "distillation": {                   # distilled runs only
        "history": [{"step": int, "agreement": float 0..1, "probe_kl": float, "accuracy": float | null,
                     "reach": float 0..1}, ...],  # reach: the fraction of the set KD-batch perturbation used
        "replay": str,                    # replay mode, e.g. "vae" or "none"
        "replay_memory_bytes": int, "steps": int, "wall_s": float,
        "probes_s": float,                # the probe set's synthesis, before the loop's clock starts
        "probes_robust": bool             # the set was made again robustly (its first one broke under noise)
      },
      "quantization": {
        "calibration_source": str, "num_quantizers": int, "int8_fp32_agreement": float 0..1,
        "sensitivity": {"ranking": [{"layer": str, "agreement": float, "drop_points": float, "kl": float}, ...],
                        "max_drop": float | null, "kept_float": [str, ...],
                        "estimated_drop_points": float | null, "measured_drop_points": float},
        ...                               # any other keys are shown as they are
      },
      "latency": [row, ...],              # rows from targets.runners.measure_onnx; a row may carry
                                          # "samples_ms" (kept out of report.json, used for plots)
      "artifacts": [{"path": str, "role": str, "bytes": int}, ...],
      "check": {"target": str, "findings": [str | {"level": str, "message": str}, ...]}
    }

report.md and report.html render the same sections (built once by `sections`); plots are PNGs made
with matplotlib's Agg canvas, embedded in the html as base64 and written beside report.md.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from core.fileio import write_bytes, write_json, write_text
from core.workdir import OWN_MODEL
from stages.distill.stopping import describe_stop

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOT_DIR = "report_plots"

_ACCURACY_ROWS = (("teacher", "Teacher"), ("student_fp32", "Student FP32"), ("student_int8", "Student INT8"))
# A model quantized as it is (`quantize --config`) is its own teacher: the rows name what each one is.
_OWN_ACCURACY_ROWS = (("teacher", "Model FP32 (PyTorch)"), ("student_fp32", "Model FP32 (ONNX)"),
                      ("student_int8", "Model INT8 (ONNX)"))
_QUANT_LABELS = {
    "scheme": "Q/DQ scheme",
    "calibration_source": "Calibration source",
    "calibration_samples": "Calibration samples",
    "input_range": "INT8 input holds (the pixel range)",
    "qat_steps": "QAT steps",
    "num_quantizers": "Quantizers",
    "int8_fp32_agreement": "INT8 vs FP32 agreement",
    "teacher_agreement_fp32": "Teacher agreement, FP32",
    "teacher_agreement_int8": "Teacher agreement, INT8",
    "onnx_torch_int8_agreement": "INT8 ONNX vs torch agreement",
    "probe_samples": "Synthetic probes",
    "wall_s": "Wall time (s)",
}
_OWN_QUANT_LABELS = {**_QUANT_LABELS, "teacher_agreement_fp32": "FP32 ONNX vs PyTorch model agreement",
                     "teacher_agreement_int8": "INT8 ONNX vs PyTorch model agreement"}
_QUANT_PCT = ("int8_fp32_agreement", "teacher_agreement_fp32", "teacher_agreement_int8", "onnx_torch_int8_agreement")


def _own(report: dict) -> bool:
    """Whether the report is of the user's model itself, quantized without distillation."""
    return report.get("source") == OWN_MODEL


def _accuracy_rows(report: dict) -> tuple[tuple[str, str], ...]:
    return _OWN_ACCURACY_ROWS if _own(report) else _ACCURACY_ROWS


def _compact(v) -> str:
    """Nested values (Q/DQ counts, tidy actions) as 'key: value' pairs instead of a Python repr."""
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_compact(x)}" for k, x in v.items()) or "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ---------- formatting (pure) ----------

def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _f(v, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if _num(v) else "—"


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if _num(v) else "—"


def _bytes(v) -> str:
    if not _num(v):
        return "—"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{int(v)} B"


def _dict(report: dict, key: str) -> dict | None:
    v = report.get(key)
    return v if isinstance(v, dict) else None


def _rows(v) -> list[dict]:
    return [r for r in v if isinstance(r, dict)] if isinstance(v, list) else []


def _provider_short(p) -> str:
    return str(p or "").removesuffix("ExecutionProvider") or "—"


def _accuracy_for(row: dict, accuracy: dict | None):
    """Accuracy of the model a latency row measured: its own, else matched by name (fp32/int8)."""
    if _num(row.get("accuracy")):
        return row["accuracy"]
    if not accuracy:
        return None
    name = str(row.get("model", "")).lower()
    if "int8" in name:
        return accuracy.get("student_int8")
    if "fp32" in name:
        return accuracy.get("student_fp32")
    return None


def strip_samples(report: dict) -> dict:
    """The report as stored in report.json: latency rows without their raw samples, and non-finite
    floats as null (JSON has no NaN). The percentiles in each row already summarise the samples."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    out = clean(report)
    if isinstance(out.get("latency"), list):
        out["latency"] = [{k: v for k, v in r.items() if k != "samples_ms"} if isinstance(r, dict) else r for r in out["latency"]]
    return out


# ---------- sections: one model for both markdown and html ----------

@dataclass
class Section:
    title: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    plot: str | None = None  # key into the plots dict
    note: str | None = None


def _deploy_accuracy(d: dict, teacher_name: str = "teacher") -> str:
    """Accuracy against the teacher when evaluated, else agreement with the teacher on synthetic probes."""
    if _num(d.get("accuracy")):
        teacher = f"; {teacher_name} {_pct(d['teacher_accuracy'])}" if _num(d.get("teacher_accuracy")) else ""
        on = f" on {d['evaluated_on']}" if d.get("evaluated_on") else ""
        return f"{_pct(d['accuracy'])}{on}{teacher}"
    if _num(d.get("probe_agreement")):
        return f"no evaluation data; agrees with the {teacher_name} on {_pct(d['probe_agreement'])} of synthetic probes"
    return "not evaluated"


def _source(report: dict) -> str | None:
    """What the bundle's model is: a student distilled from the teacher, or the model itself."""
    if report.get("source") is None:
        return None
    what = "the model itself, quantized without distillation" if _own(report) else "a student distilled from the teacher"
    return f"{what} ({report['teacher']})" if report.get("teacher") else what


def _deploy_latency(d: dict) -> str:
    if not _num(d.get("p50_ms")):
        return "not measured"
    other = "FP32" if d.get("precision") == "int8" else "INT8"
    vs = f" ({other}: {d['other_p50_ms']:.3f} ms)" if _num(d.get("other_p50_ms")) else ""
    return f"p50 {d['p50_ms']:.3f} ms at batch 1{vs}, {d.get('measured_on') or 'this host'}"


def deploy_section(report: dict) -> Section | None:
    """The report's opening: the model to deploy, how good, how big and fast on the host, and why."""
    d = _dict(report, "deploy")
    rows = [["Source", _source(report)]] if _source(report) else []
    if d is not None:
        rows += [["Model", f"{d.get('model', '—')} ({str(d.get('precision', '?')).upper()})"],
                 ["Accuracy", _deploy_accuracy(d, "FP32 model" if _own(report) else "teacher")],
                 ["Size", _bytes(d.get("bytes"))],
                 ["Host latency", _deploy_latency(d)], ["Why", str(d.get("reason", "—"))]]
    rows += [[k.capitalize(), str(report[k])] for k in ("target", "created") if report.get(k) is not None]
    return Section("Deploy" if d is not None else "Summary", ["Field", "Value"], rows) if rows else None


SENSITIVITY_ROWS = 10


def _drop_note(sens: dict, probes, subject: str) -> str:
    where = f"{probes} synthetic probes" if _num(probes) else "synthetic probes"
    note = f"Each layer alone in INT8, the rest in float, on {where}; most sensitive first."
    if sens.get("max_drop") is None:
        return note + " Every layer is quantized (no quantize.max_drop)."
    kept = sens.get("kept_float") or []
    return (f"{note} quantize.max_drop {_f(sens['max_drop'])} points: {len(kept)} layer(s) kept in float; "
            f"estimated drop {_f(sens.get('estimated_drop_points'))} points, measured after fine-tuning "
            f"{_f(sens.get('measured_drop_points'))} points (top-1 agreement with the FP32 {subject}).")


def sensitivity_section(quant: dict, subject: str = "student") -> Section | None:
    """The layers ranked by how far INT8 moves the student's output when each alone is quantized."""
    sens = quant.get("sensitivity")
    if not isinstance(sens, dict):
        return None
    ranking = _rows(sens.get("ranking"))
    kept = set(sens.get("kept_float") or [])
    rows = [[str(i + 1), str(r.get("layer", "—")), _pct(r.get("agreement")), _f(r.get("drop_points")),
             _f(r.get("kl"), 5), "float" if r.get("layer") in kept else "INT8"]
            for i, r in enumerate(ranking[:SENSITIVITY_ROWS])]
    note = _drop_note(sens, quant.get("probe_samples"), subject)
    if len(ranking) > SENSITIVITY_ROWS:
        note += f" The {SENSITIVITY_ROWS} most sensitive of {len(ranking)} layers are shown."
    return Section("Layer sensitivity", ["Rank", "Layer", "Agreement with FP32", "Drop (points)", "KL", "Ships as"],
                   rows, note=note)


def quantization_sections(quant: dict, own: bool = False) -> list[Section]:
    """The quantization summary's fields, then its layer sensitivity ranking when it has one. `own`: of the
    model itself, whose teacher is its FP32 self."""
    labels = _OWN_QUANT_LABELS if own else _QUANT_LABELS
    rows = [[label, _pct(quant[k]) if k in _QUANT_PCT else _compact(quant[k])] for k, label in labels.items()
            if k in quant]
    rows += [[k.replace("_", " "), _compact(v)] for k, v in quant.items() if k not in labels and k != "sensitivity"]
    sens = sensitivity_section(quant, "model" if own else "student")
    return [Section("Quantization", ["Field", "Value"], rows), *([sens] if sens else [])]


def samples_section(samples: dict) -> Section:
    """Where a model quantized as it is got its calibration and fine-tuning samples."""
    counts = [c for c in samples.get("class_counts") or [] if _num(c)]
    made = f"{samples.get('classes_made', '—')} of {len(counts)}" if counts else "—"
    if counts:
        made += f" (top-1 counts on {sum(counts)} samples: {', '.join(str(c) for c in counts)})"
    rows = [["Generator rounds", str(samples.get("generator_steps", "—"))],
            ["BatchNorm-statistics prior", "yes" if samples.get("bn_prior") else "no"],
            ["Classes the samples cover", made],
            ["Wall time (s)", _f(samples.get("wall_s"), 1)]]
    note = ("No distillation: the model itself was calibrated and fine-tuned (by distillation from its FP32 self) "
            "on samples from a generator trained against its own priors.")
    return Section("Synthetic samples", ["Field", "Value"], rows, note=note)


def sections(report: dict) -> list[Section]:
    first = deploy_section(report)
    out = [first] if first else []

    acc = _dict(report, "accuracy")
    if acc is not None:
        on = acc.get("evaluated_on")
        rows = [[label, _pct(acc.get(k)) if _num(acc.get(k)) else "not evaluated", str(on) if on and _num(acc.get(k)) else "—"]
                for k, label in _accuracy_rows(report)]
        out.append(Section("Accuracy", ["Model", "Accuracy", "Evaluated on"], rows))

    samples = _dict(report, "samples")
    if samples is not None:
        out.append(samples_section(samples))

    dist = _dict(report, "distillation")
    if dist is not None:
        hist = _rows(dist.get("history"))
        steps = dist.get("steps", hist[-1].get("step") if hist else None)
        final = _pct(hist[-1].get("agreement")) if hist else "—"
        kl = hist[-1].get("probe_kl") if hist else None
        row = [str(steps) if steps is not None else "—", str(dist.get("replay") or "—"),
               _bytes(dist.get("replay_memory_bytes")), f"{_f(dist.get('wall_s'), 1)} s" if _num(dist.get("wall_s")) else "—", final,
               _f(kl, 3) if _num(kl) else "—"]
        est = dist.get("estimate") or {}
        reach = hist[-1].get("reach") if hist else None
        row += [describe_stop(dist),
                f"{_f(est.get('estimated_s'), 0)} s" if _num(est.get("estimated_s")) else "—",
                _probe_time(dist),
                _f(reach) if _num(reach) else "—", _verdict(dist)]
        out.append(Section("Distillation", ["Steps", "Replay", "Replay memory", "Wall time", "Final agreement",
                                            "Final probe KL", "Stopped by", "Estimated time", "Probe synthesis (before the clock)",
                                            "KD batch perturbation (of set size)", "Converged"], [row],
                           plot="distillation" if hist else None))

    quant = _dict(report, "quantization")
    if quant is not None:
        out += quantization_sections(quant, _own(report))

    lat = _rows(report.get("latency"))
    if lat:
        rows = [[str(r.get("model", "—")), str(r.get("runtime", "—")), _provider_short(r.get("provider")),
                 str(r.get("batch", "—")), str(r.get("threads", "—")), _f(r.get("p50_ms"), 3), _f(r.get("p90_ms"), 3),
                 _f(r.get("p99_ms"), 3), _f(r.get("mean_ms"), 3), _f(r.get("throughput_per_s"), 1),
                 str(r.get("measured_on", "—"))] for r in lat]
        out.append(Section("Latency", ["Model", "Runtime", "Provider", "Batch", "Threads", "p50 ms", "p90 ms", "p99 ms",
                                       "Mean ms", "Throughput /s", "Measured on"], rows, plot="latency"))

    arts = _rows(report.get("artifacts"))
    if arts:
        rows = [[str(a.get("path", "—")), str(a.get("role", "—")), _bytes(a.get("bytes"))] for a in arts]
        out.append(Section("Artifact sizes", ["Path", "Role", "Size"], rows, plot="sizes"))

    check = _dict(report, "check")
    if check is not None:
        rows = []
        for f in check.get("findings") or []:
            if isinstance(f, dict):
                rows.append([str(f.get("level", f.get("severity", "info"))), str(f.get("message", f))])
            else:
                rows.append(["info", str(f)])
        note = f"Checked for target {check['target']}." if check.get("target") else None
        if not rows:
            note = f"{note} No findings." if note else "No findings."
        out.append(Section("Target check", ["Level", "Finding"], rows, note=note))
    return out


# ---------- plots (matplotlib Agg canvas; no pyplot global state) ----------

def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: stable bytes
    return buf.getvalue()


def _figure(w: float = 6.4, h: float = 3.4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    return fig, fig.subplots()


def plot_distillation(history: list[dict]) -> bytes | None:
    pts = [r for r in _rows(history) if _num(r.get("step"))]
    if not pts:
        return None
    fig, ax = _figure()
    agree = [(r["step"], r["agreement"]) for r in pts if _num(r.get("agreement"))]
    acc = [(r["step"], r["accuracy"]) for r in pts if _num(r.get("accuracy"))]
    if agree:
        ax.plot(*zip(*agree), marker=".", label="agreement with teacher")
    if acc:
        ax.plot(*zip(*acc), marker="o", label="student accuracy")
    ax.set(xlabel="distillation step", ylabel="fraction", ylim=(0, 1.02), title="Distillation progress")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")  # wherever the curves are not
    return _png(fig)


def _latency_label(r: dict) -> str:
    return f"{r.get('model', '?')}\nb{r.get('batch', '?')} t{r.get('threads', '?')} {_provider_short(r.get('provider'))}"


def plot_latency(rows: list[dict]) -> bytes | None:
    """A box plot of the samples when every row carries them, else p50/p90/p99 bars."""
    rows = _rows(rows)
    if not rows:
        return None
    fig, ax = _figure(max(6.4, 1.6 * len(rows)), 3.8)
    labels = [_latency_label(r) for r in rows]
    if all(isinstance(r.get("samples_ms"), list) and r["samples_ms"] for r in rows):
        ax.boxplot([r["samples_ms"] for r in rows], showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(rows) + 1), labels)
        ax.set_title("Latency distribution")
    else:
        width = 0.25
        for i, key in enumerate(("p50_ms", "p90_ms", "p99_ms")):
            vals = [r.get(key) if _num(r.get(key)) else 0 for r in rows]
            ax.bar([x + (i - 1) * width for x in range(len(rows))], vals, width, label=key[:-3])
        ax.set_xticks(range(len(rows)), labels)
        ax.legend()
        ax.set_title("Latency percentiles")
    ax.set_ylabel("ms per batch")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_sizes(artifacts: list[dict]) -> bytes | None:
    arts = [a for a in _rows(artifacts) if _num(a.get("bytes"))]
    if not arts:
        return None
    fig, ax = _figure(6.4, max(2.0, 0.45 * len(arts) + 1))
    ax.barh([f"{a.get('role', '?')}\n{a.get('path', '')}" for a in arts], [a["bytes"] / 2**20 for a in arts])
    ax.invert_yaxis()
    ax.set(xlabel="MB", title="Artifact sizes")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def make_plots(report: dict) -> dict[str, bytes]:
    dist = _dict(report, "distillation") or {}
    plots = {
        "distillation": plot_distillation(dist.get("history")),
        "latency": plot_latency(report.get("latency")),
        "sizes": plot_sizes(report.get("artifacts")),
    }
    return {k: v for k, v in plots.items() if v}


# ---------- renderers (pure) ----------

def _md_cell(s: str) -> str:
    # Escaped like html too: markdown viewers render raw HTML, so a model name must not become markup.
    return html.escape(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict, plot_files: dict[str, str] | None = None) -> str:
    plot_files = plot_files or {}
    lines = [f"# Pipeline report{(' — ' + _md_cell(str(report['target']))) if report.get('target') else ''}", ""]
    for s in sections(report):
        lines += [f"## {s.title}", ""]
        if s.note:
            lines += [_md_cell(s.note), ""]
        if s.rows:
            lines.append("| " + " | ".join(_md_cell(h) for h in s.headers) + " |")
            lines.append("|" + "|".join("---" for _ in s.headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows]
            lines.append("")
        if s.plot in plot_files:
            lines += [f"![{s.title}]({plot_files[s.plot]})", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}"""


def render_html(report: dict, plots: dict[str, bytes] | None = None) -> str:
    plots = plots or {}
    e = html.escape
    title = "Pipeline report" + (f" — {report['target']}" if report.get("target") else "")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for s in sections(report):
        parts.append(f"<section><h2>{e(s.title)}</h2>")
        if s.note:
            parts.append(f"<p>{e(s.note)}</p>")
        if s.rows:
            parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in s.headers) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in s.rows]
            parts.append("</tbody></table>")
        if s.plot in plots:
            b64 = base64.b64encode(plots[s.plot]).decode("ascii")
            parts.append(f'<img alt="{e(s.title)} plot" src="data:image/png;base64,{b64}">')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_reports(bundle_dir, report: dict) -> list[Path]:
    """Write report.json (samples stripped), report.md (+ its PNGs) and report.html; each atomically."""
    bundle_dir = Path(bundle_dir)
    written = [write_json(bundle_dir / REPORT_JSON, strip_samples(report))]
    plots = make_plots(report)
    plot_files = {}
    for name, png in plots.items():
        rel = f"{PLOT_DIR}/{name}.png"
        written.append(write_bytes(bundle_dir / rel, png))
        plot_files[name] = rel
    written.append(write_text(bundle_dir / REPORT_MD, render_markdown(report, plot_files)))
    written.append(write_text(bundle_dir / REPORT_HTML, render_html(report, plots)))
    return written


# ---------- console tables ----------

def latency_table(rows: list[dict], accuracy: dict | None = None) -> Table:
    """Benchmark table: one line per measured model, Ultralytics-style columns."""
    t = Table(title="Latency")
    for col, just in (("Format", "left"), ("Model", "left"), ("Batch", "right"), ("Threads", "right"),
                      ("Size (MB)", "right"), ("Accuracy", "right"), ("p50 ms", "right"), ("p90 ms", "right"),
                      ("p99 ms", "right"), ("FPS", "right")):
        t.add_column(col, justify=just)
    for r in _rows(rows):
        size = r.get("size_bytes")
        t.add_row(
            f"{r.get('runtime', '?')}/{_provider_short(r.get('provider'))}", str(r.get("model", "—")),
            str(r.get("batch", "—")), str(r.get("threads", "—")),
            _f(size / 2**20, 2) if _num(size) else "—", _pct(_accuracy_for(r, accuracy)),
            _f(r.get("p50_ms"), 3), _f(r.get("p90_ms"), 3), _f(r.get("p99_ms"), 3), _f(r.get("throughput_per_s"), 1),
        )
    return t


def summary_table(report: dict) -> Table:
    """The few numbers a user looks at first, as a two-column console table."""
    t = Table(title="Summary", show_header=False)
    t.add_column("Field")
    t.add_column("Value")
    if _source(report):
        t.add_row("Source", _source(report))
    d = _dict(report, "deploy")
    if d is not None:
        t.add_row("Deploy", f"{d.get('model', '—')} ({str(d.get('precision', '?')).upper()}): {d.get('reason', '')}")
    for k in ("target", "created"):
        if report.get(k) is not None:
            t.add_row(k.capitalize(), str(report[k]))
    acc = _dict(report, "accuracy")
    if acc is not None:
        for k, label in _accuracy_rows(report):
            t.add_row(f"{label} accuracy", _pct(acc.get(k)) if _num(acc.get(k)) else "not evaluated")
    quant = _dict(report, "quantization")
    if quant and "int8_fp32_agreement" in quant:
        t.add_row("INT8 vs FP32 agreement", _pct(quant["int8_fp32_agreement"]))
    dist = _dict(report, "distillation")
    if dist:
        if dist.get("steps") is not None:
            t.add_row("Distillation steps", str(dist["steps"]))
        if _num(dist.get("replay_memory_bytes")):
            t.add_row("Replay memory", _bytes(dist["replay_memory_bytes"]))
        if dist.get("verdict"):
            t.add_row("Student converged", _verdict(dist))
    lat = [r for r in _rows(report.get("latency")) if _num(r.get("p50_ms"))]
    if lat:
        best = min(lat, key=lambda r: r["p50_ms"])
        t.add_row("Fastest p50", f"{best['p50_ms']:.3f} ms ({best.get('model', '?')}, batch {best.get('batch', '?')})")
    arts = [a for a in _rows(report.get("artifacts")) if _num(a.get("bytes"))]
    if arts:
        t.add_row("Artifacts total", _bytes(sum(a["bytes"] for a in arts)))
    return t


def _probe_time(dist: dict) -> str:
    seconds = f"{_f(dist.get('probes_s'), 1)} s" if _num(dist.get("probes_s")) else "—"
    return f"{seconds}, made twice: the first set broke under noise" if dist.get("probes_robust") is True else seconds


def _verdict(dist: dict) -> str:
    """'yes', 'NO: why; what to try' for a student that did not learn the teacher (judged without data), or why
    it was not judged."""
    v = dist.get("verdict") or {}
    if v.get("converged") is None:
        return v.get("reason") or "—"
    if v["converged"]:
        return "yes"
    return f"NO: {v.get('reason', '')}; try {v.get('try', '')}"
