"""`maws-scale train CONFIG [key=value ...]`: train one stage (``stage=mae|wsp|finetune|…``) on any launcher."""

from __future__ import annotations

import argparse

from maws_scale.commands._common import add_config_arguments, config_from_args
from maws_scale.config import RunConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one stage (stage=mae; stage=wsp with wsp.init_from=PATH or wsp.init=random; stage=finetune with "
        "finetune.init_from=PATH or finetune.init=random)",
        description="Train one stage. Works as one process, under torchrun, and under `deepspeed -m maws_scale.cli`. "
        "A config with a `stages:` section gets that stage's overrides applied.",
    )
    add_stage_run_arguments(parser)
    parser.set_defaults(func=_train)


def add_stage_run_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, overrides, and the run flags shared by `train` and `pipeline`."""
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="auto|PATH", help="checkpoint.resume: 'auto' = newest complete checkpoint")
    parser.add_argument("--tracking-uri", metavar="URI", help="tracking.uri: an MLflow server or store")
    parser.add_argument("--output-dir", metavar="DIR", help="output_dir")


def run_config(args: argparse.Namespace) -> RunConfig:
    """Load the config and fold the flags in as overrides (so the error messages name the config keys).

    What is given on the command line wins over the config's ``stages.<stage>`` sections too (``load_config`` does
    that for every command): ``maws-scale train demo.yaml stage=mae train.steps=10`` runs 10 steps even if
    ``stages.mae`` sets ``train.steps``.
    """
    extra = []
    if args.resume:
        extra.append(f"checkpoint.resume={args.resume}")
    if args.tracking_uri:
        extra.append(f"tracking.uri={args.tracking_uri}")
    if args.output_dir:
        extra.append(f"output_dir={args.output_dir}")
    args.overrides = [*(args.overrides or []), *extra]
    return config_from_args(args)


def _train(args: argparse.Namespace) -> int:
    cfg = run_config(args).resolved()
    cfg.check_standalone()
    from maws_scale.train.pipeline import finished_stage

    done = finished_stage(cfg)  # another config's finished stage: ConfigError naming the keys
    if done is not None:  # the same config finished: a no-op that says so (its MLflow run is not reopened)
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(
            f"[{cfg.stage}] already finished with this config ({done}); not run again", highlight=False, markup=False
        )
        return 0
    from maws_scale.train.loop import train_stage

    train_stage(cfg)
    return 0
