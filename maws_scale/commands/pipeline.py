"""`maws-scale pipeline CONFIG [key=value ...]`: MAE pre-pretraining → WSP → evaluation, restartable."""

from __future__ import annotations

import argparse

from maws_scale.commands.train import add_stage_run_arguments, run_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline",
        help="run the MAWS recipe: MAE, then WSP initialised from the MAE encoder, then evaluation",
        description="Run MAE → WSP → eval. Finished stages (consolidated.pt present, same config) are skipped and "
        "interrupted ones resume, so re-running the same command continues a crashed pipeline; a stage folder that "
        "holds another config's run is refused with the differing keys.\n\nexample: maws-scale pipeline "
        "configs/demo.yaml train.steps=50 --output-dir runs/demo50",
    )
    add_stage_run_arguments(parser)
    parser.set_defaults(func=_pipeline)


def _pipeline(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    from maws_scale.train.pipeline import run_pipeline

    run_pipeline(cfg)
    return 0
