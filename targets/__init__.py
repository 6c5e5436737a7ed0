"""Deployment targets behind one interface (export, build, benchmark).

The names are listed here, free of any runtime import, so that a config can be checked before the
targets' runtimes load; `targets.registry` holds one implementation per name.
"""

TARGET_NAMES = ("jetson", "mobile")
