"""What importing the engine's modules loads: ``corral.engine`` imports its parts on first use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from util import REPO


def _run(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (this one has imported the engine already)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_engine_settings_imports_no_server() -> None:
    """The config loader imports corral.engine.settings plainly: no httptools, uvloop or server with it."""
    done = _run("""
        import sys
        import corral.engine.settings
        heavy = sorted(m for m in ("httptools", "uvloop", "corral.engine.server", "corral.engine.protocol")
                       if m in sys.modules)
        assert not heavy, heavy
        corral.engine.settings.EngineSettings(max_request_line=100)
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_engine_package_names_load_on_first_use() -> None:
    done = _run("""
        import sys
        import corral.engine as engine
        assert "corral.engine.server" not in sys.modules
        from corral.engine import DURATION_BUCKETS, EngineSettings, EngineStats, LifespanError, Server
        assert Server.__module__ == "corral.engine.server" and "httptools" in sys.modules
        assert engine.EngineSettings is EngineSettings and DURATION_BUCKETS[0] == 0.001
        assert set(engine.__all__) <= set(dir(engine))
        try:
            engine.NoSuchName
        except AttributeError as exc:
            assert "NoSuchName" in str(exc), exc
        else:
            raise AssertionError("an unknown name must raise AttributeError")
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
