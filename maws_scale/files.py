"""Opening input files safely: only regular files are read, so a FIFO, device or socket given in place of a shard,
config or image is refused with an error naming it instead of blocking forever."""

from __future__ import annotations

import errno
import os
import stat


def open_regular(path: str | os.PathLike) -> int:
    """Open ``path`` for reading without ever blocking (``O_NONBLOCK``: a FIFO with no writer would hang a plain
    ``open``) and return the descriptor; raise OSError naming the path when it is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise OSError(errno.EINVAL, f"{kind}; only regular files are read", os.fspath(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str | os.PathLike) -> None:
    """Raise OSError naming ``path`` unless it is a regular file (opened once, without blocking)."""
    os.close(open_regular(path))


def read_regular(path: str | os.PathLike) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`open_regular`)."""
    with os.fdopen(open_regular(path), "rb") as handle:
        return handle.read()
