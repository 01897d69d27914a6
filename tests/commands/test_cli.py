"""The `maws-scale` CLI: help everywhere, config show/check exit codes and messages."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from maws_scale.cli import build_parser, main

DEMO = str(Path(__file__).parents[2] / "configs" / "demo.yaml")


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


def test_config_show_of_a_stage_honours_command_line_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    assert main(["config", "show", DEMO, "--stage", "wsp", "train.steps=20"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["steps"] == 20 and shown["optim"]["lr"] == pytest.approx(2e-3)  # the rest of stages.wsp


def test_plan_plans_the_stage_it_names(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["plan", DEMO, "stage=wsp", "stages.wsp.train.micro_batch=16", "wsp.num_classes=10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["layout"]["micro_batch"] == 16


def test_sigterm_becomes_system_exit_so_runs_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from maws_scale import cli

    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.update({sig: handler}))
    installed: dict = {}
    assert main(["config", "check", DEMO]) == 0
    assert not installed  # called from Python (tests, notebooks): the caller's signal handling is left alone
    monkeypatch.setattr(sys, "argv", ["maws-scale", "config", "check", DEMO])
    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)
    assert main() == 0
    handler = installed[signal.SIGTERM]
    assert handler is cli._terminate
    with pytest.raises(SystemExit) as exit_info:
        handler(signal.SIGTERM, None)
    assert exit_info.value.code == 128 + signal.SIGTERM


def test_config_keys_lists_every_key_with_type_default_and_description(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["config", "keys", "--json"]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["model.pool"]["type"] == "'cls' | 'gap' | 'map' | 'max'" and rows["model.pool"]["default"] == "'cls'"
    assert rows["train.steps"]["description"].startswith("optimizer steps") and "seed" in rows
    assert main(["config", "keys", "model"]) == 0
    assert "model.width" in capsys.readouterr().out
    assert main(["config", "keys", "modle"]) == 2


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_help_has_an_example(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([name, "--help"])
    assert f"example: maws-scale {name}" in capsys.readouterr().out


OPTION_OF = {"train": ["--output-dir", "runs/x"], "pipeline": ["--output-dir", "runs/x"], "bench": ["--json"],
             "plan": ["--json"], "config check": ["--world-size", "1"]}  # fmt: skip


@pytest.mark.parametrize("command", list(OPTION_OF))
def test_overrides_may_follow_an_option(command: str) -> None:
    """`train CONFIG a=1 --output-dir D b=2` parses like every other command (issue 25: train/pipeline exited 2)."""
    argv = [*command.split(), DEMO, "stage=wsp", *OPTION_OF[command], "train.steps=30"]
    assert build_parser().parse_args(argv).overrides == ["stage=wsp", "train.steps=30"]


def test_every_command_taking_overrides_parses_them_after_options() -> None:
    """A subcommand with a KEY=VALUE positional is intermixed, so no command is left behind."""
    from maws_scale.commands._intermixed import IntermixedParser

    def parsers(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield sub
                    yield from parsers(sub)

    taking = [p for p in parsers(build_parser()) if any(a.metavar == "KEY=VALUE" for a in p._actions)]
    assert len(taking) >= 8 and all(isinstance(p, IntermixedParser) for p in taking), [
        p.prog for p in taking if not isinstance(p, IntermixedParser)
    ]
