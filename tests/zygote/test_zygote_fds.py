"""The zygote gives each fd a forked worker inherits the number the supervisor named
(corral.worker.zygote.move_fds), even when the numbers the zygote received them under collide
with the targets: a worker reading its hello must find its listeners, balance table and
in-flight table where the supervisor said."""

from __future__ import annotations

import os

from corral.worker.zygote import move_fds


def test_fds_land_on_their_targets_even_when_numbers_collide():
    pipes = [os.pipe() for _ in range(4)]
    sources = [w for _r, w in pipes]
    # Targets that are other sources' current numbers, in a rotated order: a naive dup2 loop
    # would close a source before it is moved.
    targets = sources[1:] + sources[:1]
    pid = os.fork()
    if pid == 0:
        try:
            move_fds(sources, targets)
            for index, target in enumerate(targets):
                os.write(target, f"{index}".encode())
            os._exit(0)
        except BaseException:
            os._exit(1)
    for _r, w in pipes:
        os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # targets[i] (pipe i+1's number before the move) must now be pipe i's write end.
    for index, (read_end, _w) in enumerate(pipes):
        data = os.read(read_end, 16)
        os.close(read_end)
        assert data == str(index).encode(), (index, data)
