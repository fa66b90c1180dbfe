"""An app's log records reach corral's output exactly once (issue 12: Django LOGGING lines were doubled).

A worker writes every record that reaches the root logger to stderr. An app
logger with a stderr handler of its own (the usual Django ``LOGGING``) also
propagates to the root: before the fix each such record appeared twice, once in
the app's format and once in corral's. gunicorn and uvicorn print it once.
"""

from __future__ import annotations

from supervisor_util import Corral
from util import wait_until


def test_each_app_record_is_written_once(tmp_path):
    log_file = tmp_path / "app.log"
    with Corral(tmp_path, app="applog:app", workers=1, interface="wsgi",
                env={"APPLOG_FILE": str(log_file)}) as corral:
        status, body, _ = corral.get("/?first")
        assert (status, body) == (200, b"ok")
        wait_until(lambda: "null-handler first" in corral.log(), what="the app's records in corral's log")
        log = corral.log()
        # Its own stderr handler wrote it; corral does not write it again.
        assert log.count("own-handler first") == 1, log
        assert "APPFMT ERROR applog.own: own-handler first" in log
        # Records no handler of the app's wrote to stderr are corral's to write, once.
        assert log.count("no-handler first") == 1, log
        assert log.count("null-handler first") == 1, log
        assert log.count("file-handler first") == 1, log
        assert "file-handler first" in log_file.read_text()
