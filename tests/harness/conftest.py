from harness.fixtures import systemd_ns  # noqa: F401  (re-exported fixture)
