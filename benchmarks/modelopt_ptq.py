"""NVIDIA Model Optimizer's ONNX INT8 post-training quantization of one model, for benchmarks/peers.py.

    MODELOPT_PYTHON benchmarks/modelopt_ptq.py FP32.onnx CALIB.npy OUT.onnx

Run by the Python of Model Optimizer's own environment, never the project's: `nvidia-modelopt[onnx]` pins
onnxruntime-gpu and an older onnx, which would replace the project's onnxruntime. Its defaults are kept
but two: calibration runs on the CPU (the only execution provider here) and the layers left unquantized
stay FP32 instead of FP16, which the CPU build of ONNX Runtime the project measures on does not target.
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str]) -> int:
    fp32, calib, out = argv
    from modelopt.onnx.quantization import quantize

    quantize(fp32, quantize_mode="int8", calibration_data=np.load(calib), calibration_eps=["cpu"],
             high_precision_dtype="fp32", output_path=out, log_level="ERROR")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
