"""torchrun worker: ``maws-scale eval`` as a launcher starts it on every rank.

    python -m torch.distributed.run --nproc_per_node N eval_command_worker.py OUT_DIR EVAL_ARGS...

Each rank's stdout goes to OUT_DIR/rank<R>.txt; the process exits with the command's code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from dist_support import prepare_worker

from maws_scale.cli import main


def run() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    prepare_worker()
    with open(out / f"rank{os.environ['RANK']}.txt", "w") as stdout, contextlib.redirect_stdout(stdout):
        return main(argv)


if __name__ == "__main__":
    sys.exit(run())
