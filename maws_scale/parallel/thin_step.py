"""Work DeepSpeed's ZeRO 0–2 step does on one data-parallel rank that is the identity there: skipped, bit for bit.

**One data-parallel rank: the gradient reduction.** DeepSpeed 0.19 reduces gradients after backward whatever the
data-parallel size. ZeRO-0 flattens them, all-reduces and copies them back; ZeRO-1/2
(``DeepSpeedZeroOptimizer.allreduce_and_copy``) flatten each reduction bucket, divide it by the world size,
all-reduce it and copy it back into the gradients. Over one rank a sum is the identity and a division by 1.0 is
exact, yet each costs two copies of every gradient and a collective call per step. DeepSpeed already skips its own
parameter all-gather on one rank (``runtime/utils.py::all_gather_into_tensor_dp_groups``, "no groups share optimizer
states"); :func:`skip_one_rank_reduction` does the same for the reduction. Where the skipped work would not be the
identity, DeepSpeed's own code runs: more than one rank, sequence parallelism, a communication dtype other than the
gradients' (a round trip through it would round them), and ``overlap_comm`` (its side-stream bookkeeping; the CUDA
setting). ZeRO-1/2's bf16 path that accumulates into fp32 partitions
(``_allreduce_noncontiguous_bucket_preserving_fp32``) is not touched, nor DeepSpeed's ``BF16_Optimizer`` (what ZeRO-1
runs for a bf16 model accumulating in fp32, the default and the demo's).

**One data-parallel rank, an fp32 model under ZeRO-1/2: the master copy.** ZeRO-1/2 step an "fp32 master" partition
cloned from the model's own partition and copy it back into the model after every step. When the model is fp32
itself (and nothing is offloaded) the two hold the same values in the same dtype: :func:`share_fp32_master` makes
the master partition a view of the model's partition, so the optimizer updates the model in place, the copy back
becomes a copy onto itself (which torch skips), and the process keeps 4 bytes per parameter less. DeepSpeed's links
from each parameter to its master fragment (universal checkpoints, ``safe_get_full_fp32_param``) are rebuilt onto
the shared storage. Only on one rank: there the partition is the whole flat group, whereas on N ranks a partition is
a view into the group's full buffer, and DeepSpeed saves the master partition as a view (``torch.save`` writes the
whole storage: N times the optimizer file).

Both replace state of the DeepSpeed optimizer *instance* (a private method, a tensor's storage) and only when it
has the shape this was written against (DeepSpeed 0.19.8); otherwise a warning says the step keeps DeepSpeed's work.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any

import torch

log = logging.getLogger("maws_scale.parallel")

ZERO12_SIGNATURE = [
    "self",
    "small_bucket",
    "communication_data_type",
    "rank",
    "log",
    "divide",
    "process_group",
    "output_bucket",
]


def thin_zero_step(engine: Any) -> list[str]:
    """Apply :func:`skip_one_rank_reduction` and :func:`share_fp32_master` to ``engine``; → what each skipped."""
    thinned = [what for what in (skip_one_rank_reduction(engine), share_fp32_master(engine)) if what]
    if thinned:
        log.info("DeepSpeed step: skipped %s (identity here)", "; ".join(thinned))
    return thinned


def skip_one_rank_reduction(engine: Any) -> str | None:
    """Skip the gradient reduction of a one-data-parallel-rank ``engine`` (ZeRO 0–2); → what was skipped, or None."""
    if engine.dp_world_size != 1:
        return None
    stage = engine.zero_optimization_stage()
    if stage == 0:
        engine.enable_backward_allreduce = False  # the engine's flatten / all-reduce / copy-back after backward
        return "ZeRO-0 backward all-reduce"
    if stage in (1, 2) and _is_zero12_optimizer(engine.optimizer) and _skip_zero12_bucket_reduction(engine.optimizer):
        return f"ZeRO-{stage} bucket reduction"
    return None


def shares_fp32_master(dp_world_size: int, zero_stage: int, param_bytes: int, offload_optimizer: bool) -> bool:
    """Whether :func:`share_fp32_master` applies (the planner's memory model asks the same): one data-parallel rank,
    ZeRO-1/2, fp32 parameters, no optimizer offload."""
    return dp_world_size == 1 and zero_stage in (1, 2) and param_bytes == 4 and not offload_optimizer


def share_fp32_master(engine: Any) -> str | None:
    """One rank, ZeRO-1/2, fp32 parameters: the master partition becomes a view of the model's (module docstring)."""
    if not shares_fp32_master(engine.dp_world_size, engine.zero_optimization_stage(), 4, False):
        return None
    optimizer = engine.optimizer
    if not _is_zero12_optimizer(optimizer) or getattr(optimizer, "cpu_offload", False):
        return None
    needed = ("single_partition_of_fp32_groups", "parallel_partitioned_bit16_groups", "real_dp_process_group")
    if not all(hasattr(optimizer, name) for name in needed) or not hasattr(optimizer, "_link_all_hp_params"):
        warnings.warn(
            f"{type(optimizer).__name__} lacks {', '.join(needed)} or _link_all_hp_params (DeepSpeed 0.19.8): "
            "ZeRO-1/2 keeps a separate fp32 master copy of an fp32 model (correct, one copy per step slower)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    from deepspeed import comm as dist

    pairs = []
    for i, master in enumerate(optimizer.single_partition_of_fp32_groups):
        partition_id = dist.get_rank(group=optimizer.real_dp_process_group[i])
        model_partition = optimizer.parallel_partitioned_bit16_groups[i][partition_id]
        if model_partition.dtype != torch.float32 or not torch.equal(master, model_partition):  # equal: same shape
            return None
        pairs.append((master, model_partition))
    for master, model_partition in pairs:
        master.data = model_partition.data
    optimizer._link_all_hp_params()  # the parameters' links to their master fragments, onto the shared storage
    return f"ZeRO-{engine.zero_optimization_stage()} fp32 master copy"


def _is_zero12_optimizer(optimizer: Any) -> bool:
    """DeepSpeed's ZeRO-1/2 optimizer; not its BF16_Optimizer, which ZeRO-1 runs for a bf16 model accumulating in fp32
    (its own reduction and master, which this module leaves alone)."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    return isinstance(optimizer, DeepSpeedZeroOptimizer)


def _skip_zero12_bucket_reduction(optimizer: Any) -> bool:
    """Replace ``optimizer.allreduce_and_copy`` by its one-rank identity where that is exact (module docstring)."""
    method = getattr(type(optimizer), "allreduce_and_copy", None)
    add_to_partition = getattr(type(optimizer), "_add_to_grad_partition_buffer", None)
    if method is None or add_to_partition is None or list(inspect.signature(method).parameters) != ZERO12_SIGNATURE:
        warnings.warn(
            f"{type(optimizer).__name__} has no allreduce_and_copy{tuple(ZERO12_SIGNATURE[1:])} (DeepSpeed 0.19.8): "
            "the one-rank ZeRO-1/2 step keeps DeepSpeed's gradient reduction (correct, two gradient copies slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    from deepspeed import comm as dist
    from deepspeed.runtime.zero import stage_1_and_2

    reduce_and_copy = optimizer.allreduce_and_copy

    def allreduce_and_copy(
        small_bucket: list[torch.Tensor],
        communication_data_type: torch.dtype,
        rank: int | None = None,
        log: Any = None,
        divide: bool = True,
        process_group: Any = None,
        output_bucket: list[torch.Tensor | None] | None = None,
    ) -> None:
        group = optimizer.dp_process_group if process_group is None else process_group
        identity = (
            dist.get_world_size(group=group) == 1
            and not optimizer.overlap_comm
            and getattr(optimizer, "sequence_parallel_size", 1) == 1
            and not stage_1_and_2.pg_correctness_test
            and all(grad.dtype == communication_data_type for grad in small_bucket)
        )
        if not identity:
            reduce_and_copy(small_bucket, communication_data_type, rank, log, divide, process_group, output_bucket)
            return
        optimizer.one_rank_buckets_skipped += 1
        outputs = output_bucket if output_bucket is not None else [None] * len(small_bucket)
        for grad, output in zip(small_bucket, outputs, strict=True):
            add_to_partition(output, grad)  # what DeepSpeed adds from the reduced copy, which equals ``grad`` here

    optimizer.one_rank_buckets_skipped = 0
    optimizer.allreduce_and_copy = allreduce_and_copy
    log.debug("one data-parallel rank: ZeRO-1/2 gradient bucket reduction skipped (identity)")
    return True


__all__ = ["ZERO12_SIGNATURE", "share_fp32_master", "shares_fp32_master", "skip_one_rank_reduction", "thin_zero_step"]
