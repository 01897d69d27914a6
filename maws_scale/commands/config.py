"""`maws-scale config show|check`: print the resolved config, or validate it and exit non-zero with the reason."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.syntax import Syntax

from maws_scale.commands._common import add_config_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show or check a run config")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved config (defaults and overrides applied)")
    add_config_arguments(show)
    show.add_argument("--stage", choices=["mae", "wsp"], help="resolve a pipeline stage's overrides too")
    show.set_defaults(func=_show)
    check = actions.add_parser("check", help="validate; exit 2 with the offending key if the config cannot run")
    add_config_arguments(check)
    check.add_argument("--world-size", type=int, help="check the batch layout for this many ranks")
    check.set_defaults(func=_check)


def _show(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.stage:
        config = config.for_stage(args.stage)
    Console().print(Syntax(config.to_yaml(), "yaml", theme="ansi_dark", background_color="default"))
    return 0


def _check(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not config.stages:
        config.check_standalone()  # one stage run: its inputs (init checkpoints) must be given
    for stage in config.stages or {config.stage: {}}:
        resolved = config.for_stage(stage)
        dp, accum = resolved.batch_layout(args.world_size)
        print(
            f"ok: stage {stage}, model {resolved.model.name}, world {dp * resolved.parallel.tp} "
            f"(dp {dp} × tp {resolved.parallel.tp}), global batch {resolved.train.global_batch} = "
            f"micro {resolved.train.micro_batch} × accum {accum} × dp {dp}, zero {resolved.parallel.zero_stage}"
        )
    return 0
