"""``wsgi.file_wrapper``: lets the server send a real file with ``os.sendfile``.

An app returns ``environ["wsgi.file_wrapper"](f)``. When ``f`` is a regular
file with a ``fileno()``, the server copies it from the page cache to the socket
in the kernel; anything else (a ``BytesIO``, a pipe) is simply iterated in
``blksize`` blocks, as PEP 3333 requires of every file wrapper.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any


class FileWrapper:
    """The iterable an app returns for a file; ``close()`` closes the file."""

    __slots__ = ("filelike", "blksize")

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        size = self.blksize
        while True:
            block = read(size)
            if not block:
                return
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def sendfile_span(self) -> tuple[int, int, int] | None:
        """``(fd, offset, remaining)`` if the file can go through ``os.sendfile``, else None.

        The offset is the file's current position (an app may have seeked to
        serve a range); ``remaining`` is what lies between it and the end.
        """
        fileno = getattr(self.filelike, "fileno", None)
        if fileno is None:
            return None
        try:
            fd = fileno()
            st = os.fstat(fd)
        except (OSError, ValueError):  # io.UnsupportedOperation is both
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        tell = getattr(self.filelike, "tell", None)
        try:
            # tell() accounts for bytes a buffered reader has read ahead; the fd's own offset would not.
            offset = tell() if tell is not None else os.lseek(fd, 0, os.SEEK_CUR)
        except (OSError, ValueError):
            return None
        return fd, offset, max(0, st.st_size - offset)

