"""`maws-scale` command line: each subcommand lives in its own module under ``maws_scale.commands``.

A command module defines ``register(subparsers)``; it adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code. Modules are found by discovery, so a command either works or is absent.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading

from rich.console import Console
from rich.markup import escape

from maws_scale import __version__, commands
from maws_scale.config import ConfigError
from maws_scale.errors import RunError

console = Console(stderr=True, soft_wrap=True)
EXAMPLES = {  # shown at the end of each command's --help
    "bench": "maws-scale bench configs/demo.yaml --steps 20 --warmup 5",
    "config": "maws-scale config show configs/demo.yaml --stage wsp train.steps=20; maws-scale config keys train",
    "data": "maws-scale data build --source fashion-mnist --input /usr/share/datasets/fashion-mnist --output "
    "data/fmnist-mosaic/train --split train --variant mosaic",
    "eval": "maws-scale eval runs/demo/wsp/consolidated.pt --config configs/demo.yaml",
    "export": "maws-scale export runs/demo/wsp/consolidated.pt --out vit.safetensors --model vit_tiny_p4",
    "launch": "maws-scale launch configs/vit_2b14_maws.yaml --slurm --nodes 8 --gpus-per-node 8 --partition P",
    "models": "maws-scale models --markdown",
    "pipeline": "maws-scale pipeline configs/demo.yaml train.steps=50 --output-dir runs/demo50",
    "plan": "maws-scale plan configs/vit_2b14_maws.yaml --gpus 64 --search",
    "sweep": "maws-scale sweep configs/sweeps/scaling.yaml && maws-scale sweep report configs/sweeps/scaling.yaml",
    "train": "maws-scale train configs/demo.yaml stage=wsp wsp.init=random --output-dir runs/demo-random",
}


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
    for name, sub in subparsers.choices.items():
        if name in EXAMPLES and not sub.epilog:
            sub.epilog = f"example: {EXAMPLES[name]}"
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code. Run as a program (``argv`` None), SIGTERM (a
    killed job) becomes SystemExit, so open MLflow runs are closed as KILLED instead of staying RUNNING."""
    main_thread = threading.current_thread() is threading.main_thread()
    if argv is None and main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
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
