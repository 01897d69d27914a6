"""Writing files so that a failed or interrupted write never leaves a half file under the final name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file, so a failed write raises OSError with its errno (given a path, torch
    raises ``enforce fail at inline_container.cc`` without the cause)."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
