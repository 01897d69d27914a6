"""Errors that end a run with a message meant for the user: the CLI prints them as one line, no traceback."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

PROBE_BYTES = 1 << 20


class RunError(RuntimeError):
    """A run that cannot go on (diverged, unusable weights, a file that cannot be written); the message says why."""


class WriteError(RunError):
    """A file of the run could not be written; the message names the path and the cause."""


def write_error(path: str | os.PathLike, err: BaseException, what: str = "") -> WriteError:
    """A WriteError for a failed write of ``path``. Libraries often hide the cause (torch.save raises ``enforce
    fail at inline_container.cc``): then the directory's free space is read and a probe file written to find it."""
    path = Path(path)
    label = f"{what} " if what else ""
    return WriteError(f"cannot write {label}{path}: {write_cause(path, err)}")


def write_cause(path: Path, err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    directory = path if path.is_dir() else path.parent
    try:
        stats = os.statvfs(directory)
        if stats.f_bavail * stats.f_frsize < PROBE_BYTES:
            return os.strerror(28)  # ENOSPC: "No space left on device"
        with tempfile.TemporaryFile(dir=directory) as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as probe_error:
        return probe_error.strerror or str(probe_error)
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], what: str = "") -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it to ``path``: readers never see half a
    file. On any failure the temporary file is removed and a WriteError names ``path`` and the cause; the cause is
    read *before* the removal, while a partial file still fills the disk (torch then says only ``unexpected pos``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except WriteError:  # a nested write (a sidecar) already named its file
        tmp.unlink(missing_ok=True)
        raise
    except Exception as err:  # OSError, torch's RuntimeError, pyarrow's and safetensors' own error types
        error = write_error(path, err, what)
        tmp.unlink(missing_ok=True)
        raise error from err
    return path
