"""Experiments: sweeps, their reports (power laws, scaling fits, MAWS gain) and the figures of the docs."""
