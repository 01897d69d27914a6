"""megatron-core ``parallel_state`` (TP × DP over the world) and the ``mpu`` object DeepSpeed expects.

DeepSpeed 0.19.8 asks its ``mpu`` for ``get_model_parallel_{rank,world_size,group}``,
``get_data_parallel_{group,rank,world_size}``, ``get_data_parallel_group_ranks`` and the
``get_tensor_model_parallel_*`` family. megatron-core 0.16.1's ``parallel_state`` lacks
``get_model_parallel_rank/world_size`` and ``get_data_parallel_group_ranks``, so DeepSpeed gets a
:class:`ModelParallelUnit` over it instead of the module. With it ZeRO partitions over the data-parallel group only,
and its gradient norm counts a replicated parameter once (on tensor-parallel rank 0) and a parameter marked
``tensor_model_parallel`` on every rank, then sums over the model-parallel group.

The adapter deliberately has no ``initialize_sequence_parallel`` attribute: DeepSpeed treats an mpu that has one as
a sequence-parallel unit and then ignores its model-parallel group. Pipeline parallelism is not used (size 1).
"""

from __future__ import annotations

import torch.distributed as dist
from megatron.core import parallel_state as ps

from maws_scale.parallel import patches


class ModelParallelUnit:
    """DeepSpeed's ``mpu`` protocol over megatron-core's ``parallel_state`` (tensor × data parallel, no pipeline)."""

    # ----- model parallel = tensor parallel (pipeline size is 1) --------------------------------------------------
    def get_model_parallel_rank(self) -> int:
        return ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return ps.get_model_parallel_group()

    # ----- tensor parallel ----------------------------------------------------------------------------------------
    def get_tensor_model_parallel_rank(self) -> int:
        return ps.get_tensor_model_parallel_rank()

    def get_tensor_model_parallel_world_size(self) -> int:
        return ps.get_tensor_model_parallel_world_size()

    def get_tensor_model_parallel_group(self) -> dist.ProcessGroup:
        return ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_src_rank(self) -> int:
        return ps.get_tensor_model_parallel_src_rank()

    # ----- data parallel ------------------------------------------------------------------------------------------
    def get_data_parallel_rank(self) -> int:
        return ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return ps.get_data_parallel_world_size()

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return ps.get_data_parallel_group()

    def get_data_parallel_group_ranks(self) -> list[int]:
        """Global ranks of this rank's data-parallel group, in group order."""
        group = ps.get_data_parallel_group()
        return [dist.get_global_rank(group, i) for i in range(dist.get_world_size(group))]

    def get_data_parallel_src_rank(self) -> int:
        return ps.get_data_parallel_src_rank()

    # ----- pipeline (always a single stage) -----------------------------------------------------------------------
    def get_pipeline_model_parallel_rank(self) -> int:
        return ps.get_pipeline_model_parallel_rank()

    def get_pipeline_model_parallel_world_size(self) -> int:
        return ps.get_pipeline_model_parallel_world_size()

    def get_pipeline_model_parallel_group(self) -> dist.ProcessGroup:
        return ps.get_pipeline_model_parallel_group()

    def __repr__(self) -> str:
        return (
            f"ModelParallelUnit(tp={self.get_tensor_model_parallel_rank()}/{self.get_tensor_model_parallel_world_size()}"
            f", dp={self.get_data_parallel_rank()}/{self.get_data_parallel_world_size()})"
        )


def init_model_parallel(tp_size: int) -> ModelParallelUnit:
    """Initialise megatron-core's TP × DP groups over the current world (idempotent) and return DeepSpeed's mpu.

    Tensor-parallel groups are blocks of ``tp_size`` consecutive ranks (inside a node under the usual launchers);
    data-parallel groups stride across them. torch.distributed must already be initialised. Raises ValueError naming
    ``parallel.tp`` if it does not divide the world size or differs from an earlier initialisation.
    """
    if not dist.is_initialized():
        raise RuntimeError("init_model_parallel needs torch.distributed initialised first (init_distributed())")
    world = dist.get_world_size()
    if tp_size < 1 or world % tp_size:
        raise ValueError(f"parallel.tp={tp_size} does not divide the world size {world}")
    patches.install_megatron_cpu()
    if ps.model_parallel_is_initialized():
        current = ps.get_tensor_model_parallel_world_size()
        if current != tp_size:
            raise ValueError(
                f"parallel.tp={tp_size}: megatron parallel_state is already initialised with tensor-parallel size "
                f"{current}; call destroy_model_parallel() first"
            )
    else:
        ps.initialize_model_parallel(tensor_model_parallel_size=tp_size, create_gloo_process_groups=False)
    return ModelParallelUnit()


def destroy_model_parallel() -> None:
    """Tear down megatron-core's groups (so a process can re-initialise with another TP size)."""
    ps.destroy_model_parallel()
