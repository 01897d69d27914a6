"""Subcommands of `maws-scale`; each module defines ``register(subparsers)``."""
