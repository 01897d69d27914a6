"""``maws-scale plan``: memory per GPU and a speed estimate for a model × ZeRO × TP × checkpointing × offload ×
micro-batch layout, a fits / does-not-fit verdict with the largest micro-batch that fits, and a layout search.

Memory per GPU = model states (:mod:`maws_scale.bench.zero_memory`, from the parameter inventory of the real model
and the DeepSpeed config the engine would write) + activations (:mod:`maws_scale.bench.activations`, linear in the
micro-batch) + buffers; the optimizer step's fp32 gradient copies replace the activations at their peak, so
``peak = states + buffers + max(activations, step temporaries)``. A layout fits when the peak is at most
``gpu_mem - reserve`` (the reserve stands for the CUDA context, NCCL buffers and allocator fragmentation).

Speed (documented, deliberately simple; it ranks layouts, it does not promise numbers):
``compute`` = the matmul FLOPs one GPU runs per step (:mod:`maws_scale.models.flops`; TP splits encoder blocks, the
head, and the MAE decoder when it is sharded; patch embedding runs on every TP rank; checkpointing adds one more
forward of every recomputed block: all of them for ``full``, every k-th for ``every_k:<k>``, none for ``selective_op``,
which recomputes no matmul) / (peak × ``compute_efficiency``), plus the memory traffic of what ``selective_op``
recomputes (norms, GELU, residual adds) / ``hbm_gbps``. Communication is bytes per GPU / bandwidth, ring collectives
moving 2(n-1)/n (all-reduce) or (n-1)/n (reduce-scatter, all-gather) of the buffer; data-parallel traffic uses the
inter-node bandwidth once the job spans nodes, TP stays inside a node. What can hide behind compute does
(``overlap_comm`` and ZeRO-3 prefetch, as the shipped ds_configs set them), the rest is on the critical path:

    step = max(compute, overlapped) + exposed
    overlapped: ZeRO-1/2 a gradient reduce-scatter per micro-batch; ZeRO-3 two parameter all-gathers and a
                reduce-scatter per micro-batch
    exposed:    ZeRO-0 the gradient all-reduce after backward; ZeRO-1/2 the parameter all-gather after the step;
                TP four activation all-reduces per sharded block per micro-batch (six if recomputed); offload the
                PCIe traffic of gradients and parameters and the CPU Adam update

``est_images_per_s`` = global batch / step; ``est_mfu`` = useful FLOPs / (step × peak), recompute not counted.

FP8 (``parallel.fp8``, :mod:`maws_scale.parallel.fp8`): the encoder blocks' linear FLOPs (forward, backward and
recompute) run ``FP8_MATMUL_SPEEDUP`` times faster; attention, the decoder and the head do not. MFU stays measured
against the bf16 ``peak`` (as the trainer reports it). Memory: the model states and the saved activations do not
change (torchao keeps parameters in their dtype and saves each converted layer's high-precision input and weight for
backward); a transient FP8 workspace is added: ``FP8_BYTES_PER_HIDDEN`` bytes per encoder token × MLP width per
sample (1-byte copies of a layer's input and output gradient, and their transposes for the weight gradient) and two
1-byte copies (and transposes) of the largest block weight.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from maws_scale.bench.activations import ActivationEstimate, estimate
from maws_scale.bench.inventory import Inventory, build_inventory
from maws_scale.bench.zero_memory import StateBytes, ZeroSettings, model_state_bytes
from maws_scale.config import ConfigError, RunConfig
from maws_scale.models.checkpoint_modes import selective_compile_problem
from maws_scale.models.checkpointing import parse_mode
from maws_scale.parallel.engine import build_ds_config, uses_zero_init
from maws_scale.parallel.fp8 import fp8_allows_micro_batch

GiB = 1 << 30
# The encoder's FP8 matmuls vs bf16, as the speed model uses it: the datasheet ratio is 2× (H100/H200 dense FP8 1979
# vs bf16 989 TFLOP/s), less dynamic scaling's amax and cast passes; torchtitan's Llama-3-8B on H100 (+28 % end to
# end from FP8 with compile, most but not all FLOPs converted) implies about 1.5-1.8× on the converted matmuls. A
# planning figure, not a measurement here: benchmarks/gpu_check.sh measures eager vs compile vs compile + FP8.
FP8_MATMUL_SPEEDUP = 1.6
FP8_BYTES_PER_HIDDEN = 4
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
}


def parse_bytes(text: str | int | float) -> int:
    """'80GiB', '80GB', '1.5TiB', '512MiB' or a plain number of bytes → bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"cannot read '{text}' as a size (use e.g. 80GiB, 80GB, 512MiB)")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Hardware:
    """The machine a plan is for. Bandwidths in GB/s per GPU; ``cpu_adam_rate``: parameters/s one rank's CPU Adam
    updates under offload; ``host_mem``: CPU memory per node for offloaded states (None: not checked)."""

    gpus: int = 1
    gpu_mem: int = 80 * GiB
    reserve: int = 2 * GiB
    gpus_per_node: int = 8
    peak_tflops: float = 989.0
    compute_efficiency: float = 0.6
    intra_node_gbps: float = 300.0
    inter_node_gbps: float = 25.0
    pcie_gbps: float = 25.0
    cpu_adam_rate: float = 1.0e9
    host_mem: int | None = None
    hbm_gbps: float = 3350.0
    device_type: str = "cuda"  # the DeepSpeed settings that depend on the device (buckets) follow it

    @property
    def usable(self) -> int:
        return self.gpu_mem - self.reserve

    @property
    def host_per_gpu(self) -> int | None:
        """Host memory available to one GPU's offloaded states (the node's, shared by its GPUs)."""
        return None if self.host_mem is None else self.host_mem // min(self.gpus, self.gpus_per_node)


@dataclass(frozen=True)
class Layout:
    zero_stage: int
    tp: int
    checkpointing: str  # a mode of maws_scale.models.checkpointing
    offload: str
    micro_batch: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpointing", parse_mode(self.checkpointing))

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Layout:
        p = cfg.parallel
        return cls(p.zero_stage, p.tp, p.activation_checkpointing, p.offload, cfg.train.micro_batch)

    def label(self) -> str:
        return (
            f"zero{self.zero_stage} tp{self.tp} ckpt={self.checkpointing} "
            f"offload={self.offload} micro={self.micro_batch}"
        )


@dataclass
class Speed:
    """The speed model's estimate for one step (seconds per GPU) and what follows from it."""

    compute_s: float
    comm_overlapped_s: float
    comm_exposed_s: float
    step_s: float
    useful_flops_per_gpu: float
    recompute_flops_per_gpu: float
    est_images_per_s: float
    est_mfu: float


@dataclass
class Plan:
    """Memory per GPU (bytes) and the speed estimate of one layout."""

    model: str
    stage: str
    layout: Layout
    gpus: int
    dp: int
    grad_accum: float
    params_total: int
    params_per_gpu: int
    head_params_per_gpu: int
    states: StateBytes
    activations_per_sample: float
    activation: ActivationEstimate
    flops_per_sample: int
    flops_per_step: int
    usable: int
    global_batch: int
    host_limit: int | None
    speed: Speed
    notes: list[str] = field(default_factory=list)
    fp8_fixed: int = 0  # FP8 copies of the largest block weight (parallel.fp8), transient, independent of the batch

    @property
    def activations(self) -> int:
        return math.ceil(self.activations_per_sample * self.layout.micro_batch)

    @property
    def peak(self) -> int:
        return self.states.device_total + self.fp8_fixed + max(self.activations, self.states.step_temp)

    @property
    def host_fits(self) -> bool:
        return self.host_limit is None or self.states.host <= self.host_limit

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable and self.host_fits

    def max_micro_batch(self) -> int:
        """Largest micro-batch whose peak fits (0 when even the model states do not)."""
        fixed = self.states.device_total + self.fp8_fixed
        if fixed + self.states.step_temp > self.usable or not self.host_fits:
            return 0
        return max(0, int((self.usable - fixed) // self.activations_per_sample))

    def memory(self) -> dict[str, int]:
        s = self.states
        return {
            "params": s.params,
            "grads": s.grads,
            "optimizer": s.optimizer,
            "optimizer_master": s.master,
            "optimizer_moments": s.moments,
            "activations": self.activations,
            "buffers": s.buffers,
            "fp8_workspace_fixed": self.fp8_fixed,
            "step_temporaries": s.step_temp,
            "peak": self.peak,
            "usable": self.usable,
            "host_per_gpu": s.host,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stage": self.stage,
            "layout": asdict(self.layout),
            "gpus": self.gpus,
            "dp": self.dp,
            "grad_accum": self.grad_accum,
            "parameters": {
                "total": self.params_total,
                "per_gpu": self.params_per_gpu,
                "head_per_gpu": self.head_params_per_gpu,
            },
            "bytes_per_gpu": self.memory(),
            "activations_per_sample": self.activations_per_sample,
            "tokens": {"encoder": self.activation.tokens_encoder, "decoder": self.activation.tokens_decoder},
            "flops": {"per_sample": self.flops_per_sample, "per_step": self.flops_per_step},
            "speed": asdict(self.speed),
            "verdict": {
                "fits": self.fits,
                "host_fits": self.host_fits,
                "max_micro_batch": self.max_micro_batch(),
                "max_micro_batch_for_global_batch": best_micro_batch(self, self.global_batch),
            },
            "notes": self.notes,
        }


# ----- building blocks --------------------------------------------------------------------------------------------
def layout_config(cfg: RunConfig, layout: Layout) -> RunConfig:
    """``cfg`` with ``layout``'s parallel fields and micro-batch (validated; raises ConfigError when invalid)."""
    raw = cfg.model_dump(mode="json")
    raw["parallel"].update(
        zero_stage=layout.zero_stage,
        tp=layout.tp,
        activation_checkpointing=layout.checkpointing,
        offload=layout.offload,
    )
    if (layout.zero_stage, layout.offload) != (cfg.parallel.zero_stage, cfg.parallel.offload):
        raw["parallel"]["ds_config"] = None  # a pinned template holds the config's own stage: use the shipped one
    raw["train"]["micro_batch"] = min(layout.micro_batch, raw["train"]["global_batch"])
    raw["train"]["grad_accum"] = None
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"layout {layout.label()}: {where + ': ' if where else ''}{message}") from None


@lru_cache(maxsize=64)
def _inventory_cached(cfg_json: str, num_classes: int | None, tp: int) -> Inventory:
    return build_inventory(RunConfig.model_validate_json(cfg_json), num_classes, tp)


def inventory_for(cfg: RunConfig, num_classes: int | None, tp: int) -> Inventory:
    """The (cached) parameter inventory of ``cfg``'s model at ``tp``; the cache key ignores parallel settings."""
    base = RunConfig.model_validate(cfg.model_dump(mode="json", include={"stage", "model", "mae", "wsp", "optim"}))
    return _inventory_cached(base.model_dump_json(), num_classes, tp)


def zero_settings(cfg: RunConfig, dp: int, inv: Inventory, device: str = "cuda") -> ZeroSettings:
    """The DeepSpeed settings the engine would use for ``cfg`` on ``dp`` data-parallel ranks of ``device``
    (``inv``: the inventory at ``parallel.tp``, whose bucket sizes are the trainer's)."""
    per_step = cfg.train.micro_batch * dp
    accum = max(1, cfg.train.global_batch // per_step)
    ds = build_ds_config(cfg, dp, accum, inv.engine_blocks, device=device)
    return ZeroSettings.from_ds_config(ds, zero_init=uses_zero_init(cfg))


def resolve_classes(cfg: RunConfig, num_classes: int | None) -> int | None:
    if cfg.stage != "wsp":
        return None
    classes = num_classes or cfg.wsp.num_classes
    if not classes:
        raise ConfigError("wsp.num_classes: the WSP head size is needed to plan; set wsp.num_classes or --num-classes")
    return classes


def predict_states(cfg: RunConfig, gpus: int, num_classes: int | None = None, rank: int | None = None) -> StateBytes:
    """Model-state bytes the engine holds on data-parallel ``rank`` (None: the largest) of a ``gpus``-GPU job."""
    classes = resolve_classes(cfg, num_classes)
    tp = cfg.parallel.tp
    dp = gpus // tp
    inv = inventory_for(cfg, classes, tp)
    return model_state_bytes(inv.groups(), inv.frozen, dp, zero_settings(cfg, dp, inv), rank)


# ----- plan -------------------------------------------------------------------------------------------------------
def plan_layout(
    cfg: RunConfig, hw: Hardware, layout: Layout | None = None, num_classes: int | None = None, fused_kernels=True
) -> Plan:
    """Memory and speed of ``layout`` (default: the config's own) for ``cfg`` on ``hw``."""
    from maws_scale.models.flops import flops_breakdown
    from maws_scale.train.stages import make_stage

    layout = layout or Layout.from_config(cfg)
    lcfg = layout_config(cfg, layout)
    classes = resolve_classes(lcfg, num_classes)
    tp = layout.tp
    notes: list[str] = []
    if hw.gpus % tp:
        raise ConfigError(f"parallel.tp={tp} does not divide --gpus {hw.gpus}")
    dp = hw.gpus // tp
    accum = lcfg.train.global_batch / (layout.micro_batch * dp)
    if accum != int(accum) or accum < 1:
        notes.append(
            f"train.global_batch={lcfg.train.global_batch} is not a multiple of micro {layout.micro_batch} × dp {dp}"
        )
    inv = inventory_for(lcfg, classes, tp)
    zs = zero_settings(lcfg, dp, inv, hw.device_type)
    states = model_state_bytes(inv.groups(), inv.frozen, dp, zs)
    act = estimate(lcfg, classes, tp=tp, fused_kernels=fused_kernels)

    # the trainer's own Stage and its meta-built model: the configured decoder, pooling and head are what count
    stage = make_stage(lcfg, classes)
    per_sample = stage.flops_per_sample()
    mask = lcfg.mae.mask_ratio if lcfg.stage == "mae" else None
    parts = flops_breakdown(stage.build_model(device="meta"), lcfg.stage, mask_ratio=mask)
    fp8_per_sample, fp8_fixed = fp8_memory(lcfg, act, tp)
    plan = Plan(
        model=lcfg.model.name,
        stage=lcfg.stage,
        layout=layout,
        gpus=hw.gpus,
        dp=dp,
        grad_accum=accum,
        params_total=inv.full_params,
        params_per_gpu=inv.numel,
        head_params_per_gpu=inv.head_numel(),
        states=states,
        activations_per_sample=act.per_sample + fp8_per_sample,
        activation=act,
        flops_per_sample=per_sample,
        flops_per_step=per_sample * lcfg.train.global_batch,
        usable=hw.usable,
        global_batch=lcfg.train.global_batch,
        host_limit=hw.host_per_gpu,
        speed=estimate_speed(lcfg, hw, layout, dp, inv, zs, parts, act),
        notes=notes,
        fp8_fixed=fp8_fixed,
    )
    if layout.tp > hw.gpus_per_node:
        plan.notes.append(f"tp={layout.tp} spans nodes ({hw.gpus_per_node} GPUs per node): TP all-reduces leave NVLink")
    return plan


def fp8_linear_flops(cfg: RunConfig, tokens: int) -> int:
    """Forward FLOPs per sample of the Linear layers ``parallel.fp8`` converts (0 without FP8): the encoder blocks'
    qkv, proj, fc1, fc2 when their widths are multiples of 16 (:func:`maws_scale.parallel.fp8.fp8_layer`)."""
    from maws_scale.parallel.fp8 import FP8_MULTIPLE

    spec = cfg.spec
    width, hidden = spec.width, spec.mlp_hidden
    if cfg.parallel.fp8 == "none" or width % FP8_MULTIPLE or hidden % FP8_MULTIPLE:
        return 0
    return spec.depth * 2 * tokens * width * (4 * width + 2 * hidden)


def fp8_memory(cfg: RunConfig, act: ActivationEstimate, tp: int) -> tuple[float, int]:
    """FP8 workspace (module docstring): (bytes per sample, fixed bytes); (0, 0) without FP8."""
    if not fp8_linear_flops(cfg, 1):
        return 0.0, 0
    hidden, width = cfg.spec.mlp_hidden // tp, cfg.spec.width
    return float(FP8_BYTES_PER_HIDDEN * act.tokens_encoder * hidden), 4 * width * hidden


def estimate_speed(
    cfg: RunConfig,
    hw: Hardware,
    layout: Layout,
    dp: int,
    inv: Inventory,
    zs: ZeroSettings,
    parts: dict[str, int],
    act: ActivationEstimate,
) -> Speed:
    """The speed model of the module docstring."""
    tp, micro = layout.tp, layout.micro_batch
    samples = cfg.train.global_batch / dp  # per data-parallel rank per step
    micro_steps = max(1.0, samples / micro)
    decoder_split = inv.decoder_sharded
    split = parts["encoder"] + parts["head"] + (parts["decoder"] if decoder_split else 0)
    replicated = parts["patch_embed"] + parts["pool"] + (0 if decoder_split else parts["decoder"])
    fwd_per_gpu = samples * (split / tp + replicated)
    enc_share, dec_share = act.recomputed  # the share of each stack's block matmuls run again
    recompute = samples * (
        enc_share * parts["encoder"] / tp + dec_share * parts["decoder"] / (tp if decoder_split else 1)
    )
    work = 3 * fwd_per_gpu + recompute
    # the FP8 matmuls (forward, backward, and the recomputed share) take 1/speed-up the time: bf16-equivalent work
    fp8 = samples * fp8_linear_flops(cfg, parts["tokens"]) / tp * (3 + enc_share)
    work -= fp8 * (1 - 1 / FP8_MATMUL_SPEEDUP)
    compute = work / (hw.peak_tflops * 1e12 * hw.compute_efficiency) + samples * act.recompute_traffic / (
        hw.hbm_gbps * 1e9
    )

    b = zs.dtype_bytes
    psi = inv.trainable_numel
    multi_node = hw.gpus > hw.gpus_per_node
    dp_bw = (hw.inter_node_gbps if multi_node else hw.intra_node_gbps) * 1e9
    ring = (dp - 1) / dp if dp > 1 else 0.0
    volume = b * psi  # one copy of this rank's parameters (or gradients) in the model dtype
    overlapped = exposed = 0.0
    if layout.zero_stage == 0:
        exposed += 2 * ring * volume / dp_bw
    elif layout.zero_stage in (1, 2):
        overlapped += micro_steps * ring * volume / dp_bw
        exposed += ring * volume / dp_bw
    else:
        overlapped += micro_steps * 3 * ring * volume / dp_bw
    if tp > 1:
        a = 4 if cfg.parallel.precision == "fp32" else 2
        per_allreduce = micro * act.tokens_encoder * cfg.spec.width * a * 2 * (tp - 1) / tp
        # collectives inside a recomputed block run again (selective_op recomputes them too)
        rerun = 1.0 if layout.checkpointing == "selective_op" else enc_share
        count = (4 + 2 * rerun) * cfg.spec.depth
        exposed += micro_steps * count * per_allreduce / (hw.intra_node_gbps * 1e9)
        if decoder_split:
            dw = cfg.mae.decoder_width or cfg.spec.decoder_width
            depth = cfg.mae.decoder_depth or cfg.spec.decoder_depth
            per_dec = micro * act.tokens_decoder * dw * a * 2 * (tp - 1) / tp
            rerun = 1.0 if layout.checkpointing == "selective_op" else dec_share
            exposed += micro_steps * (4 + 2 * rerun) * depth * per_dec / (hw.intra_node_gbps * 1e9)
    if layout.offload != "none":
        part = psi / dp
        exposed += 2 * b * part / (hw.pcie_gbps * 1e9) + part / hw.cpu_adam_rate
        if layout.offload == "all":
            exposed += micro_steps * 2 * b * part / (hw.pcie_gbps * 1e9)
    step = max(compute, overlapped) + exposed
    useful = 3 * samples * (parts["encoder"] + parts["head"] + replicated) / tp
    return Speed(
        compute_s=compute,
        comm_overlapped_s=overlapped,
        comm_exposed_s=exposed,
        step_s=step,
        useful_flops_per_gpu=useful,
        recompute_flops_per_gpu=recompute,
        est_images_per_s=cfg.train.global_batch / step,
        est_mfu=useful / (step * hw.peak_tflops * 1e12),
    )


# ----- verdict and search -----------------------------------------------------------------------------------------
def valid_micro_batches(global_batch: int, dp: int) -> list[int]:
    """Micro-batches m with global_batch = m × accum × dp for an integer accum, largest first."""
    if global_batch % dp:
        return []
    per_rank = global_batch // dp
    return [m for m in range(per_rank, 0, -1) if per_rank % m == 0]


def best_micro_batch(plan: Plan, global_batch: int, allowed: Callable[[int], bool] | None = None) -> int:
    """Largest micro-batch that fits, divides the per-rank share of ``global_batch`` and is ``allowed`` (e.g. by
    FP8's shape rule); 0 if none."""
    limit = plan.max_micro_batch()
    fits = (m for m in valid_micro_batches(global_batch, plan.dp) if m <= limit)
    return next((m for m in fits if allowed is None or allowed(m)), 0)


CHECKPOINTING_MODES = ("none", "selective_op", "every_k:4", "every_k:2", "full")


def candidate_layouts(cfg: RunConfig, hw: Hardware) -> list[Layout]:
    """ZeRO 0-3 (1-3 for fp32 accumulation of a 16-bit model) × TP (dividing heads, MLP width and the GPU count,
    within a node) × checkpointing (:data:`CHECKPOINTING_MODES`) × offload; the micro-batch is filled in by
    :func:`search`."""
    spec = cfg.spec
    tps = [
        t
        for t in range(1, min(hw.gpus, hw.gpus_per_node) + 1)
        if hw.gpus % t == 0 and spec.heads % t == 0 and spec.mlp_hidden % t == 0 and t & (t - 1) == 0
    ]
    out = []
    probe = next(m for m in range(1, 17) if fp8_allows_micro_batch(cfg, m))  # 1, or FP8's smallest valid micro-batch
    # DeepSpeed accumulates a 16-bit model's gradients in fp32 (parallel.grad_accum_dtype) only with ZeRO
    zero0 = cfg.parallel.precision == "fp32" or cfg.parallel.grad_accum_dtype == "model"
    for zero in (0, 1, 2, 3) if zero0 else (1, 2, 3):
        offloads = ["none"] + (["optimizer"] if zero >= 1 else []) + (["all"] if zero == 3 else [])
        for tp in tps:
            for ckpt in CHECKPOINTING_MODES:
                if selective_compile_problem(ckpt, cfg.model.compile):  # refused at config check: never proposed
                    continue
                for offload in offloads:
                    out.append(Layout(zero, tp, ckpt, offload, probe))
    return out


@dataclass
class SearchRow:
    plan: Plan
    micro_batch: int

    @property
    def fits(self) -> bool:
        return self.micro_batch > 0


def search(cfg: RunConfig, hw: Hardware, num_classes: int | None = None, fused_kernels: bool = True) -> list[SearchRow]:
    """Every candidate layout at its largest fitting micro-batch, fastest (by the speed model) first, then least
    compute (recompute), then lowest peak; layouts that do not fit at any micro-batch come last."""
    rows = []
    for layout in candidate_layouts(cfg, hw):
        probe = plan_layout(cfg, hw, layout, num_classes, fused_kernels)
        micro = best_micro_batch(probe, cfg.train.global_batch, lambda m: fp8_allows_micro_batch(cfg, m))
        if micro:
            probe = plan_layout(cfg, hw, Layout(**{**asdict(layout), "micro_batch": micro}), num_classes, fused_kernels)
        rows.append(SearchRow(probe, micro))
    # fitting first, fastest first; among equally fast layouts (compute hidden behind communication) the one with
    # the least compute (recompute is not free when overlap is imperfect), then the most headroom
    rows.sort(
        key=lambda r: (
            not r.fits,
            -round(r.plan.speed.est_images_per_s, 6) if r.fits else 0,
            round(r.plan.speed.compute_s, 12),
            r.plan.peak,
        )
    )
    return rows
