"""``maws-scale`` as a script, for run_torchrun (which launches a file): ``cli_entry.py bench CONFIG ...``."""

import sys

from maws_scale.cli import main

if __name__ == "__main__":
    sys.exit(main())
