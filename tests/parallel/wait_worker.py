"""torchrun worker: rank 0 works longer than the default group's timeout while the others wait.

python -m torch.distributed.run --nproc_per_node 2 wait_worker.py long|default
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

import torch.distributed as dist

from maws_scale.parallel.waits import wait_for_rank0


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=3))
    if dist.get_rank() == 0:
        time.sleep(8)  # "evaluation" on rank 0, past the default group's 3 s timeout
    if sys.argv[1] == "long":
        wait_for_rank0(minutes=1.0)
    else:
        dist.barrier()
    print(f"rank {dist.get_rank()} passed the wait", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
