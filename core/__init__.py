"""The ground floor: errors, file I/O, bundles, output directories, the teacher, evaluation.

Every other package may import from here; nothing here imports from `pipeline`, `stages` or `targets`.
"""

__version__ = "0.1.0"
FORMAT_VERSION = 2  # 2: manifest "version" (rollback protection) and a "health-probes" artifact
