"""RunConfig + a ``ds_configs`` template → the final DeepSpeed config → ``deepspeed.initialize``.

Templates (``maws_scale.ds_configs``: zero0-3.json, zero3_offload.json, or ``parallel.ds_config``) hold the tuning;
every value the run decides is ``"auto"`` there and filled here: batch layout, ``gradient_clipping`` (always written:
DeepSpeed 0.19 defaults it to 1.0), precision, bucket sizes from the transformer block size, ZeRO-1/2's
``overlap_comm`` / ``contiguous_gradients`` by device (:func:`_fill_stage12`), offload devices and the ZeRO-3 leaf
module (the ViT ``Block``, so ZeRO-3 gathers one block at a time instead of one ``nn.Linear`` at a time;
DeepSpeed issues #5047, #1174). RunConfig is the source of truth: a template value that contradicts it is refused.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maws_scale.config import ConfigError, RunConfig
from maws_scale.files import write_text_atomic
from maws_scale.parallel.layout import accumulation_dtype

AUTO = "auto"
MIN_BUCKET = 1 << 20  # below this, bucket bookkeeping costs more than it saves
CPU_BUCKET = 500_000_000  # ZeRO-1/2 off CUDA: DeepSpeed's default; without contiguous_gradients nothing is preallocated


# ----- templates --------------------------------------------------------------------------------------------------
def template_name(cfg: RunConfig) -> str:
    """The shipped template for ``parallel.zero_stage`` / ``parallel.offload``."""
    if cfg.parallel.zero_stage == 3 and cfg.parallel.offload != "none":
        return "zero3_offload.json"
    return f"zero{cfg.parallel.zero_stage}.json"


def load_template(cfg: RunConfig) -> tuple[dict[str, Any], str]:
    """Read ``parallel.ds_config`` (a path) or the shipped template; return (config dict, where it came from)."""
    if cfg.parallel.ds_config:
        path = Path(cfg.parallel.ds_config)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"parallel.ds_config: cannot read {path} ({err.strerror})") from None
        origin = str(path)
    else:
        origin = template_name(cfg)
        text = importlib.resources.files("maws_scale.ds_configs").joinpath(origin).read_text()
    try:
        template = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"parallel.ds_config: {origin} is not valid JSON: {err}") from None
    if not isinstance(template, dict):
        raise ConfigError(f"parallel.ds_config: {origin} must hold a JSON object")
    return template, origin


# ----- block sizes ------------------------------------------------------------------------------------------------
def _numel(param: torch.Tensor) -> int:
    """Full element count, also for a ZeRO-3 partitioned parameter (whose local tensor is empty)."""
    return int(getattr(param, "ds_numel", param.numel()))


def param_ndim(param: torch.Tensor) -> int:
    """Logical number of dimensions, also for a ZeRO-3 partitioned parameter."""
    shape = getattr(param, "ds_shape", None)
    return len(shape) if shape is not None else param.ndim


@dataclass(frozen=True)
class BlockInfo:
    """Sizes (in elements, per tensor-parallel rank) that set ZeRO's buckets: one transformer block and its parts."""

    block_numel: int
    max_vector_numel: int
    min_matrix_numel: int
    block_class: str

    @classmethod
    def from_model(cls, model: nn.Module) -> BlockInfo:
        """Measure ``model.blocks[0]`` (works on meta, partitioned and tensor-parallel models)."""
        blocks = getattr(model, "blocks", None)
        if not blocks:
            raise TypeError(f"{type(model).__name__} has no `blocks`; cannot size ZeRO buckets per block")
        block = blocks[0]
        vectors = [_numel(p) for p in block.parameters() if param_ndim(p) <= 1]
        matrices = [_numel(p) for p in block.parameters() if param_ndim(p) >= 2]
        block_class = f"{type(block).__module__}.{type(block).__qualname__}"
        return cls(
            block_numel=sum(_numel(p) for p in block.parameters()),
            max_vector_numel=max(vectors, default=0),
            min_matrix_numel=min(matrices, default=0),
            block_class=block_class,
        )

    def persistence_threshold(self) -> int:
        """Keep every bias / norm vector resident (never gathered), partition every Linear weight."""
        threshold = self.max_vector_numel + 1
        if self.min_matrix_numel and threshold >= self.min_matrix_numel:
            # a pathological block whose vectors are as large as its matrices: persist nothing but scalars
            return 1
        return threshold


# ----- filling ----------------------------------------------------------------------------------------------------
def _resolve(section: dict[str, Any], key: str, value: Any, where: str, origin: str, owner: str) -> None:
    """Set ``section[key]`` to ``value`` if absent or "auto"; refuse an explicit value that contradicts RunConfig."""
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
    elif current != value:
        raise ConfigError(
            f"parallel.ds_config: {origin} sets {where}{key}={json.dumps(current)} but {owner} gives "
            f"{json.dumps(value)}; remove it from the template (RunConfig decides) or change {owner}"
        )


def fill_ds_config(
    cfg: RunConfig,
    template: dict[str, Any],
    *,
    dp_size: int,
    grad_accum: int,
    blocks: BlockInfo | None = None,
    origin: str = "template",
    client_optimizer: str = "torch",
    device: str | None = None,
) -> dict[str, Any]:
    """The final DeepSpeed config: ``template`` with every "auto" filled from ``cfg``; raises on any leftover.
    ``device``: the device type DeepSpeed runs on (default: DeepSpeed's accelerator, :func:`deepspeed_device`)."""
    ds = copy.deepcopy(template)
    device = device or deepspeed_device()
    train, par = cfg.train, cfg.parallel
    _resolve(ds, "train_micro_batch_size_per_gpu", train.micro_batch, "", origin, "train.micro_batch")
    _resolve(ds, "gradient_accumulation_steps", grad_accum, "", origin, "train.grad_accum")
    _resolve(ds, "train_batch_size", train.global_batch, "", origin, "train.global_batch")
    _resolve(ds, "gradient_clipping", float(train.clip_grad), "", origin, "train.clip_grad")

    for name, on in (("bf16", par.precision == "bf16"), ("fp16", par.precision == "fp16")):
        section = ds.setdefault(name, {})
        _resolve(section, "enabled", on, f"{name}.", origin, "parallel.precision")

    _fill_data_types(ds, cfg, origin)

    zero = ds.setdefault("zero_optimization", {})
    _resolve(zero, "stage", par.zero_stage, "zero_optimization.", origin, "parallel.zero_stage")
    block = blocks.block_numel if blocks else 0
    if "reduce_bucket_size" in zero or "allgather_bucket_size" in zero:
        bucket = max(MIN_BUCKET, block)
        if par.zero_stage in (1, 2) and device != "cuda":
            bucket = CPU_BUCKET
        for key in ("reduce_bucket_size", "allgather_bucket_size"):
            if zero.get(key) == AUTO:
                zero[key] = bucket
    if par.zero_stage in (1, 2):
        _fill_stage12(zero, device)
    if par.zero_stage == 3:
        _fill_zero3(zero, blocks, origin)
    _fill_offload(ds, zero, cfg, origin, client_optimizer)

    leftover = list(_find_auto(ds))
    if leftover:
        raise ConfigError(f'parallel.ds_config: {origin} leaves {", ".join(leftover)} as "auto"; no rule fills it')
    return ds


def deepspeed_device() -> str:
    """The device type DeepSpeed's engine will run on: its accelerator's (``DS_ACCELERATOR=cpu`` on a GPU node runs
    DeepSpeed on CPU, so CUDA-only settings such as ``overlap_comm`` must not follow ``torch.cuda.is_available()``)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def _fill_stage12(zero: dict[str, Any], device: str) -> None:
    """ZeRO-1/2 ``overlap_comm`` and ``contiguous_gradients``: on for CUDA (the reduction overlaps backward on a side
    stream; the contiguous buffer keeps the allocator from fragmenting). Off elsewhere (CPU / gloo): there is no
    stream to overlap with, and both cost a copy of every gradient per step — measured on CPU (ZeRO-1, fp32, one
    rank, benchmarks/RESULTS.md) they and 5e8-element buckets (one gloo call instead of one per bucket) took the step
    from 0.67× to 0.87× a plain PyTorch loop by CPU time."""
    for key in ("overlap_comm", "contiguous_gradients"):
        if zero.get(key) == AUTO:
            zero[key] = device == "cuda"


def _fill_data_types(ds: dict[str, Any], cfg: RunConfig, origin: str) -> None:
    """Gradient accumulation and reduction dtypes. Without them DeepSpeed 0.19.8 uses the model dtype for both, so
    bf16 runs would sum micro-batch gradients and ranks' gradients in bf16."""
    par = cfg.parallel
    accum = accumulation_dtype(par.precision, par.grad_accum_dtype, par.zero_stage)
    data_types = ds.setdefault("data_types", {})
    _resolve(data_types, "grad_accum_dtype", accum, "data_types.", origin, "parallel.grad_accum_dtype")
    _resolve(ds, "communication_data_type", par.comm_dtype, "", origin, "parallel.comm_dtype")


def _fill_zero3(zero: dict[str, Any], blocks: BlockInfo | None, origin: str) -> None:
    # DeepSpeed's default (true) replaces torch.nn.functional.linear with its own autograd Function for the rest of
    # the process ("This will persist unless manually reset"): every later model, ZeRO-3 or not, then runs it, and
    # Dynamo on torch 2.11 traces it into gradients that differ from eager by 3e-4 relative after one step
    # (tests/parallel/test_compile.py under torch 2.11). torch's own linear saves the same tensors for backward.
    if zero.get("memory_efficient_linear", AUTO) == AUTO:
        zero["memory_efficient_linear"] = False
    if blocks is None:
        needs = [k for k, v in zero.items() if v == AUTO or (isinstance(v, dict) and AUTO in v.values())]
        if needs:
            raise ConfigError(f"parallel.ds_config: {origin} needs the model's block sizes to fill {', '.join(needs)}")
        return
    b = max(blocks.block_numel, 1)
    auto = {
        # fetch the next two blocks while this one computes
        "stage3_prefetch_bucket_size": 2 * b,
        # this block + two prefetched + slack; more would only hold memory
        "stage3_max_live_parameters": 4 * b,
        "stage3_max_reuse_distance": 4 * b,
        "stage3_param_persistence_threshold": blocks.persistence_threshold(),
    }
    for key, value in auto.items():
        if zero.get(key) == AUTO:
            zero[key] = value
    leaf = zero.get("leaf_module")
    if isinstance(leaf, dict) and leaf.get("classes") == AUTO:
        leaf["classes"] = [blocks.block_class]


def _fill_offload(ds: dict[str, Any], zero: dict[str, Any], cfg: RunConfig, origin: str, client_optimizer: str) -> None:
    offload = cfg.parallel.offload
    pin = torch.cuda.is_available()
    if offload != "none":
        zero.setdefault("offload_optimizer", {"device": "cpu", "pin_memory": AUTO})
    if cfg.parallel.zero_stage == 3 and (offload == "all" or "offload_param" in zero):
        zero.setdefault("offload_param", {"device": AUTO, "pin_memory": AUTO})
    for key, device in (
        ("offload_optimizer", "cpu" if offload != "none" else "none"),
        ("offload_param", "cpu" if offload == "all" else "none"),
    ):
        section = zero.get(key)
        if section is None:
            continue
        _resolve(section, "device", device, f"zero_optimization.{key}.", origin, "parallel.offload")
        if section.get("pin_memory") == AUTO:
            section["pin_memory"] = pin
    if offload != "none" and client_optimizer != "deepspeed":
        # DeepSpeed refuses a non-DeepSpeedCPUAdam optimizer with ZeRO-Offload unless told it is deliberate
        ds.setdefault("zero_force_ds_cpu_optimizer", False)


def _find_auto(tree: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _find_auto(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _find_auto(value, f"{prefix}{i}.")
    elif tree == AUTO:
        yield prefix.rstrip(".")


def build_ds_config(
    cfg: RunConfig,
    dp_size: int,
    grad_accum: int,
    blocks: BlockInfo | None,
    client_optimizer: str = "torch",
    device: str | None = None,
) -> dict[str, Any]:
    """Load the template for ``cfg`` and fill it (see :func:`fill_ds_config`)."""
    template, origin = load_template(cfg)
    return fill_ds_config(
        cfg,
        template,
        dp_size=dp_size,
        grad_accum=grad_accum,
        blocks=blocks,
        origin=origin,
        client_optimizer=client_optimizer,
        device=device,
    )


def write_ds_config(ds_config: dict[str, Any], path: str | Path) -> Path:
    """Write the final DeepSpeed config (JSON) for the record; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(ds_config, indent=2, sort_keys=True) + "\n")
    return path
