"""Trusted bundles on a device: Ed25519 signatures over the manifest, atomic installs, rollback."""
