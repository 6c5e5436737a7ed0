"""The three pipeline stages: distill, quantize, export."""
