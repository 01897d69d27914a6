"""`maws-scale config show|check`: print the resolved config, or validate it and exit non-zero with the reason."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.syntax import Syntax

from maws_scale.commands._common import add_config_arguments, config_from_args
from maws_scale.commands._intermixed import allow_intermixed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show or check a run config")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = allow_intermixed(
        actions.add_parser(
            "show",
            help="print the resolved config (defaults and overrides applied)",
            description="Print the resolved config. Overrides win over the config's stages.<stage> sections.\n\n"
            "example: maws-scale config show configs/demo.yaml --stage wsp train.steps=20",
        )
    )
    add_config_arguments(show)
    show.add_argument("--stage", choices=["mae", "wsp"], help="resolve a pipeline stage's overrides too")
    show.set_defaults(func=_show)
    check = allow_intermixed(
        actions.add_parser("check", help="validate; exit 2 with the offending key if the config cannot run")
    )
    add_config_arguments(check)
    check.add_argument("--world-size", type=int, help="check the batch layout for this many ranks")
    check.set_defaults(func=_check)
    keys = actions.add_parser(
        "keys",
        help="list every config key with its type, default and description",
        description="List the config keys (all, or one section's).\n\nexample: maws-scale config keys model",
    )
    keys.add_argument("section", nargs="?", help="only this section (model, mae, wsp, data, optim, train, ...)")
    keys.add_argument("--json", action="store_true", help="print a JSON list")
    keys.set_defaults(func=_keys)


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


def _type_name(annotation: object) -> str:
    """``int | None``, ``'cls' | 'gap' | 'map' | 'max'`` (a Literal's choices), ``tuple[float, float]``."""
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def key_rows(section: str | None = None) -> list[dict[str, str]]:
    """One row per config key: dotted key, type, default, description (ConfigError for an unknown section)."""
    from pydantic_core import PydanticUndefined

    from maws_scale.config import SECTIONS, ConfigError, RunConfig

    if section is not None and section not in SECTIONS:
        raise ConfigError(f"config keys: unknown section '{section}' (known: {', '.join(SECTIONS)})")
    rows = []

    def add(prefix: str, fields: dict) -> None:
        for name, info in fields.items():
            if prefix == "" and name in SECTIONS:
                continue
            has_default = info.default is not PydanticUndefined or info.default_factory is not None
            default = info.get_default(call_default_factory=True) if has_default else None
            kind = _type_name(info.annotation)
            rows.append(
                {
                    "key": f"{prefix}{name}",
                    "type": kind,
                    "default": repr(default),
                    "description": info.description or "",
                }
            )

    if section is None:
        add("", RunConfig.model_fields)
    for name, model in SECTIONS.items():
        if section in (None, name):
            add(f"{name}.", model.model_fields)
    return rows


def _keys(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    rows = key_rows(args.section)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table(title=f"config keys{' of ' + args.section if args.section else ''}", title_justify="left")
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["key"], row["type"], row["default"], row["description"])
    Console().print(table)
    return 0
