"""Entry points of the edge-deployment pipeline: the CLI, the chained run and on-device updates."""

from core import FORMAT_VERSION, __version__  # noqa: F401  (the package's public version)
