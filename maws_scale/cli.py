"""`maws-scale` command line: each subcommand lives in its own module under ``maws_scale.commands``.

A command module defines ``register(subparsers)``; it adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code. Modules are found by discovery, so a command either works or is absent.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from rich.console import Console
from rich.markup import escape

from maws_scale import __version__, commands
from maws_scale.config import ConfigError
from maws_scale.errors import RunError

console = Console(stderr=True, soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every discovered subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="maws-scale",
        description="Train billion-scale ViTs with the MAWS recipe: MAE pre-pretraining, then weakly-supervised "
        "pretraining.",
        allow_abbrev=False,  # else `data build --local` reads as an abbreviation of the hidden --local_rank
    )
    parser.add_argument("--version", action="version", version=f"maws-scale {__version__}")
    # `deepspeed -m maws_scale.cli ...` passes --local_rank=N first; the rank is read from LOCAL_RANK instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    had_world = _world_exists()
    try:
        code = int(args.func(args) or 0)
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {escape(str(err))}", highlight=False)
        return 2
    except (RunError, OSError) as err:  # diverged, unusable data, disk full: one line, no traceback
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        return 1
    if not had_world and _world_exists():  # the command made the process groups: tear them down before exit
        from maws_scale.parallel.distributed import shutdown_distributed

        shutdown_distributed()
    return code


def _world_exists() -> bool:
    """A torch.distributed world is initialised (without importing torch where no command has)."""
    distributed = sys.modules.get("torch.distributed")
    return bool(distributed is not None and distributed.is_available() and distributed.is_initialized())


if __name__ == "__main__":
    sys.exit(main())
