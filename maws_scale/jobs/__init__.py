"""Cluster jobs: DeepSpeed hostfile launches, SLURM jobs through submitit (requeue with resume), sweeps, reports."""
