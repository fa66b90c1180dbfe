"""USR1 reopens log files, as logrotate expects (`postrotate: kill -USR1 <corral pid>`)."""

from __future__ import annotations

import os
import signal

from supervisor_util import Corral
from util import wait_until


def test_usr1_reopens_the_apps_log_files_after_rotation(tmp_path):
    logfile = tmp_path / "app.log"
    with Corral(tmp_path, app="filelog_app:app", workers=2,
                env={"FILELOG_APP_PATH": str(logfile)}) as corral:
        assert corral.get("/before")[0] == 200
        wait_until(lambda: "served /before" in logfile.read_text(), what="the app's first log line")

        rotated = tmp_path / "app.log.1"
        os.rename(logfile, rotated)  # what logrotate does before its postrotate script
        os.kill(corral.proc.pid, signal.SIGUSR1)

        # Every worker must have reopened: keep requesting until both worker pids wrote the new file.
        def both_workers_write_the_new_file() -> bool:
            corral.get("/after")
            if not logfile.exists():
                return False
            return len({line.split()[-1] for line in logfile.read_text().splitlines()
                        if "served /after" in line}) == 2
        wait_until(both_workers_write_the_new_file, timeout=60, what="both workers logging to the new file")
        # A request a worker served before its USR1 arrived rightly went to the
        # rotated file. Once both have reopened, nothing more may go there, and
        # no line may be lost.
        rotated_before = rotated.read_text()
        for _ in range(20):
            assert corral.get("/later")[0] == 200
        wait_until(lambda: logfile.read_text().count("served /later") == 20, timeout=30,
                   what="all 20 later requests in the new file")
        assert rotated.read_text() == rotated_before
        assert "USR1: log files reopened" in corral.log()
