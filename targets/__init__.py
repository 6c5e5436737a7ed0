"""Deployment targets behind one interface (export, build, benchmark)."""
