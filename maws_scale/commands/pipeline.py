"""`maws-scale pipeline CONFIG [key=value ...]`: MAE pre-pretraining → WSP → evaluation, restartable."""

from __future__ import annotations

import argparse

from rich.console import Console

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
    parser.add_argument(
        "--floors",
        action="store_true",
        help="also train the WSP-only baseline (wsp.init=random) and evaluate the untrained encoder, into the same "
        "MLflow store with the same evaluation; print the three side by side (<output_dir>/floors.md, floors.json)",
    )
    parser.add_argument(
        "--baseline-dir", metavar="DIR", help="with --floors: the baseline's output_dir (default <output_dir>-random)"
    )
    parser.set_defaults(func=_pipeline)


def _pipeline(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    if args.floors:
        from maws_scale.experiments.demo_floors import MissingArm, run_floors

        try:
            run_floors(args.config, args.overrides, args.baseline_dir)
        except MissingArm as err:
            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {err}")
            return 1
        return 0
    from maws_scale.train.pipeline import run_pipeline

    run_pipeline(cfg)
    return 0
