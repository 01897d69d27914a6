"""``maws-scale`` as a script, for run_torchrun (which launches a file): ``cli_entry.py bench CONFIG ...``."""

import sys

from dist_support import prepare_worker

from maws_scale.cli import main

if __name__ == "__main__":
    prepare_worker()
    sys.exit(main())
