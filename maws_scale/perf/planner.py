"""``maws-scale plan``: memory per GPU and a speed estimate for a model × ZeRO × TP × checkpointing × offload ×
micro-batch layout, a fits / does-not-fit verdict with the largest micro-batch that fits, and a layout search.

Memory per GPU = model states (:mod:`maws_scale.perf.zero_memory`, from the parameter inventory of the real model
and the DeepSpeed config the engine would write) + activations (:mod:`maws_scale.perf.activations`, linear in the
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
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from maws_scale.config import ConfigError, RunConfig
from maws_scale.models.recompute_modes import selective_compile_problem
from maws_scale.parallel.ds_config import build_ds_config
from maws_scale.parallel.fp8 import fp8_allows_micro_batch
from maws_scale.parallel.layout import (
    Layout,
    check_tensor_split,
    check_world_split,
    derive_layout,
    encoder_linear_shapes,
    offload_modes,
    zero_stages,
)
from maws_scale.perf.activations import ActivationEstimate, estimate
from maws_scale.perf.inventory import Inventory, ModelInventory
from maws_scale.perf.zero_memory import StateBytes, ZeroSettings, model_state_bytes

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
class MemoryPlan:
    """Memory per GPU (bytes) and the speed estimate of one layout (the planner's answer; ``parallel.plan``'s
    ParallelPlan is what a run builds)."""

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
            "layout": layout_dict(self.layout),
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
def layout_dict(layout: Layout) -> dict[str, Any]:
    """The searched keys of ``layout`` (as in ``plan --json``) and what the layout derives from them."""
    return {
        "zero_stage": layout.zero_stage,
        "tp": layout.tp,
        "checkpointing": layout.recompute,
        "offload": layout.offload,
        "micro_batch": layout.micro_batch,
        "dp": layout.dp,
        "zero_init": layout.zero_init,
        "fp8_layers": list(layout.fp8_layers),
        "decoder_sharded": layout.decoder_sharded,
    }


def layout_config(cfg: RunConfig, layout: Layout) -> RunConfig:
    """``cfg`` with ``layout``'s parallel fields and micro-batch (validated; raises ConfigError when invalid)."""
    return with_layout(cfg, layout.zero_stage, layout.tp, layout.recompute, layout.offload, layout.micro_batch)


def with_layout(cfg: RunConfig, zero_stage: int, tp: int, recompute: str | bool, offload: str, micro: int) -> RunConfig:
    """``cfg`` with these layout keys (validated by RunConfig; ConfigError naming the layout when invalid)."""
    raw = cfg.model_dump(mode="json")
    raw["parallel"].update(zero_stage=zero_stage, tp=tp, activation_checkpointing=recompute, offload=offload)
    if (zero_stage, offload) != (cfg.parallel.zero_stage, cfg.parallel.offload):
        raw["parallel"]["ds_config"] = None  # a pinned template holds the config's own stage: use the shipped one
    raw["train"]["micro_batch"] = min(micro, raw["train"]["global_batch"])
    raw["train"]["grad_accum"] = None
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        label = f"zero{zero_stage} tp{tp} ckpt={recompute} offload={offload} micro={micro}"
        raise ConfigError(f"layout {label}: {where + ': ' if where else ''}{message}") from None


def candidate(
    cfg: RunConfig, gpus: int, zero_stage: int, tp: int, recompute: str | bool, offload: str, micro: int
) -> Layout:
    """The :class:`~maws_scale.parallel.layout.Layout` ``make_plan`` would derive for ``cfg`` with these keys on
    ``gpus`` ranks (ConfigError when the combination is invalid)."""
    return derive_layout(with_layout(cfg, zero_stage, tp, recompute, offload, micro), gpus)


@dataclass(frozen=True)
class ModelFacts:
    """What the planner reads off the meta-built model of one config and stage, once: the parameter inventory (any
    TP size follows from it), the FLOPs per sample and their breakdown by part."""

    inventory: ModelInventory
    flops_per_sample: int
    flops_parts: dict[str, int]


@lru_cache(maxsize=32)
def _facts_cached(cfg_json: str, num_classes: int | None) -> ModelFacts:
    from maws_scale.models.flops import flops_breakdown, step_flops
    from maws_scale.train.stages import make_stage

    cfg = RunConfig.model_validate_json(cfg_json)
    # the trainer's own Stage and its meta-built model: the configured decoder, pooling and head are what count
    model = make_stage(cfg, num_classes).build_model(device="meta")
    mask = cfg.mae.mask_ratio if cfg.stage == "mae" else None
    return ModelFacts(
        ModelInventory.from_model(model, cfg.optim.weight_decay),
        step_flops(model, cfg.stage, mask_ratio=mask),
        flops_breakdown(model, cfg.stage, mask_ratio=mask),
    )


def model_facts(cfg: RunConfig, num_classes: int | None) -> ModelFacts:
    """The (cached) :class:`ModelFacts` of ``cfg``'s model and stage; the cache key ignores every layout key."""
    base = RunConfig.model_validate(
        cfg.model_dump(mode="json", include={"stage", "model", "mae", "wsp", "finetune", "optim"})
    )
    return _facts_cached(base.model_dump_json(), num_classes)


def inventory_for(cfg: RunConfig, num_classes: int | None, tp: int) -> Inventory:
    """The parameter inventory of ``cfg``'s model at ``tp`` (the model is built once per config and stage)."""
    return model_facts(cfg, num_classes).inventory.at(tp)


def zero_settings(cfg: RunConfig, dp: int, inv: Inventory, device: str = "cuda") -> ZeroSettings:
    """The DeepSpeed settings the engine would use for ``cfg`` on ``dp`` data-parallel ranks of ``device``
    (``inv``: the inventory at ``parallel.tp``, whose bucket sizes are the trainer's)."""
    layout = derive_layout(cfg, dp * cfg.parallel.tp)
    # the engine's accumulation steps (at least 1 where the batch does not split: the plan notes it)
    ds = build_ds_config(cfg, dp, max(1, int(layout.grad_accum)), inv.engine_blocks, device=device)
    return ZeroSettings.from_ds_config(ds, zero_init=layout.zero_init)


# A WSP head for planning when the vocabulary is not on this machine (a cluster path): SWAG / MAWS's IG hashtag
# vocabulary holds about 27k WordNet-mapped hashtags (Singh et al. 2022, SWAG).
DEFAULT_WSP_CLASSES = 27_000


def planning_classes(cfg: RunConfig, num_classes: int | None = None) -> tuple[int | None, str | None]:
    """The WSP head size to plan ``cfg`` with, and a note when it is not the config's own: ``num_classes``
    (``--num-classes``), else ``wsp.num_classes``, else the size of the vocabulary file, else
    :data:`DEFAULT_WSP_CLASSES` with a note saying so. (None, None) for other stages."""
    if cfg.stage != "wsp":
        return None, None
    if num_classes or cfg.wsp.num_classes:
        return num_classes or cfg.wsp.num_classes, None
    from maws_scale.data.labels import VOCAB, load_vocab

    vocab = Path(cfg.wsp.vocab) if cfg.wsp.vocab else Path(cfg.data.path or ".") / VOCAB
    if vocab.is_file():
        return len(load_vocab(vocab)), None
    return DEFAULT_WSP_CLASSES, (
        f"wsp.num_classes: the vocabulary {vocab} is not on this machine; planned with a head of "
        f"{DEFAULT_WSP_CLASSES:,} classes (the IG hashtag vocabulary of SWAG/MAWS); set wsp.num_classes or "
        "--num-classes for your vocabulary"
    )


def resolve_classes(cfg: RunConfig, num_classes: int | None) -> int | None:
    if cfg.stage == "finetune":
        classes = num_classes or cfg.finetune.num_classes
        if not classes:
            raise ConfigError("finetune.num_classes: the head size is needed to plan; set it or --num-classes")
        return classes
    if cfg.stage != "wsp":
        return None
    classes = num_classes or cfg.wsp.num_classes
    if not classes:
        raise ConfigError("wsp.num_classes: the WSP head size is needed to plan; set wsp.num_classes or --num-classes")
    return classes


def predict_states(cfg: RunConfig, gpus: int, num_classes: int | None = None, rank: int | None = None) -> StateBytes:
    """Model-state bytes the engine holds on data-parallel ``rank`` (None: the largest) of a ``gpus``-GPU job."""
    classes = resolve_classes(cfg, num_classes)
    layout = derive_layout(cfg, gpus)
    inv = inventory_for(cfg, classes, layout.tp)
    return model_state_bytes(inv.groups(), inv.frozen, layout.dp, zero_settings(cfg, layout.dp, inv), rank)


@lru_cache(maxsize=256)
def _states(inv: Inventory, dp: int, zs: ZeroSettings) -> StateBytes:
    """The largest rank's model states (search: layouts that differ in recompute or micro-batch share them)."""
    return model_state_bytes(inv.groups(), inv.frozen, dp, zs)


# ----- plan -------------------------------------------------------------------------------------------------------
def plan_layout(
    cfg: RunConfig, hw: Hardware, layout: Layout | None = None, num_classes: int | None = None, fused_kernels=True
) -> MemoryPlan:
    """Memory and speed of ``layout`` (default: the config's own, :func:`~maws_scale.parallel.layout.derive_layout`
    on ``hw.gpus``; others: :func:`candidate`) for ``cfg`` on ``hw``."""
    layout = layout or derive_layout(cfg, hw.gpus)
    if layout.world_size != hw.gpus:
        raise ConfigError(f"the layout is for {layout.world_size} GPUs, the hardware has {hw.gpus}")
    lcfg = layout_config(cfg, layout)
    layout = derive_layout(lcfg, hw.gpus)  # exactly what make_plan derives for the config this plan is of
    classes = resolve_classes(lcfg, num_classes)
    return _plan(lcfg, hw, layout, classes, fused_kernels)


def _plan(lcfg: RunConfig, hw: Hardware, layout: Layout, classes: int | None, fused_kernels: bool) -> MemoryPlan:
    """The memory plan of ``layout`` (derived from ``lcfg``, the config with that layout)."""
    tp, dp = layout.tp, layout.dp
    notes = [] if layout.batch_problem() is None else [layout.batch_problem()]
    facts = model_facts(lcfg, classes)
    inv = facts.inventory.at(tp)
    zs = zero_settings(lcfg, dp, inv, hw.device_type)
    states = _states(inv, dp, zs)
    act = estimate(lcfg, classes, tp=tp, fused_kernels=fused_kernels)
    fp8_per_sample, fp8_fixed = fp8_memory(lcfg, layout, act)
    plan = MemoryPlan(
        model=lcfg.model.name,
        stage=lcfg.stage,
        layout=layout,
        gpus=hw.gpus,
        dp=dp,
        grad_accum=layout.grad_accum,
        params_total=inv.full_params,
        params_per_gpu=inv.numel,
        head_params_per_gpu=inv.head_numel(),
        states=states,
        activations_per_sample=act.per_sample + fp8_per_sample,
        activation=act,
        flops_per_sample=facts.flops_per_sample,
        flops_per_step=facts.flops_per_sample * lcfg.train.global_batch,
        usable=hw.usable,
        global_batch=lcfg.train.global_batch,
        host_limit=hw.host_per_gpu,
        speed=estimate_speed(lcfg, hw, layout, inv, zs, facts.flops_parts, act),
        notes=notes,
        fp8_fixed=fp8_fixed,
    )
    if layout.tp > hw.gpus_per_node:
        plan.notes.append(f"tp={layout.tp} spans nodes ({hw.gpus_per_node} GPUs per node): TP all-reduces leave NVLink")
    return plan


def fp8_linear_flops(cfg: RunConfig, layout: Layout, tokens: int) -> int:
    """Forward FLOPs per sample of the encoder Linears ``parallel.fp8`` converts (``layout.fp8_layers``)."""
    shapes = encoder_linear_shapes(cfg.spec.width, cfg.spec.mlp_hidden)
    return cfg.spec.depth * sum(2 * tokens * shapes[name][0] * shapes[name][1] for name in layout.fp8_layers)


def fp8_memory(cfg: RunConfig, layout: Layout, act: ActivationEstimate) -> tuple[float, int]:
    """FP8 workspace (module docstring): (bytes per sample, fixed bytes); (0, 0) without FP8."""
    if not layout.fp8_layers:
        return 0.0, 0
    hidden, width = cfg.spec.mlp_hidden // layout.tp, cfg.spec.width
    return float(FP8_BYTES_PER_HIDDEN * act.tokens_encoder * hidden), 4 * width * hidden


def estimate_speed(
    cfg: RunConfig,
    hw: Hardware,
    layout: Layout,
    inv: Inventory,
    zs: ZeroSettings,
    parts: dict[str, int],
    act: ActivationEstimate,
) -> Speed:
    """The speed model of the module docstring."""
    tp, micro, dp = layout.tp, layout.micro_batch, layout.dp
    samples = cfg.train.global_batch / dp  # per data-parallel rank per step
    micro_steps = max(1.0, samples / micro)
    decoder_split = layout.decoder_sharded
    split = parts["encoder"] + parts["head"] + (parts["decoder"] if decoder_split else 0)
    replicated = parts["patch_embed"] + parts["pool"] + (0 if decoder_split else parts["decoder"])
    fwd_per_gpu = samples * (split / tp + replicated)
    enc_share, dec_share = act.recomputed  # the share of each stack's block matmuls run again
    recompute = samples * (
        enc_share * parts["encoder"] / tp + dec_share * parts["decoder"] / (tp if decoder_split else 1)
    )
    work = 3 * fwd_per_gpu + recompute
    # the FP8 matmuls (forward, backward, and the recomputed share) take 1/speed-up the time: bf16-equivalent work
    fp8 = samples * fp8_linear_flops(cfg, layout, parts["tokens"]) / tp * (3 + enc_share)
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
        rerun = 1.0 if layout.recompute == "selective_op" else enc_share
        count = (4 + 2 * rerun) * cfg.spec.depth
        exposed += micro_steps * count * per_allreduce / (hw.intra_node_gbps * 1e9)
        if decoder_split:
            decoder = cfg.decoder
            per_dec = micro * act.tokens_decoder * decoder.width * a * 2 * (tp - 1) / tp
            rerun = 1.0 if layout.recompute == "selective_op" else dec_share
            exposed += micro_steps * (4 + 2 * rerun) * decoder.depth * per_dec / (hw.intra_node_gbps * 1e9)
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


def best_micro_batch(plan: MemoryPlan, global_batch: int, allowed: Callable[[int], bool] | None = None) -> int:
    """Largest micro-batch that fits, divides the per-rank share of ``global_batch`` and is ``allowed`` (e.g. by
    FP8's shape rule); 0 if none."""
    limit = plan.max_micro_batch()
    fits = (m for m in valid_micro_batches(global_batch, plan.dp) if m <= limit)
    return next((m for m in fits if allowed is None or allowed(m)), 0)


CHECKPOINTING_MODES = ("none", "selective_op", "every_k:4", "every_k:2", "full")


def candidate_layouts(cfg: RunConfig, hw: Hardware) -> list[Layout]:
    """Every layout :mod:`maws_scale.parallel.layout` allows: ZeRO stage (:func:`zero_stages`) × TP (a power of two
    within a node that splits the heads, MLP width and GPU count) × checkpointing (:data:`CHECKPOINTING_MODES`) ×
    offload (:func:`offload_modes`), at micro-batch 1 (:func:`search` fills in the largest that fits)."""
    spec = cfg.spec
    tps = [t for t in range(1, min(hw.gpus, hw.gpus_per_node) + 1) if t & (t - 1) == 0 and _splits(spec, t, hw.gpus)]
    out = []
    probe = next(m for m in range(1, 17) if fp8_allows_micro_batch(cfg, m))  # 1, or FP8's smallest valid micro-batch
    for zero in zero_stages(cfg.parallel.precision, cfg.parallel.grad_accum_dtype):
        for tp in tps:
            for ckpt in CHECKPOINTING_MODES:
                if selective_compile_problem(ckpt, cfg.model.compile):  # refused at config check: never proposed
                    continue
                for offload in offload_modes(zero):
                    out.append(candidate(cfg, hw.gpus, zero, tp, ckpt, offload, probe))
    return out


def _splits(spec: Any, tp: int, gpus: int) -> bool:
    try:
        check_tensor_split(spec.heads, spec.mlp_hidden, tp, "the model")
        check_world_split(gpus, tp)
    except ConfigError:
        return False
    return True


@dataclass
class SearchRow:
    plan: MemoryPlan
    micro_batch: int

    @property
    def fits(self) -> bool:
        return self.micro_batch > 0


def search(
    cfg: RunConfig,
    hw: Hardware,
    num_classes: int | None = None,
    fused_kernels: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[SearchRow]:
    """Every candidate layout at its largest fitting micro-batch, fastest (by the speed model) first, then least
    compute (recompute), then lowest peak; layouts that do not fit at any micro-batch come last. The model is built
    once (:func:`model_facts`); each layout is evaluated on it analytically. ``progress(i, n)`` after each layout."""
    rows = []
    layouts = candidate_layouts(cfg, hw)
    for i, layout in enumerate(layouts, 1):
        probe = plan_layout(cfg, hw, layout, num_classes, fused_kernels)
        micro = best_micro_batch(probe, cfg.train.global_batch, lambda m: fp8_allows_micro_batch(cfg, m))
        if micro:
            probe = plan_layout(cfg, hw, replace(layout, micro_batch=micro), num_classes, fused_kernels)
        rows.append(SearchRow(probe, micro))
        if progress is not None:
            progress(i, len(layouts))
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
