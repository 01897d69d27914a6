"""Write failures name the path and the cause, even when the library that failed hides the cause."""

from __future__ import annotations

import os
from types import SimpleNamespace

from maws_scale.errors import WriteError, write_error


def test_an_os_error_gives_its_own_cause(tmp_path):
    err = write_error(tmp_path / "x.pt", OSError(28, "No space left on device"), "checkpoint")
    assert (
        isinstance(err, WriteError)
        and str(err) == f"cannot write checkpoint {tmp_path / 'x.pt'}: No space left on device"
    )


def test_a_torch_error_without_cause_on_a_full_disk_says_no_space(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "statvfs", lambda _: SimpleNamespace(f_bavail=0, f_frsize=4096))
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert (
        str(write_error(tmp_path / "x.pt", torch_error)) == f"cannot write {tmp_path / 'x.pt'}: No space left on device"
    )


def test_a_torch_error_with_room_on_disk_keeps_its_first_line(tmp_path):
    err = write_error(tmp_path / "x.pt", RuntimeError("something else\nmore detail"))
    assert str(err) == f"cannot write {tmp_path / 'x.pt'}: something else"
