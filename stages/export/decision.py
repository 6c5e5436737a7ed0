"""Which model a bundle recommends deploying, INT8 or FP32, and why: INT8 only where it pays.

A pure function of what export measured: the host latency rows, the quantization summary's probe
agreements and the accuracies when evaluation data exists. The latency is the host CPU's; a phone or a
Jetson can rank the two models differently, so every reason names where it was measured.
"""

from __future__ import annotations

from core import workdir as wd

ROLES = {"fp32": "student-fp32-onnx", "int8": "student-int8-onnx"}
FILES = {"fp32": wd.FP32_ONNX, "int8": wd.INT8_ONNX}


def host_row(latency: list[dict], path: str, batch: int = 1) -> dict | None:
    """The host ONNX Runtime row that measured `path` at `batch` (the fewest threads), or None."""
    rows = [r for r in latency if isinstance(r, dict) and r.get("runtime") == "onnxruntime"
            and str(r.get("model", "")).split(":")[0] == path and r.get("batch") == batch
            and isinstance(r.get("p50_ms"), (int, float))]
    return min(rows, key=lambda r: r.get("threads") or 0) if rows else None


def _latency_reason(target: str, p50: dict[str, float | None]) -> tuple[str, str]:
    """(precision, reason) from the batch-1 host p50s."""
    fp32, int8 = p50["fp32"], p50["int8"]
    if fp32 is None or int8 is None:
        return "int8", "no host latency for both models was measured, so the quantized model is kept"
    measured = f"INT8 p50 {int8:.3f} ms vs FP32 {fp32:.3f} ms at batch 1 on this host CPU"
    if target == "jetson":
        return "int8", (f"TensorRT picks INT8 or float per layer when it builds the engine on the Jetson; "
                        f"host measurement only: {measured}")
    if int8 > fp32:
        return "fp32", (f"INT8 is slower than FP32 here ({measured}): its quantize/dequantize steps cost more "
                        f"than the integer arithmetic saves; this is about the host CPU, measure on the phone")
    return "int8", f"INT8 is as fast or faster ({measured}); this is about the host CPU, measure on the phone"


def deploy_decision(target: str, latency: list[dict], quantization: dict, accuracy: dict,
                    sizes: dict[str, int]) -> dict:
    """The model to deploy with its role, accuracy (or probe agreement), size, host latency and reason."""
    rows = {k: host_row(latency, FILES[k]) for k in FILES}
    p50 = {k: r["p50_ms"] if r else None for k, r in rows.items()}
    precision, reason = _latency_reason(target, p50)
    measured_on = next((r.get("measured_on") for r in rows.values() if r), None)
    acc = accuracy.get(f"student_{precision}") if accuracy else None
    return {
        "model": FILES[precision],
        "role": ROLES[precision],
        "precision": precision,
        "reason": reason,
        "measured_on": measured_on,
        "p50_ms": p50[precision],
        "other_p50_ms": p50["int8" if precision == "fp32" else "fp32"],
        "bytes": sizes.get(FILES[precision]),
        "accuracy": acc,
        "teacher_accuracy": accuracy.get("teacher") if accuracy else None,
        "evaluated_on": accuracy.get("evaluated_on") if accuracy else None,
        "probe_agreement": quantization.get(f"teacher_agreement_{precision}"),
    }


def manifest_entry(decision: dict) -> dict:
    """What the manifest records: enough for a program to pick the file, and the reason for a person."""
    return {"model": decision["model"], "role": decision["role"], "reason": decision["reason"]}
