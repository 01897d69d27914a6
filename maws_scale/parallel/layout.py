"""The layout of a run: every rule that turns a config and a world size into a parallel layout, in one place.

:func:`derive_layout` returns a :class:`Layout`, a frozen value (no process groups, no ``torch.distributed``, no
torch import): data- and tensor-parallel sizes, ZeRO stage, offload, micro-batch and accumulation, the dtype
gradients accumulate in, whether the model is built under ``zero.Init``, compile, the encoder layers FP8 converts,
the recompute (activation checkpointing) mode and whether TP shards the MAE decoder. Config validation reads the
rules below (``RunConfig`` checks what needs no world size), ``parallel.plan.make_plan`` derives the layout and
creates its process groups from it, and the memory planner (``perf/planner.py``) plans it, so the three cannot
disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from maws_scale.config import ConfigError, RunConfig
from maws_scale.models.registry import DecoderShape

FP8_MULTIPLE = 16  # in and out features of an FP8 Linear (torch._scaled_mm)
ENCODER_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # the Linears of one encoder block


# ----- the rules --------------------------------------------------------------------------------------------------
def check_tensor_split(heads: int, mlp_hidden: int, tp: int, model: str) -> None:
    """TP splits attention heads and the MLP width: ``tp`` must divide both (ConfigError naming parallel.tp)."""
    if heads % tp:
        raise ConfigError(f"parallel.tp={tp} does not divide the {heads} attention heads of {model}")
    if mlp_hidden % tp:
        raise ConfigError(f"parallel.tp={tp} does not divide the MLP width {mlp_hidden} of {model}")


def check_world_split(world_size: int, tp: int) -> int:
    """The data-parallel size: TP groups tile the world, so ``tp`` must divide ``world_size``."""
    if world_size % tp:
        raise ConfigError(f"parallel.tp={tp} does not divide the world size {world_size}")
    return world_size // tp


def offload_modes(zero_stage: int) -> tuple[str, ...]:
    """The ``parallel.offload`` values ZeRO stage ``zero_stage`` supports (ZeRO-Offload needs ZeRO >= 1, parameter
    offload ZeRO-3)."""
    return ("none",) + (("optimizer",) if zero_stage >= 1 else ()) + (("all",) if zero_stage == 3 else ())


def check_offload(zero_stage: int, offload: str) -> None:
    if offload in offload_modes(zero_stage):
        return
    if offload == "all":
        raise ConfigError("parallel.offload=all (parameters too) needs parallel.zero_stage=3")
    raise ConfigError("parallel.offload needs parallel.zero_stage >= 1 (ZeRO-Offload)")


def accumulation_dtype(precision: str, grad_accum_dtype: str, zero_stage: int) -> str:
    """The dtype gradients accumulate in. DeepSpeed accumulates a 16-bit model's gradients in fp32 only with ZeRO:
    ZeRO-0 with ``grad_accum_dtype=fp32`` is refused (ConfigError)."""
    accum = precision if grad_accum_dtype == "model" else "fp32"
    if accum == "fp32" and precision != "fp32" and zero_stage == 0:
        raise ConfigError(
            f"parallel.grad_accum_dtype=fp32: DeepSpeed accumulates fp32 gradients of a {precision} model only "
            "with ZeRO (parallel.zero_stage>=1); set parallel.zero_stage>=1, or parallel.grad_accum_dtype=model "
            f"to accumulate in {precision}"
        )
    return accum


def zero_stages(precision: str, grad_accum_dtype: str) -> tuple[int, ...]:
    """The ZeRO stages a run of this precision and accumulation dtype may use (:func:`accumulation_dtype`)."""
    zero0 = precision == "fp32" or grad_accum_dtype == "model"
    return (0, 1, 2, 3) if zero0 else (1, 2, 3)


def uses_zero_init(zero_stage: int, tp: int) -> bool:
    """Whether the model is built under ``deepspeed.zero.Init``: ZeRO-3 without TP (a TP rank builds on meta and
    materialises only its shard, which the engine then partitions)."""
    return zero_stage == 3 and tp == 1


def fp8_convertible(in_features: int, out_features: int) -> bool:
    """Whether an encoder-block Linear of these widths runs its matmuls in FP8 (both multiples of 16)."""
    return in_features % FP8_MULTIPLE == 0 and out_features % FP8_MULTIPLE == 0


def encoder_linear_shapes(width: int, mlp_hidden: int) -> dict[str, tuple[int, int]]:
    """(in, out) features of each Linear of one encoder block."""
    return {
        "attn.qkv": (width, 3 * width),
        "attn.proj": (width, width),
        "mlp.fc1": (width, mlp_hidden),
        "mlp.fc2": (mlp_hidden, width),
    }


def fp8_layers(fp8: str, width: int, mlp_hidden: int) -> tuple[str, ...]:
    """The Linears of every encoder block ``parallel.fp8`` converts (none when it is off)."""
    if fp8 == "none":
        return ()
    shapes = encoder_linear_shapes(width, mlp_hidden)
    return tuple(name for name in ENCODER_LINEARS if fp8_convertible(*shapes[name]))


def shards_decoder(decoder: DecoderShape | None, tp: int) -> bool:
    """Whether TP shards the MAE decoder: ``tp`` > 1 divides its heads and MLP width (False without a decoder)."""
    return decoder is not None and tp > 1 and decoder.heads % tp == 0 and decoder.mlp_hidden % tp == 0


# ----- the value --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How one run is laid out on ``world_size`` ranks (see the module docstring). ``grad_accum`` is exact when
    :meth:`batch_problem` is None; the trainer calls :meth:`accumulation`, which refuses otherwise."""

    world_size: int
    tp: int
    zero_stage: int
    offload: str
    micro_batch: int
    global_batch: int
    grad_accum_set: int | None  # train.grad_accum when given
    precision: str
    accum_dtype: str
    recompute: str
    zero_init: bool
    compile: str
    fp8_layers: tuple[str, ...]
    decoder_sharded: bool

    @property
    def dp(self) -> int:
        return self.world_size // self.tp

    @property
    def grad_accum(self) -> float:
        """Micro-batches per optimizer step on each data-parallel rank (fractional when the batch does not split)."""
        if self.grad_accum_set is not None:
            return self.grad_accum_set
        return self.global_batch / (self.micro_batch * self.dp)

    def batch_problem(self) -> str | None:
        """Why the global batch does not split into micro-batches over the data-parallel ranks (None when it does)."""
        dp, micro, total = self.dp, self.micro_batch, self.global_batch
        if self.grad_accum_set is not None:
            if micro * self.grad_accum_set * dp != total:
                return (
                    f"train.global_batch={total} != train.micro_batch={micro} × "
                    f"train.grad_accum={self.grad_accum_set} × data-parallel size {dp}"
                )
            return None
        if total % (micro * dp):
            fits = [m for m in range(micro, 0, -1) if total % (m * dp) == 0]
            hint = (
                f"; e.g. train.micro_batch={fits[0]}"
                if fits
                else f"; train.global_batch must be a multiple of the data-parallel size {dp}"
            )
            return (
                f"train.global_batch={total} is not a multiple of train.micro_batch={micro} × data-parallel size "
                f"{dp} (world {self.world_size} / tp {self.tp}){hint}"
            )
        return None

    def accumulation(self) -> tuple[int, int]:
        """(data-parallel size, gradient accumulation steps), or ConfigError naming the batch keys."""
        problem = self.batch_problem()
        if problem:
            raise ConfigError(problem)
        return self.dp, int(self.grad_accum)

    def label(self) -> str:
        return (
            f"zero{self.zero_stage} tp{self.tp} ckpt={self.recompute} offload={self.offload} micro={self.micro_batch}"
        )


def derive_layout(cfg: RunConfig, world_size: int) -> Layout:
    """The layout of ``cfg`` (a validated, single-stage config) on ``world_size`` ranks; ConfigError when tp does
    not divide the world or the ZeRO stage cannot accumulate in the configured dtype. Side-effect free."""
    par, spec = cfg.parallel, cfg.spec
    check_world_split(world_size, par.tp)
    return Layout(
        world_size=world_size,
        tp=par.tp,
        zero_stage=par.zero_stage,
        offload=par.offload,
        micro_batch=cfg.train.micro_batch,
        global_batch=cfg.train.global_batch,
        grad_accum_set=cfg.train.grad_accum,
        precision=par.precision,
        accum_dtype=accumulation_dtype(par.precision, par.grad_accum_dtype, par.zero_stage),
        recompute=par.activation_checkpointing,
        zero_init=uses_zero_init(par.zero_stage, par.tp),
        compile=cfg.model.compile,
        fp8_layers=fp8_layers(par.fp8, spec.width, spec.mlp_hidden),
        decoder_sharded=shards_decoder(cfg.decoder if cfg.stage == "mae" else None, par.tp),
    )
