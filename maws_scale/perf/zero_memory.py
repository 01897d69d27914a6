"""Model-state bytes per rank as DeepSpeed 0.19.8 holds them: parameters, gradients, fp32 master, Adam moments,
communication buffers, and what moves to the host under ZeRO-Offload.

Rules (Ψ = trainable elements of one TP rank, N = data-parallel size, b = bytes of the model dtype: 2 for bf16 /
fp16, 4 for fp32). Gradients as tabled are accumulated in the model dtype (``parallel.grad_accum_dtype=model``). With
fp32 accumulation of a 16-bit model (the default; measured for bf16 on 1-2 ranks): ZeRO-1 runs DeepSpeed's
BF16_Optimizer, which holds an fp32 gradient of every parameter beside the 16-bit ``.grad`` ((4 + b)·Ψ); ZeRO-2 holds
the fp32 gradient of its part (4·Ψ/N); ZeRO-3 its part in fp32 (4·Ψ/N):

========  =========================  ===============================  ==============  ============
stage     parameters                 gradients                        fp32 master     Adam m + v
========  =========================  ===============================  ==============  ============
0 fp32    4Ψ (the master itself)     4Ψ                               —               8Ψ
0 bf16    2Ψ                         2Ψ                               4Ψ              8Ψ
1, 2      bΨ (one flat buffer)       b·(params touching my part)      4·Ψ/N           8·Ψ/N
3         b·Ψ/N + b·(resident vec.)  b·Ψ/N                            4·Ψ/N           8·Ψ/N
========  =========================  ===============================  ==============  ============

Details that matter at small N or for tiny models, all simulated exactly: ZeRO-1/2 flatten each AdamW group in module
order, pad it to a multiple of 2·N and cut it into N equal parts; the gradient buffer of a rank holds every parameter
that *touches* its part whole (``grads_in_partition``), so boundary parameters count twice. ZeRO-3 pads each
parameter to a multiple of N; vectors at or below ``stage3_param_persistence_threshold`` stay resident in full on
every rank (the engine persists every bias and norm) — when the model was built under ``deepspeed.zero.Init``,
which the engine does without TP; a model partitioned afterwards (TP) keeps nothing resident. fp32 training keeps
a separate fp32 master copy from stage 1 on, on any number of data-parallel ranks (DeepSpeed's own step).

Buffers: ZeRO-1/2 gradient buckets, ``reduce_bucket_size`` elements (two with ``overlap_comm``); ZeRO-3 one reduce
bucket plus gathered parameters, bounded by ``stage3_max_live_parameters + stage3_prefetch_bucket_size`` (and by the
model). Step temporaries (freed activations make room for them): ZeRO-0 mixed precision converts every gradient to
fp32 (4Ψ); ZeRO-1/2/3 convert their gradient part (4·Ψ/N; ZeRO-3 per sub-group of ``sub_group_size``).
Offload: ``optimizer`` moves master, moments and an fp32 gradient part (4·Ψ/N) to the host, leaving only bucket
traffic for gradients on the device at ZeRO-1/2 (ZeRO-3 keeps its b·Ψ/N gradient part); ``all`` also moves the ZeRO-3
parameter partition (b·Ψ/N) to the host, leaving resident vectors and gathered blocks.
Frozen parameters (MAE's sin-cos tables) are held like parameters (partitioned at ZeRO-3) without any other state.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

DEFAULT_SUB_GROUP = 1_000_000_000
DEFAULT_BUCKET = 500_000_000  # DeepSpeed's own default reduce/allgather bucket size
DEFAULT_PERSISTENCE = 100_000
DEFAULT_PREFETCH = 50_000_000
DEFAULT_MAX_LIVE = 1_000_000_000


@dataclass(frozen=True)
class ZeroSettings:
    """The DeepSpeed config values the memory model reads."""

    stage: int
    precision: str  # fp32 | bf16 | fp16
    grad_accum: str = ""  # data_types.grad_accum_dtype; "" = the model dtype
    offload_optimizer: bool = False
    offload_param: bool = False
    reduce_bucket_size: int = DEFAULT_BUCKET
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    prefetch_bucket_size: int = DEFAULT_PREFETCH
    max_live_parameters: int = DEFAULT_MAX_LIVE
    persistence_threshold: int = DEFAULT_PERSISTENCE
    sub_group_size: int = DEFAULT_SUB_GROUP
    zero_init: bool = True  # built under deepspeed.zero.Init (persistence only applies then)

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def grad_bytes(self) -> int:
        """Bytes of an accumulated gradient element: 4 with fp32 accumulation, else the model dtype's."""
        return 4 if self.grad_accum == "fp32" else self.dtype_bytes

    @classmethod
    def from_ds_config(cls, ds: dict[str, Any], zero_init: bool = True) -> ZeroSettings:
        """Read a filled DeepSpeed config (as :func:`maws_scale.parallel.ds_config.build_ds_config` returns it);
        ``zero_init``: whether the model is built under ``deepspeed.zero.Init`` (the engine does so without TP)."""
        zero = ds.get("zero_optimization", {})
        precision = "fp32"
        for name in ("bf16", "fp16"):
            if ds.get(name, {}).get("enabled"):
                precision = name
        grad_dtype = ds.get("data_types", {}).get("grad_accum_dtype") or precision
        if grad_dtype not in (precision, "fp32"):
            raise ValueError(f"data_types.grad_accum_dtype={grad_dtype} with {precision}: not a dtype DeepSpeed uses")
        stage = int(zero.get("stage", 0))
        return cls(
            stage=stage,
            precision=precision,
            grad_accum=grad_dtype,
            offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None),
            offload_param=zero.get("offload_param", {}).get("device", "none") not in ("none", None),
            reduce_bucket_size=int(zero.get("reduce_bucket_size", DEFAULT_BUCKET)),
            overlap_comm=bool(zero.get("overlap_comm", stage == 3)),
            contiguous_gradients=bool(zero.get("contiguous_gradients", True)),
            prefetch_bucket_size=int(zero.get("stage3_prefetch_bucket_size", DEFAULT_PREFETCH)),
            max_live_parameters=int(zero.get("stage3_max_live_parameters", DEFAULT_MAX_LIVE)),
            persistence_threshold=int(zero.get("stage3_param_persistence_threshold", DEFAULT_PERSISTENCE)),
            sub_group_size=int(zero.get("sub_group_size", DEFAULT_SUB_GROUP)),
            zero_init=zero_init,
        )


@dataclass(frozen=True)
class StateBytes:
    """Bytes one rank holds for model states. ``host``: bytes kept in CPU memory (offload), not on the device."""

    params: int
    grads: int
    master: int
    moments: int
    buffers: int
    step_temp: int
    host: int

    @property
    def optimizer(self) -> int:
        """fp32 master + Adam moments on the device."""
        return self.master + self.moments

    @property
    def device_total(self) -> int:
        """Resident model states + buffers (step temporaries excluded: they live when activations are gone)."""
        return self.params + self.grads + self.master + self.moments + self.buffers

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "optimizer": self.optimizer}


def partition_touching(numels: list[int], dp: int, rank: int) -> tuple[int, int]:
    """ZeRO-1/2 partition of one flattened group: (partition size, elements of the parameters that touch ``rank``'s
    part, each counted whole). The group is padded to a multiple of 2·dp as DeepSpeed aligns it."""
    total = sum(numels)
    align = 2 * dp
    part = math.ceil(total / align) * align // dp
    lo, hi = rank * part, (rank + 1) * part
    touching, start = 0, 0
    for n in numels:
        end = start + n
        if start < hi and end > lo:
            touching += n
        start = end
    return part, touching


def model_state_bytes(
    groups: list[list[int]], frozen: list[int], dp: int, zs: ZeroSettings, rank: int | None = None
) -> StateBytes:
    """Model-state bytes of data-parallel ``rank`` (None: the rank holding the most) for AdamW ``groups`` of
    trainable element counts (one TP rank's), ``frozen`` element counts, and ZeRO settings ``zs``."""
    if rank is None:
        ranks = range(dp) if zs.stage in (1, 2) else [0]
        return max((model_state_bytes(groups, frozen, dp, zs, r) for r in ranks), key=lambda s: s.device_total)
    b = zs.dtype_bytes
    trainable = sum(sum(g) for g in groups)
    frozen_total = sum(frozen)
    if zs.stage == 0:
        return _stage0(trainable, frozen_total, b, zs)
    if zs.stage in (1, 2):
        states = _stage12(groups, frozen_total, dp, rank, b, zs)
        if zs.grad_bytes != b and not zs.offload_optimizer:
            # measured (bf16, 2 ranks): ZeRO-1 is DeepSpeed's BF16_Optimizer, an fp32 gradient per parameter beside the
            # bf16 .grad; ZeRO-2 keeps the fp32 gradient of its own part only
            grads = (4 + b) * trainable if zs.stage == 1 else 4 * (states.master // 4)
            states = replace(states, grads=grads)
        return states
    return _stage3(groups, frozen, dp, b, zs)


def _stage0(trainable: int, frozen: int, b: int, zs: ZeroSettings) -> StateBytes:
    mixed = b == 2
    return StateBytes(
        params=b * (trainable + frozen),
        grads=b * trainable,
        master=4 * trainable if mixed else 0,
        moments=8 * trainable,
        buffers=0,
        step_temp=4 * trainable if mixed else 0,
        host=0,
    )


def _stage12(groups: list[list[int]], frozen: int, dp: int, rank: int, b: int, zs: ZeroSettings) -> StateBytes:
    flat = part = touching = 0
    for numels in groups:
        p, t = partition_touching(numels, dp, rank)
        flat += p * dp
        part += p
        touching += t
    buckets = (2 if zs.overlap_comm else 1) * zs.reduce_bucket_size * b if zs.contiguous_gradients else 0
    states = 4 * part + 8 * part
    if zs.offload_optimizer:
        return StateBytes(b * (flat + frozen), 0, 0, 0, buckets, 0, host=states + 4 * part)
    return StateBytes(
        params=b * (flat + frozen),
        grads=b * touching,
        master=4 * part,
        moments=8 * part,
        buffers=buckets,
        step_temp=4 * part,
        host=0,
    )


def _stage3(groups: list[list[int]], frozen: list[int], dp: int, b: int, zs: ZeroSettings) -> StateBytes:
    trainable = [n for g in groups for n in g]
    every = trainable + frozen
    part = sum(math.ceil(n / dp) for n in trainable)
    param_part = sum(math.ceil(n / dp) for n in every)
    threshold = zs.persistence_threshold if zs.zero_init else 0
    resident = sum(n for n in every if n <= threshold)
    gatherable = sum(n for n in every if n > threshold)
    gathered = min(gatherable, zs.max_live_parameters + zs.prefetch_bucket_size)
    buffers = zs.reduce_bucket_size * b + gathered * b
    step_temp = 4 * min(part, zs.sub_group_size)
    host = 0
    params = b * (param_part + resident)
    if zs.offload_param:
        host += b * param_part
        params = b * resident
    if zs.offload_optimizer:
        host += 12 * part + 4 * part
        return StateBytes(params, zs.grad_bytes * part, 0, 0, buffers, 0, host)
    return StateBytes(params, zs.grad_bytes * part, 4 * part, 8 * part, buffers, step_temp, host)
