"""The `maws-scale` CLI: help everywhere, config show/check exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maws_scale.cli import build_parser, main

DEMO = str(Path(__file__).parents[1] / "configs" / "demo.yaml")


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_the_console_script_answers_help() -> None:
    result = subprocess.run([sys.executable, "-m", "maws_scale.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "config" in result.stdout


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: maws-scale" in capsys.readouterr().out


def test_config_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", DEMO]) == 0
    out = capsys.readouterr().out
    assert "ok: stage mae" in out and "ok: stage wsp" in out


def test_config_check_refuses_a_wrong_key_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", DEMO, "parallel.zero_stge=3"]) == 2
    assert "parallel.zero_stge" in capsys.readouterr().err


def test_config_check_refuses_an_impossible_layout(capsys: pytest.CaptureFixture[str]) -> None:
    overrides = ["train.global_batch=64", "train.micro_batch=48", "stages={}"]
    assert main(["config", "check", DEMO, *overrides, "--world-size", "2"]) == 2
    assert "train.global_batch=64 is not a multiple of train.micro_batch=48" in capsys.readouterr().err


def test_config_show_resolves_stage_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", DEMO, "model.pool=gap", "--stage", "wsp"]) == 0
    out = capsys.readouterr().out
    assert "stage: wsp" in out and "pool: gap" in out
