"""Let ``KEY=VALUE`` overrides follow options: ``maws-scale launch CONFIG --slurm --nodes 8 optim.lr=1e-3``.

argparse stops filling positionals once an option follows them; ``parse_known_intermixed_args`` does not. A
subcommand parser opts in with :func:`allow_intermixed` (it must have no sub-subparsers and no REMAINDER).
"""

from __future__ import annotations

import argparse


class IntermixedParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``parse_known_args`` (what the parent's subparser action calls) is intermixed."""

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._parsing:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def allow_intermixed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Switch ``parser`` (made by ``subparsers.add_parser``) to intermixed parsing; return it."""
    parser.__class__ = IntermixedParser
    return parser
