"""A full disk (or any failed write) at save time ends the run with one line naming the path and the cause."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_support import fresh_process_env

from maws_scale.errors import WriteError
from maws_scale.parallel.consolidate import write_state_dict

DEV_FULL = Path("/dev/full")


def test_consolidated_weights_on_a_full_disk_name_the_file_and_the_cause(tmp_path):
    out = tmp_path / "consolidated.pt"
    (tmp_path / ".consolidated.pt.tmp").symlink_to(DEV_FULL)  # every write there fails with ENOSPC
    with pytest.raises(WriteError, match=rf"cannot write consolidated weights {out}: No space left on device"):
        write_state_dict({"w": torch.ones(1000)}, out, {})
    assert not out.exists()


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


def test_a_checkpoint_write_failure_is_one_line_with_the_path_and_exit_1(tmp_path):
    # a real failed write inside DeepSpeed's save_checkpoint (files over 256 KiB fail with EFBIG, as ENOSPC would)
    env = fresh_process_env() | {"DS_ACCELERATOR": "cpu"}  # this process may hold a world
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  name: vit_tiny_p4\n")
    args = [
        *("train", str(config), "data.synthetic=true", "train.steps=1", "train.global_batch=2"),
        *("train.micro_batch=2", "optim.impl=torch", "parallel.precision=fp32", "parallel.zero_stage=0"),
        *("tracking.enabled=false", "--output-dir", str(tmp_path / "run")),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "maws_scale.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "cannot write checkpoint" in error[0] and "File too large" in error[0], done.stderr
    assert str(tmp_path / "run" / "mae" / "checkpoints") in error[0]


def test_a_write_that_fills_the_disk_reports_no_space_not_torchs_unexpected_pos(tmp_path, monkeypatch):
    # stand-in for a consolidated.pt too large for the disk: the partial file fills it, torch reports only
    # "unexpected pos"; the cause must be read while that file still exists, not after it is removed
    import types

    from maws_scale import errors
    from maws_scale.parallel import consolidate

    out = tmp_path / "consolidated.pt"
    partial = tmp_path / ".consolidated.pt.tmp"
    free = 1 << 40

    def fill_disk(obj, path):
        Path(path).write_bytes(b"\0" * 4096)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    def statvfs(path):  # the disk is full exactly while the partial file exists
        return types.SimpleNamespace(f_bavail=0 if partial.exists() else free, f_frsize=1)

    monkeypatch.setattr(consolidate, "torch_save", fill_disk)
    monkeypatch.setattr(errors.os, "statvfs", statvfs)
    with pytest.raises(WriteError, match=rf"cannot write consolidated weights {out}: No space left on device"):
        write_state_dict({"w": torch.ones(10)}, out, {})
    assert not out.exists() and not partial.exists()
