"""Launching runs on clusters: the deepspeed launcher with a hostfile, SLURM through submitit, launch specs."""
