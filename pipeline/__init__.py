"""Edge-deployment pipeline: data-free distillation, INT8 quantization, export to a target."""

__version__ = "0.1.0"
FORMAT_VERSION = 2  # 2: manifest 'version' (rollback protection) and a 'health-probes' artifact
