"""The one parallel seam: how a run's model is built, split, given its first weights, put in a DeepSpeed engine,
checkpointed, resumed and consolidated.

:func:`make_plan` returns a :class:`ParallelPlan` (data parallel over the whole world, DeepSpeed ZeRO 0-3) or a
:class:`TensorParallelPlan` (megatron-core TP inside DeepSpeed's data-parallel groups). The training loop and the
stages talk to the plan only through the methods below and never ask which one they hold; every TP or ZeRO branch of
the trainer lives here or in the modules it calls (DeepSpeed's config: ``ds_config.py``; its checkpoint files:
``ds_checkpoint.py``; consolidation: ``consolidate.py``). Order of use (``train/loop.py``)::

    plan = make_plan(cfg, info)                          # its Layout, then process groups from it (TP: megatron's)
    plan.configure_engine(meta_model, accum, resume)     # the DeepSpeed config: buckets per TP rank, load mode
    model = plan.build(stage.build_model)                # meta → local shard (TP), zero.Init (ZeRO-3), or plain
    stage.bind(plan); stage.initialize_weights(model, plan)   # criterion; MAE → WSP hand-off via plan.load_state
    engine, guard = plan.initialize_engine(model)
    ... plan.save_engine(...), plan.load_checkpoint(...), plan.checkpoint_meta(), plan.consolidate(...)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from maws_scale.config import ConfigError, RunConfig
from maws_scale.parallel import ds_checkpoint
from maws_scale.parallel.consolidate import consolidate_checkpoint, write_state_dict
from maws_scale.parallel.distributed import DistInfo
from maws_scale.parallel.ds_checkpoint import SavedCheckpoint
from maws_scale.parallel.ds_config import BlockInfo, build_ds_config, write_ds_config
from maws_scale.parallel.engine import initialize_engine, model_init_context
from maws_scale.parallel.layout import Layout, derive_layout
from maws_scale.parallel.optimizer import optimizer_impl
from maws_scale.parallel.step_guard import StepGuard

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StateFn = Callable[[], dict[str, torch.Tensor]]


def engine_block_info(model: nn.Module, tp_size: int) -> BlockInfo | None:
    """The ZeRO bucket-sizing input for a plain (e.g. meta) ``model`` split over ``tp_size`` ranks: its first block,
    the block and its smallest matrix divided by tp (norm vectors stay whole). None for a model without ``blocks``.
    The trainer and the planner (``perf/planner.py``) both call this."""
    if not getattr(model, "blocks", None):
        return None
    return split_block_info(BlockInfo.from_model(model), tp_size)


def split_block_info(info: BlockInfo, tp_size: int) -> BlockInfo:
    """A whole model's :class:`BlockInfo` as one of ``tp_size`` TP ranks holds it (matrices split, vectors whole)."""
    if tp_size == 1:
        return info
    return BlockInfo(
        info.block_numel // tp_size, info.max_vector_numel, info.min_matrix_numel // tp_size, info.block_class
    )


def is_partitioned(module: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned ``module``'s parameters (built under ``zero.Init``)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def full_numel(module: nn.Module) -> int:
    """Parameters of ``module`` as this rank holds them, counting ZeRO-3 partitions at full size."""
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in module.parameters())


class ParallelPlan:
    """Data parallelism over every rank (ZeRO 0-3 inside the DeepSpeed engine); the base of the TP plan."""

    tp_rank = 0
    tp_size = 1
    mpu: Any = None

    def __init__(self, cfg: RunConfig, info: DistInfo, layout: Layout | None = None) -> None:
        self.cfg = cfg
        self.info = info
        self.layout = layout or derive_layout(cfg, info.world_size)
        self.dp_rank, self.dp_size = info.rank, self.layout.dp
        self.model: nn.Module | None = None
        self.ds_config: dict[str, Any] = {}
        self.universal = False  # the engine loads universal checkpoints (a resume on another DP size)

    # ----- describing ---------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """The layout for the start-up line, e.g. ``dp 4 × tp 2, ZeRO 1``."""
        return f"dp {self.dp_size} × tp {self.tp_size}, ZeRO {self.cfg.parallel.zero_stage}"

    def count_label(self) -> str:
        """What a parameter count of this rank's model means."""
        return ""

    def bucket_blocks(self, meta_model: nn.Module) -> BlockInfo | None:
        """ZeRO bucket sizes from the model built on the meta device (:func:`engine_block_info`)."""
        return engine_block_info(meta_model, self.tp_size)

    # ----- the engine ---------------------------------------------------------------------------------------------
    def configure_engine(self, meta_model: nn.Module, grad_accum: int, resume: SavedCheckpoint | None) -> None:
        """Fill the DeepSpeed config of this run: buckets sized on ``meta_model`` (the model on the meta device), and
        the engine's load mode (universal when ``resume`` was written on another data-parallel size at ZeRO 1-3)."""
        self.ds_config = build_ds_config(
            self.cfg,
            self.dp_size,
            grad_accum,
            self.bucket_blocks(meta_model),
            client_optimizer=optimizer_impl(self.cfg),
        )
        self.universal = resume is not None and ds_checkpoint.needs_conversion(resume.meta, self.dp_size)
        if self.universal:
            self.ds_config.update(ds_checkpoint.universal_config(True))

    def write_engine_config(self, folder: Path) -> Path:
        """Write the filled DeepSpeed config into ``folder`` for the record; → its path."""
        return write_ds_config(self.ds_config, folder / "ds_config.json")

    def initialize_engine(self, model: nn.Module) -> tuple[Any, StepGuard]:
        """The DeepSpeed engine around the built ``model`` with the configured config; → (engine, step guard)."""
        return initialize_engine(model, self.cfg, self.ds_config, self.mpu)

    def save_engine(self, engine: Any, parent: Path, tag: str, trainer_state: dict[str, Any]) -> None:
        """Collective: the engine's files of a step checkpoint into ``parent/tag`` (``parallel/ds_checkpoint.py``)."""
        ds_checkpoint.save_engine(engine, parent, tag, trainer_state)

    def load_checkpoint(self, engine: Any, guard: StepGuard, checkpoint: SavedCheckpoint) -> str:
        """Collective: load a step checkpoint's model and optimizer into ``engine``, converting it first where this
        layout needs it; → how it was loaded (for the log line)."""
        return ds_checkpoint.load_engine(
            engine,
            guard,
            checkpoint,
            universal=self.universal,
            dp_size=self.dp_size,
            rank=self.info.rank,
            wait_minutes=self.cfg.parallel.wait_minutes,
        )

    # ----- building -----------------------------------------------------------------------------------------------
    def build(self, build_model: Callable[..., nn.Module], ds_config: dict[str, Any] | None = None) -> nn.Module:
        """Build the model for this rank: under ``deepspeed.zero.Init`` for ZeRO-3 (partitioned as it is built), plain
        otherwise; then per-block activation recompute. ``build_model(device=None)`` builds the whole model;
        ``ds_config``: the DeepSpeed config (default: the one :meth:`configure_engine` filled)."""
        with model_init_context(self.cfg, self.ds_config if ds_config is None else ds_config):
            model = build_model()
        return self._finish_build(model)

    def _finish_build(self, model: nn.Module) -> nn.Module:
        """Then, in torchtitan's order: FP8 linears (``parallel.fp8``), activation checkpointing; ZeRO and
        ``model.compile`` follow when the engine wraps the model (``parallel/engine.py``, ``parallel/compile.py``)."""
        from maws_scale.parallel.fp8 import apply_fp8

        apply_fp8(model, self.cfg, self.info.device)
        setter = getattr(model, "set_recompute", None)
        if setter is not None:
            setter(self.layout.recompute)
        elif self.layout.recompute != "none":
            raise ConfigError(f"parallel.activation_checkpointing: {type(model).__name__} cannot checkpoint per block")
        self.model = model
        return model

    def classification_loss(self) -> Criterion:
        """Soft-target cross-entropy for the WSP head as this plan holds it."""
        from maws_scale.models.heads import soft_target_cross_entropy

        return soft_target_cross_entropy

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The (B, K) logits of every class from what the head returned on this rank (for metrics; no gradient)."""
        return logits.detach()

    # ----- initial weights ----------------------------------------------------------------------------------------
    def load_state(self, module: nn.Module, state_fn: StateFn) -> None:
        """Copy a plain (timm-named) state dict into the built ``module`` (before the engine wraps it).

        ``state_fn`` reads the tensors; for a ZeRO-3 partitioned module it runs on rank 0 only and every parameter is
        gathered, filled from rank 0 and re-partitioned one at a time. Keys not in ``state`` are left as built."""
        if is_partitioned(module):
            _load_partitioned(module, state_fn() if self.info.rank == 0 else None, self.info.rank)
            return
        _copy_plain(module, state_fn())

    # ----- resume, checkpoints and consolidation ------------------------------------------------------------------
    def check_resume(self, path: Path, meta: dict[str, Any]) -> None:
        """Refuse a checkpoint written at another tensor-parallel size (its shards do not fit this layout)."""
        saved = int(meta.get("tp_size", 1))
        if saved != self.tp_size:
            raise ConfigError(
                f"checkpoint.resume: {path} was written with parallel.tp={saved}; resume with the same tp "
                "(consolidate and restart with wsp.init_from to change it)"
            )

    def checkpoint_meta(self) -> dict[str, Any]:
        """What every ``step_*`` checkpoint records about the layout (in its marker)."""
        return {**ds_checkpoint.layout_meta(self.dp_size, self.cfg.parallel.zero_stage), "tp_size": self.tp_size}

    def checkpoint_files(self) -> dict[str, str]:
        """Extra files (name → text) written into every ``step_*`` checkpoint directory by rank 0."""
        return {}

    def consolidate(self, engine: Any, final: SavedCheckpoint, out: Path, meta: dict[str, Any]) -> None:
        """Write the final weights as one plain fp32 state dict ``out`` (collective: every rank calls it)."""
        if self.info.is_main:
            consolidate_checkpoint(final, out, meta)

    def data_parallel_sum(self, value: float) -> float:
        """``value`` summed over the data-parallel ranks (each data stream counted once)."""
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.info.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(tensor, group=self._data_parallel_group())
        return float(tensor.item())

    def data_parallel_max(self, value: float) -> float:
        """The largest ``value`` over the data-parallel ranks."""
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.info.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self._data_parallel_group())
        return float(tensor.item())

    def _data_parallel_group(self) -> Any:
        return None


class TensorParallelPlan(ParallelPlan):
    """megatron-core tensor parallelism (``parallel.tp`` ranks per group) inside DeepSpeed's data parallelism.

    The model is built on the meta device and materialised directly sharded: each rank allocates only its shard of
    the split layers (and the replicated rest), initialised exactly as the unsharded model would be."""

    def __init__(self, cfg: RunConfig, info: DistInfo, layout: Layout | None = None) -> None:
        super().__init__(cfg, info, layout)  # the layout refuses a world size tp does not divide
        from maws_scale.parallel.mpu import init_model_parallel

        self.layout.accumulation()  # and a batch that does not split, before any group exists
        self.mpu = init_model_parallel(self.layout.tp)  # the process groups, created from the layout
        self.tp_size = self.layout.tp
        self.tp_rank = self.mpu.get_tensor_model_parallel_rank()
        self.dp_rank = self.mpu.get_data_parallel_rank()
        self.dp_size = self.mpu.get_data_parallel_world_size()
        if self.dp_size != self.layout.dp:
            raise RuntimeError(f"megatron made {self.dp_size} data-parallel ranks; the layout has {self.layout.dp}")

    def count_label(self) -> str:
        return " per TP rank"

    def build(self, build_model: Callable[..., nn.Module], ds_config: dict[str, Any] | None = None) -> nn.Module:
        """Meta build, then :func:`~maws_scale.parallel.tensor_parallel.parallelize_vit` materialises the local
        shard on the device. ZeRO (any stage) partitions it further when the engine wraps it."""
        from megatron.core import parallel_state as ps

        from maws_scale.parallel.tensor_parallel import parallelize_vit

        model = build_model(device="meta")
        parallelize_vit(model, ps.get_tensor_model_parallel_group(), device=self.info.device)
        return self._finish_build(model)

    def classification_loss(self) -> Criterion:
        """The vocab-parallel soft-target CE (local logits, full targets) when the head is sharded."""
        from megatron.core import parallel_state as ps

        from maws_scale.parallel.tp_loss import VocabParallelSoftTargetCE

        shards = self._layout().shards
        if "head.weight" not in shards:
            return super().classification_loss()  # head kept whole: the plain criterion applies
        return VocabParallelSoftTargetCE(shards["head.weight"][1][0], ps.get_tensor_model_parallel_group())

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The vocab slices of a sharded head gathered over the TP group (collective)."""
        from megatron.core import parallel_state as ps

        from maws_scale.parallel.tp_loss import gather_logits

        shards = self._layout().shards
        if "head.weight" not in shards:
            return super().full_logits(logits)
        return gather_logits(logits, shards["head.weight"][1][0], ps.get_tensor_model_parallel_group())

    def load_state(self, module: nn.Module, state_fn: StateFn) -> None:
        """Every rank reads the plain state and keeps its shard of each sharded tensor."""
        from maws_scale.parallel.tp_checkpoint import load_plain_state_dict

        load_plain_state_dict(module, state_fn(), strict=False)

    def _layout(self):
        if self.model is None:
            raise RuntimeError("the tensor-parallel plan has no model yet: call build() first")
        return self.model.tp_layout

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "tp_layout": True}

    def checkpoint_files(self) -> dict[str, str]:
        """``tp_layout.json`` in every step checkpoint: ``maws-scale export`` consolidates it offline."""
        from maws_scale.parallel.tp_layout import LAYOUT_FILE

        return {LAYOUT_FILE: self._layout().to_json()}

    def consolidate(self, engine: Any, final: SavedCheckpoint, out: Path, meta: dict[str, Any]) -> None:
        """The TP shards merged live (collective over the TP group, ZeRO-3 partitions gathered)."""
        from maws_scale.parallel.tp_checkpoint import gather_tensor_parallel_state_dict

        state = gather_tensor_parallel_state_dict(engine.module, dst=0)
        if self.info.is_main:
            write_state_dict(
                state, out, {**meta, "source": str(final.path), "step": final.step, "from": "live TP gather"}
            )

    def _data_parallel_group(self) -> Any:
        return self.mpu.get_data_parallel_group()


def make_plan(cfg: RunConfig, info: DistInfo) -> ParallelPlan:
    """The plan for ``cfg.parallel`` on the world ``info`` describes: its :class:`~maws_scale.parallel.layout.Layout`
    derived (no side effects), then the TP process groups created from it."""
    layout = derive_layout(cfg, info.world_size)
    return (TensorParallelPlan if layout.tp > 1 else ParallelPlan)(cfg, info, layout)


# ----- copying plain weights in -----------------------------------------------------------------------------------
def _copy_plain(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict(keep_vars=True)
    missing = sorted(set(state) - set(own))
    if missing:
        raise KeyError(f"{type(module).__name__} has no tensors named {missing[:6]}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))


def _load_partitioned(module: nn.Module, state: dict[str, torch.Tensor] | None, rank: int) -> None:
    """Copy rank 0's ``state`` into ZeRO-3 partitioned parameters, one parameter gathered at a time."""
    import deepspeed

    box = [sorted(state) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    own = dict(module.named_parameters())
    missing = [name for name in box[0] if name not in own]
    if missing:
        raise KeyError(f"{type(module).__name__} has no parameters named {missing[:6]}")
    for name in box[0]:
        param = own[name]
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            if rank == 0:
                param.copy_(state[name].to(param.dtype))
