"""RunConfig + a ``ds_configs`` template → the final DeepSpeed config → ``deepspeed.initialize``.

Templates (``maws_scale.ds_configs``: zero0-3.json, zero3_offload.json, or ``parallel.ds_config``) hold the tuning;
every value the run decides is ``"auto"`` there and filled here: batch layout, ``gradient_clipping`` (always written:
DeepSpeed 0.19 defaults it to 1.0), precision, bucket sizes from the transformer block size, ZeRO-1/2's
``overlap_comm`` / ``contiguous_gradients`` by device (:func:`_fill_stage12`), offload devices and the ZeRO-3 leaf
module (the ViT ``Block``, so ZeRO-3 gathers one block at a time instead of one ``nn.Linear`` at a time;
DeepSpeed issues #5047, #1174). RunConfig is the source of truth: a template value that contradicts it is refused.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.resources
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maws_scale.config import ConfigError, RunConfig
from maws_scale.parallel.compile import apply_compile
from maws_scale.parallel.thin_step import thin_zero_step

log = logging.getLogger("maws_scale.parallel")

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
    accum = par.precision if par.grad_accum_dtype == "model" else "fp32"
    if accum == "fp32" and par.precision != "fp32" and par.zero_stage == 0:
        raise ConfigError(
            f"parallel.grad_accum_dtype=fp32: DeepSpeed accumulates fp32 gradients of a {par.precision} model only "
            "with ZeRO (parallel.zero_stage>=1); set parallel.zero_stage>=1, or parallel.grad_accum_dtype=model "
            f"to accumulate in {par.precision}"
        )
    data_types = ds.setdefault("data_types", {})
    _resolve(data_types, "grad_accum_dtype", accum, "data_types.", origin, "parallel.grad_accum_dtype")
    _resolve(ds, "communication_data_type", par.comm_dtype, "", origin, "parallel.comm_dtype")


def _fill_zero3(zero: dict[str, Any], blocks: BlockInfo | None, origin: str) -> None:
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


# ----- optimizer --------------------------------------------------------------------------------------------------
def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay for norms, biases, position embeddings and tokens (ndim <= 1 or ``no_weight_decay``)."""
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param_ndim(param) <= 1 or name in skip_names or name.split(".")[-1] in skip_names:
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]
    return [g for g in groups if g["params"]]


def optimizer_impl(cfg: RunConfig) -> str:
    """Resolve ``optim.impl=auto``: DeepSpeedCPUAdam when offloading, apex FusedAdam when importable, else torch."""
    impl = cfg.optim.impl
    if impl != "auto":
        return impl
    if cfg.parallel.offload != "none":
        return "deepspeed"
    if torch.cuda.is_available() and _apex_fused_adam() is not None:
        return "apex"
    return "torch"


def _apex_fused_adam() -> type | None:
    try:
        from apex.optimizers import FusedAdam
    except Exception:  # apex missing or built for another torch/CUDA: never fail because of it
        return None
    return FusedAdam


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` with the configured implementation (betas, eps, peak LR from ``cfg``);
    ``torch``: fused where :func:`fused_adamw_supported` (CPU and CUDA)."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.optim.weight_decay)]
    kwargs = {"lr": cfg.peak_lr(), "betas": tuple(cfg.optim.betas), "eps": cfg.optim.eps}
    impl = optimizer_impl(cfg)
    if impl == "apex":
        fused_adam = _apex_fused_adam()
        if fused_adam is None:
            raise ConfigError("optim.impl=apex: apex.optimizers.FusedAdam is not importable; use optim.impl=auto")
        return fused_adam(groups, adam_w_mode=True, **kwargs)
    if impl == "deepspeed":
        if cfg.parallel.offload != "none":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
        if not torch.cuda.is_available():
            raise ConfigError("optim.impl=deepspeed: DeepSpeed FusedAdam needs CUDA (or set parallel.offload)")
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, adam_w_mode=True, **kwargs)
    return torch.optim.AdamW(groups, fused=fused_adamw_supported(groups) or None, **kwargs)


def fused_adamw_supported(groups: list[dict[str, Any]]) -> bool:
    """Whether torch's fused AdamW can step these parameters: all floating, on one device type that has the fused
    kernel (CUDA, and CPU since torch 2.4: measured 3.5× the default for-each implementation there)."""
    params = [p for g in groups for p in g["params"]]
    kinds = {p.device.type for p in params}
    if len(kinds) != 1 or not all(p.is_floating_point() for p in params):
        return False
    kind = kinds.pop()
    return kind == "cpu" or (kind == "cuda" and torch.cuda.is_available())


# ----- non-finite guard -------------------------------------------------------------------------------------------
class StepGuard:
    """Skips optimizer updates judged bad: a non-finite loss anywhere in the window, or non-finite gradients.

    Installed on the *inner* optimizer that DeepSpeed drives, so every ZeRO stage skips the same way. DeepSpeed's
    ZeRO 1-3 (and its bf16/fp16 optimizers) also skip by themselves on a non-finite gradient norm, which
    ``engine.was_step_applied()`` reports; for fp32 ZeRO-0, where DeepSpeed hands the averaged gradients straight
    to our optimizer, :meth:`resolve` checks them and takes their norm before clipping.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, mpu: Any = None) -> None:
        self.optimizer = optimizer
        self.mpu = mpu
        self.check_grads = False
        self.skip_next = False
        self.skipped_by_grads = False
        self.grad_norm: float | None = None
        self.group_hparams: list[dict[str, Any]] = []
        self.group_names: list[list[str]] = []
        self._step = optimizer.step
        optimizer.step = self._guarded_step  # instance attribute: DeepSpeed calls optimizer.step()

    def arm(self, skip: bool) -> None:
        """Call before ``engine.step()`` at an accumulation boundary; ``skip`` drops this update."""
        self.skip_next = skip
        self.skipped_by_grads = False
        self.grad_norm = None

    def resolve(self, window: torch.Tensor) -> tuple[float, float]:
        """The step's one host sync, after the last backward of the window: arm (and, for fp32 ZeRO-0, measure).

        ``window`` is the device tensor (sum of finite losses, count of non-finite losses), already summed over
        ranks; the gradient norm joins it when we check gradients, and the whole is read at once. → (loss sum,
        non-finite count)."""
        values = window.detach().double()
        if self.check_grads:
            values = torch.cat([values, self._full_grad_norm().to(values).reshape(1)])
        host = values.tolist()
        self.arm(host[1] > 0)
        if self.check_grads:
            self.grad_norm = host[2]
            if not math.isfinite(host[2]):
                self.skipped_by_grads = True
                self.skip_next = True
        return host[0], host[1]

    def _full_grad_norm(self) -> torch.Tensor:
        """Global L2 norm of full gradients; tensor-parallel shards summed, replicated tensors counted once."""
        from deepspeed.runtime.utils import is_model_parallel_parameter

        tp_rank0 = self.mpu is None or self.mpu.get_tensor_model_parallel_rank() == 0
        grads = [
            p.grad.detach()
            for g in self.optimizer.param_groups
            for p in g["params"]
            if p.grad is not None and (tp_rank0 or is_model_parallel_parameter(p))
        ]
        # one foreach op instead of a norm per parameter (the step's largest own cost beside a plain loop, RESULTS.md)
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32) if grads else []
        total = torch.stack(norms).pow(2).sum() if norms else torch.zeros(())
        if self.mpu is not None and self.mpu.get_tensor_model_parallel_world_size() > 1:
            torch.distributed.all_reduce(total, group=self.mpu.get_tensor_model_parallel_group())
        return total.sqrt()

    def _guarded_step(self, *args: Any, **kwargs: Any) -> Any:
        if self.skip_next:
            return None
        return self._step(*args, **kwargs)


def precision_dtype(precision: str) -> torch.dtype:
    """The parameter dtype of ``parallel.precision`` (fp32, bf16 or fp16)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


# ----- engine -----------------------------------------------------------------------------------------------------
def uses_zero_init(cfg: RunConfig) -> bool:
    """Whether the model is built under ``deepspeed.zero.Init``: ZeRO-3 without TP (a TP rank builds on meta and
    materialises only its shard, which the engine then partitions). The planner counts memory by the same rule."""
    return cfg.parallel.zero_stage == 3 and cfg.parallel.tp == 1


@contextlib.contextmanager
def model_init_context(cfg: RunConfig, ds_config: dict[str, Any], mpu: Any = None) -> Iterator[None]:
    """Build the model under ``deepspeed.zero.Init`` for ZeRO-3 (partitioned as it is built, issue #5443)."""
    if not uses_zero_init(cfg):
        yield
        return
    import deepspeed

    dtype = precision_dtype(cfg.parallel.precision)
    # DeepSpeed 0.19.8 `runtime/zero/partition_parameters.py::Init._set_dtype` reads
    #     self.dtype = dtype or torch.float16 if get_accelerator().is_fp16_supported() else torch.bfloat16 if ...
    # which parses as `(dtype or fp16) if fp16_supported else bf16`: on an accelerator without fp16 (CPUs without
    # mkldnn fp16, e.g. AMD without AVX-512) an explicit `dtype` is ignored and every parameter is built in bf16.
    # Its other branch (`dtype=None`: the dtype from the config's bf16/fp16 sections, else fp32) is correct on every
    # accelerator, so we take that one and check the outcome rather than trust the parse.
    context = deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=None, mpu=mpu)
    if context.dtype != dtype:
        raise RuntimeError(
            f"deepspeed.zero.Init would build {context.dtype} parameters for parallel.precision="
            f"{cfg.parallel.precision} ({dtype}): the DeepSpeed config's bf16/fp16 sections disagree with the run"
        )
    with context:
        yield


def initialize_engine(
    model: nn.Module, cfg: RunConfig, ds_config: dict[str, Any], mpu: Any = None
) -> tuple[Any, StepGuard]:
    """``deepspeed.initialize`` with our optimizer (guarded) and the filled config; returns (engine, guard)."""
    import deepspeed

    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        from deepspeed.accelerator import get_accelerator

        model.to(torch.device(get_accelerator().current_device_name()))  # where DeepSpeed will run it (cpu for gloo)
    optimizer = build_optimizer(model, cfg)
    guard = StepGuard(optimizer, mpu=mpu)
    guard.group_hparams = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]
    guard.group_names = [g["names"] for g in param_groups(model, cfg.optim.weight_decay)]
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=mpu)
    thin_zero_step(engine)  # DeepSpeed's work that is the identity here (one rank's reduction, fp32 master copy)
    # DeepSpeed drives our optimizer directly only in fp32 ZeRO-0; everywhere else it checks the grad norm itself
    guard.check_grads = engine.optimizer is optimizer
    apply_compile(engine, cfg)  # model.compile: in place, after DeepSpeed's hooks exist
    return engine, guard


def repair_optimizer_after_load(engine: Any, guard: StepGuard) -> None:
    """Undo two side effects of DeepSpeed 0.19's universal-checkpoint loader on the inner optimizer.

    It copies the hyper-parameters of group 0 onto every group (weight decay on norms and biases), and gives every
    sub-group's Adam state the *same* ``step`` tensor, which torch's AdamW then increments once per group and step
    (wrong bias correction from the second group on). Harmless after a regular load.
    """
    groups = engine.optimizer.param_groups
    if len(groups) != len(guard.group_hparams):
        raise RuntimeError(
            f"optimizer has {len(groups)} parameter groups after loading, expected {len(guard.group_hparams)}"
        )
    for group, hparams in zip(groups, guard.group_hparams):
        group.update(hparams)
    for state in guard.optimizer.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            state["step"] = step.clone()


def set_lr(engine: Any, lr: float) -> None:
    """Set the LR of every parameter group (ZeRO optimizers proxy ``param_groups`` to the inner optimizer)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def global_grad_norm(engine: Any, guard: StepGuard) -> float | None:
    """The pre-clipping global gradient norm of the last step, whichever ZeRO stage computed it."""
    norm = engine.get_global_grad_norm()
    if norm is None:
        norm = guard.grad_norm
    if norm is None:
        return None
    norm = float(norm.item() if torch.is_tensor(norm) else norm)
    return norm if math.isfinite(norm) and norm >= 0 else float("nan")


def write_ds_config(ds_config: dict[str, Any], path: str | Path) -> Path:
    """Write the final DeepSpeed config (JSON) for the record; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ds_config, indent=2, sort_keys=True) + "\n")
    return path
