"""Arguments shared by subcommands."""

from __future__ import annotations

import argparse

from maws_scale.commands._intermixed import allow_intermixed
from maws_scale.config import RunConfig, load_config


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add the positional CONFIG (YAML) and ``key=value`` overrides, which may come before or after any option."""
    allow_intermixed(parser)
    parser.add_argument("config", nargs=None if required else "?", help="run config (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=1e-3")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Load and validate the config named on the command line (raises ConfigError)."""
    return load_config(getattr(args, "config", None), getattr(args, "overrides", None))
