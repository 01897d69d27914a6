"""Reading and writing files safely.

Reading: only regular files are read, so a FIFO, device or socket given in place of a shard, config or image is
refused with an error naming it instead of blocking forever. Writing: through a temporary file and a rename
(:func:`maws_scale.errors.write_atomic`), so a failed or interrupted write never leaves a half file under the final
name, and a failure names the path and the OS error."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from maws_scale.errors import write_atomic


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
    """The whole content of the regular file ``path`` (see :func:`open_regular`). ``/dev/null`` (``os.devnull``)
    reads as empty: it never blocks, and ``maws-scale plan /dev/null model.name=…`` is the way to say "no config"."""
    if _is_devnull(path):
        return b""
    with os.fdopen(open_regular(path), "rb") as handle:
        return handle.read()


def _is_devnull(path: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(path, os.devnull)
    except OSError:
        return False


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a Python file, so a failed write raises OSError with its errno (given a path, torch
    raises ``enforce fail at inline_container.cc ... unexpected pos`` without the cause). Not atomic by itself: call
    it inside :func:`maws_scale.errors.write_atomic` or into a folder that is renamed into place."""
    import torch  # imported here: the data commands use this module and must not import torch

    with open(path, "wb") as handle:
        torch.save(obj, handle)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`maws_scale.errors.write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))
