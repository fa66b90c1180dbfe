"""Test harnesses shared across test directories (``from harness.systemd import SystemdNamespace``)."""
