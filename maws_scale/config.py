"""RunConfig: the typed, validated description of everything a run does.

Load from YAML, apply dotted overrides (``model.name=vit_l16 optim.lr=1e-3``), and refuse bad input before any
process starts, with the offending key named (and a 'did you mean' for unknown keys).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from typing import Annotated, Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from maws_scale.files import read_regular
from maws_scale.models.recompute_modes import parse_mode as parse_recompute
from maws_scale.models.recompute_modes import selective_compile_problem
from maws_scale.models.registry import DecoderShape, UnknownModelError, ViTSpec, get_spec


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and the reason."""


MAX_SEED = 2**31  # seeds are offset by rank and step and fed to torch and numpy generators: keep them small
MAX_IMG_SIZE = 8192  # pixels per side
MAX_WIDTH = 65536  # embedding width (the largest MAWS model, ViT-6.5B, has 4096)


def _plain_values(model: type[BaseModel], name: str, value: Any) -> Any:
    """Refuse what pydantic's lax mode would turn into something else: ``true`` for a number (it becomes 1) and
    text that is not UTF-8 (a lone surrogate from a non-UTF-8 command-line byte cannot be logged or stored)."""
    annotation = model.model_fields[name].annotation
    if isinstance(value, bool) and annotation is not bool and bool not in typing.get_args(annotation):
        raise ValueError(f"expected a number, not {str(value).lower()}")
    for text in value if isinstance(value, list | tuple) else value.values() if isinstance(value, dict) else [value]:
        if isinstance(text, str) and not is_utf8(text):
            raise ValueError(f"{text!r} is not UTF-8 text")
    return value


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (a lone surrogate, such as JSON's ``"\\ud800"``, does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain(cls, value: Any, info: ValidationInfo) -> Any:
        return _plain_values(cls, info.field_name, value)


class ModelConfig(_Section):
    name: str = Field("vit_tiny_p4", description="registry preset (maws-scale models); the shape keys override it")
    width: int | None = Field(None, gt=0, le=MAX_WIDTH, description="embedding width; default: the preset's")
    depth: int | None = Field(None, gt=0, le=1024, description="transformer blocks; default: the preset's")
    heads: int | None = Field(None, gt=0, description="attention heads (must divide width); default: the preset's")
    mlp_ratio: float | None = Field(None, gt=0.0, le=64.0, description="MLP hidden / width; default: the preset's")
    patch: int | None = Field(None, gt=0, description="patch side in pixels; default: the preset's")
    img_size: int | None = Field(
        None, gt=0, le=MAX_IMG_SIZE, description="input side in pixels; default: the model's own"
    )
    in_chans: Literal[3] = Field(3, description="image channels: the loaders decode every image to RGB")
    attention: Literal["auto", "xformers", "sdpa", "math"] = "auto"
    pool: Literal["cls", "gap", "map", "max"] = "cls"
    fc_norm: bool = Field(
        False, description="LayerNorm after pooling instead of before (MAE fine-tuning's global pool: pool=gap)"
    )
    qk_norm: bool = False
    parallel_block: bool = False
    qkv_bias: bool = True
    norm_bias: bool = True
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    kernels: Literal["auto", "triton", "torch"] = "auto"
    compile: Literal["none", "blocks", "full"] = Field(
        "none", description="torch.compile: each transformer block (regional), the whole model, or nothing"
    )
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(
        "inductor", description="torch.compile backend (aot_eager / eager: debugging, CPU tests)"
    )


class MAEConfig(_Section):
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0)
    decoder_width: int | None = Field(None, gt=0, description="default: the registry's (512 for MAWS sizes)")
    decoder_depth: int | None = Field(None, gt=0)
    decoder_heads: int | None = Field(None, gt=0)
    norm_pix_loss: bool = True


class WSPConfig(_Section):
    num_classes: int | None = Field(None, gt=1, description="default: size of the vocabulary")
    vocab: str | None = Field(None, description="vocab.json; default: <data.path>/vocab.json")
    init: Literal["mae", "random"] = "mae"
    init_from: str | None = Field(None, description="MAE checkpoint for init=mae (the pipeline fills it)")


class FinetuneConfig(_Section):
    """Stage finetune: a classifier trained end to end from a pretrained encoder (see docs/training.md)."""

    init: Literal["checkpoint", "random"] = "checkpoint"
    init_from: str | None = Field(
        None, description="MAE, WSP, MAWS or CLIP checkpoint of this toolkit, or a timm/MAWS-named state dict"
    )
    num_classes: int | None = Field(None, gt=1, description="default: the class list of data.path's manifest")
    layer_decay: float = Field(1.0, gt=0.0, le=1.0, description="layer-wise LR decay (BEiT/MAE); 1 = off")
    mixup: float = Field(0.0, ge=0.0, description="mixup Beta(alpha, alpha); 0 = off")
    cutmix: float = Field(0.0, ge=0.0, description="cutmix Beta(alpha, alpha); 0 = off")
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="probability a batch is mixed at all")
    switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="cutmix instead of mixup when both are on")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    randaug_ops: int = Field(0, ge=0, description="RandAugment operations per image (2 in DeiT/MAE); 0 = off")
    randaug_magnitude: float = Field(9.0, ge=0.0, le=10.0, description="RandAugment magnitude (0-10), std 0.5")
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="probability of one erased box per image")
    ema: float = Field(0.0, ge=0.0, lt=1.0, description="EMA of the weights, decay per step (e.g. 0.9999); 0 = off")
    eval_every: int = Field(0, ge=0, description="top-1/top-5 on data.eval_path every N steps; 0 = at the end only")
    eval_transform: Literal["center_crop", "square_resize"] = Field(
        "center_crop", description="held-out images: centre crop of crop_pct then resize, or the whole image squashed"
    )
    crop_pct: float = Field(0.875, gt=0.0, le=1.0, description="center_crop: side of the crop / shorter side")


class ClipConfig(_Section):
    """Stages clip, mae_clip and lit (see docs/clip.md)."""

    text_model: str = Field("text_tiny", description="text tower (maws-scale models: text_tiny … xlmr_l)")
    text_vocab: int | None = Field(None, gt=0, description="default: the tower's, else the tokenizer's vocab size")
    context_length: int | None = Field(None, gt=2, description="position-table length; default: the tower's")
    embed_dim: int | None = Field(None, gt=0, description="shared embedding size; default: the text width")
    clip_weight: float = Field(1.0, ge=0.0)
    mae_weight: float = Field(1.0, ge=0.0, description="mae_clip: weight of the MAE reconstruction loss")
    mask_clip_input: bool = Field(True, description="mae_clip: embed the images from the same masked forward")
    image_init_from: str | None = Field(None, description="lit: MAE, WSP or MAWS checkpoint (the pipeline fills it)")
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "{}"],
        min_length=1,
        description="zero-shot prompts; each holds one '{}' for the class name",
    )
    class_names: list[str] | None = Field(None, description="zero-shot class names by label; default: eval tags")

    @field_validator("templates")
    @classmethod
    def _one_slot_per_template(cls, templates: list[str]) -> list[str]:
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"every template needs exactly one '{{}}' for the class name: {bad}")
        return templates


class DataConfig(_Section):
    path: str | None = Field(None, description="Arrow dataset directory (holds manifest.json)")
    eval_path: str | None = Field(None, description="labeled Arrow set for evaluation")
    num_workers: int = Field(2, ge=0)
    shuffle_buffer: int = Field(2048, ge=1)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    verify_checksums: bool = Field(False, description="sha256 each shard when a loader worker opens it (slow at scale)")
    synthetic: bool = Field(False, description="random tensors instead of data (throughput benchmarks only)")
    decode: Literal["cpu", "gpu"] = Field(
        "cpu", description="gpu: JPEGs decoded, cropped and resized on the GPU (torchvision; docs/data.md)"
    )

    @model_validator(mode="after")
    def _check_crop(self) -> DataConfig:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        return self


class OptimConfig(_Section):
    name: Literal["adamw"] = "adamw"
    lr: float | None = Field(None, gt=0.0, description="absolute peak LR; default base_lr * global_batch / 256")
    base_lr: float = Field(1.5e-4, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.05, ge=0.0)
    eps: float = Field(1e-8, gt=0.0)
    impl: Literal["auto", "apex", "torch", "deepspeed"] = "auto"

    @model_validator(mode="after")
    def _check_betas(self) -> OptimConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must each lie in [0, 1), got {list(self.betas)}")
        return self


class ScheduleConfig(_Section):
    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="used when warmup_steps is unset")
    min_lr: float = Field(0.0, ge=0.0)


DEFAULT_STEPS = 1000
SHAPE_KEYS = ("width", "depth", "heads", "mlp_ratio", "patch")


class TrainConfig(_Section):
    global_batch: int = Field(64, gt=0)
    micro_batch: int = Field(32, gt=0)
    grad_accum: int | None = Field(None, gt=0, description="default: global_batch / (micro_batch * dp)")
    steps: int | None = Field(None, gt=0, description="optimizer steps (default 1000 unless epochs is set)")
    epochs: float | None = Field(None, gt=0.0)
    clip_grad: float = Field(0.0, ge=0.0, description="max grad norm; 0 = off")
    log_every: int = Field(10, gt=0)
    nan_tolerance: int = Field(3, gt=0, description="consecutive non-finite steps before rolling back")

    @model_validator(mode="after")
    def _check_length(self) -> TrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"set train.steps ({self.steps}) or train.epochs ({self.epochs}), not both")
        if self.steps is None and self.epochs is None:
            object.__setattr__(self, "steps", DEFAULT_STEPS)
        if self.micro_batch > self.global_batch:
            raise ValueError(f"micro_batch {self.micro_batch} exceeds global_batch {self.global_batch}")
        return self


class ParallelConfig(_Section):
    world_size: int | None = Field(None, gt=0, description="default: WORLD_SIZE of the launcher")
    zero_stage: Literal[0, 1, 2, 3] = 1
    offload: Literal["none", "optimizer", "all"] = "none"
    tp: int = Field(1, gt=0)
    activation_checkpointing: str = Field(
        "none",
        description="none | full | every_k:<k> | selective_op (true/false = full/none); "
        "see maws_scale.models.recompute",
    )
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    grad_accum_dtype: Literal["fp32", "model"] = Field(
        "fp32", description="dtype gradients accumulate in under bf16/fp16 (model = that dtype; ZeRO-0 needs model)"
    )
    comm_dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="dtype gradients are reduced in")
    wait_minutes: float = Field(
        1440.0, gt=0, description="how long ranks wait (gloo) for rank-0 evaluation, conversion, consolidation"
    )
    ds_config: str | None = Field(None, description="DeepSpeed template; default ds_configs/zero<stage>.json")
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    fp8: Literal["none", "tensorwise", "rowwise"] = Field(
        "none", description="FP8 matmuls (torchao float8) in the encoder's linear layers; needs CUDA capability >= 8.9"
    )
    fp8_emulate: bool = Field(False, description="FP8 casts with high-precision matmuls (tests on CPU; no speed-up)")

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _checkpointing_mode(cls, value: Any) -> str:
        return parse_recompute(value)


class TrackingConfig(_Section):
    enabled: bool = True
    uri: str | None = Field(None, description="default sqlite:///<output_dir>/mlflow.db")
    experiment: str = Field("maws-scale", min_length=1, pattern=r"\S")
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    peak_tflops: float | None = Field(None, gt=0.0, description="override the datasheet peak for MFU")
    system_metrics_s: float = Field(
        30.0, ge=0.0, description="seconds between system/ metric samples (CPU, memory, GPU; needs psutil); 0 = off"
    )


class CheckpointConfig(_Section):
    dir: str | None = Field(None, description="default <output_dir>/<stage>/checkpoints")
    every: int = Field(0, ge=0, description="save every N steps; 0 = only at the end")
    keep_last: int = Field(3, gt=0)
    resume: str | None = Field(None, description="'auto' (newest complete) or a checkpoint path")


class EvalConfig(_Section):
    enabled: bool = True
    knn_k: int = Field(20, gt=0)
    few_shot: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [1, 5, 10], description="shots per class (distinct, each at least 1)"
    )
    seeds: int = Field(3, gt=0)
    max_train: int | None = Field(None, gt=0, description="cap on training samples for the probe")
    train_path: str | None = Field(None, description="labeled set to fit probes on; default: split data.eval_path")

    @field_validator("few_shot")
    @classmethod
    def _distinct_shots(cls, shots: list[int]) -> list[int]:
        if len(set(shots)) != len(shots):
            raise ValueError(f"each number of shots once, got {shots}")
        return shots


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "mae": MAEConfig,
    "wsp": WSPConfig,
    "clip": ClipConfig,
    "finetune": FinetuneConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
    "parallel": ParallelConfig,
    "tracking": TrackingConfig,
    "checkpoint": CheckpointConfig,
    "eval": EvalConfig,
}
STAGES = ("mae", "wsp", "clip", "mae_clip", "lit", "finetune")
StageName = Literal["mae", "wsp", "clip", "mae_clip", "lit", "finetune"]


class RunConfig(BaseModel):
    """Everything a run does. ``stages`` holds per-stage dotted overrides used by the MAE → WSP pipeline."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    stage: StageName = "mae"
    seed: int = Field(0, ge=0, lt=MAX_SEED)
    output_dir: str = Field("runs/default", min_length=1, pattern=r"\S", description="never '' (the current folder)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    mae: MAEConfig = Field(default_factory=MAEConfig)
    wsp: WSPConfig = Field(default_factory=WSPConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stages: dict[StageName, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("seed", "output_dir", mode="before")
    @classmethod
    def _plain(cls, value: Any, info: ValidationInfo) -> Any:
        return _plain_values(cls, info.field_name, value)

    @model_validator(mode="after")
    def _check_shapes(self) -> RunConfig:
        try:
            spec = self.spec
        except UnknownModelError as err:
            raise ValueError(f"model.name: {err}") from None
        if spec.width % spec.heads:
            raise ValueError(f"model.heads={spec.heads} does not divide model.width={spec.width}")
        if spec.mlp_hidden < 1:
            raise ValueError(f"model.mlp_ratio={spec.mlp_ratio} gives an empty MLP at width {spec.width}")
        from maws_scale.parallel.layout import check_offload, check_tensor_split  # the layout rules, stated once

        tp = self.parallel.tp
        check_tensor_split(spec.heads, spec.mlp_hidden, tp, self.model_label)
        img = self.model.img_size or spec.img_size
        if img % spec.patch:
            raise ValueError(f"model.img_size={img} is not a multiple of the patch size {spec.patch}")
        check_offload(self.parallel.zero_stage, self.parallel.offload)
        if self.parallel.fp8 != "none" and tp > 1:
            raise ValueError(
                f"parallel.fp8={self.parallel.fp8} with parallel.tp={tp}: the tensor-parallel layers are not converted "
                "to FP8; use parallel.fp8=none or parallel.tp=1"
            )
        if self.parallel.fp8 != "none" and self.parallel.precision == "fp16":
            raise ValueError("parallel.fp8 with parallel.precision=fp16: FP8 training runs in bf16 (or fp32); use bf16")
        if self.stage == "finetune" and self.finetune.ema > 0 and (self.parallel.zero_stage == 3 or tp > 1):
            raise ValueError(
                f"finetune.ema={self.finetune.ema} needs the whole weights on every rank: parallel.zero_stage <= 2 "
                "and parallel.tp=1 (or set finetune.ema=0)"
            )
        problem = selective_compile_problem(self.parallel.activation_checkpointing, self.model.compile)
        if problem:
            raise ValueError(problem)
        if self.parallel.fp8 != "none":
            from maws_scale.parallel.fp8 import fp8_micro_batch_problem  # the rule lives with the FP8 conversion

            problem = fp8_micro_batch_problem(self)
            if problem:
                raise ValueError(problem)
        decoder = self.decoder
        if decoder.width % decoder.heads:
            raise ValueError(f"mae.decoder_width={decoder.width} is not divisible by mae.decoder_heads={decoder.heads}")
        return self

    @model_validator(mode="after")
    def _check_clip(self) -> RunConfig:
        from maws_scale.clip_checks import check_clip  # the image-text stages' pure checks (their data: preflight)

        check_clip(self)
        return self

    # ----- derived values -------------------------------------------------------------------------------------
    @property
    def spec(self) -> ViTSpec:
        """The shape of the encoder: the preset ``model.name`` with ``model.width/depth/heads/mlp_ratio/patch``."""
        m = self.model
        shape = {k: getattr(m, k) for k in SHAPE_KEYS if getattr(m, k) is not None}
        return dataclasses.replace(get_spec(m.name), **shape) if shape else get_spec(m.name)

    @property
    def decoder(self) -> DecoderShape:
        """The MAE decoder: ``mae.decoder_width/depth/heads``, else the model preset's (the one place they resolve)."""
        mae = self.mae
        return self.spec.decoder_shape(mae.decoder_width, mae.decoder_depth, mae.decoder_heads)

    @property
    def model_ref(self) -> str | ViTSpec:
        """What the builders take: ``model.name``, or the full shape when shape keys override the preset."""
        return self.spec if any(getattr(self.model, k) is not None for k in SHAPE_KEYS) else self.model.name

    @property
    def model_label(self) -> str:
        """``model.name``, with the shape keys that override the preset (``vit_tiny_p4(width=64,depth=2)``)."""
        m = self.model
        shape = ",".join(f"{k}={getattr(m, k):g}" for k in SHAPE_KEYS if getattr(m, k) is not None)
        return f"{m.name}({shape})" if shape else m.name

    @property
    def img_size(self) -> int:
        return self.model.img_size or self.spec.img_size

    def batch_layout(self, world_size: int | None = None) -> tuple[int, int]:
        """Return (data_parallel_size, grad_accum) for ``world_size`` ranks, or raise ConfigError naming the key."""
        from maws_scale.parallel.layout import derive_layout

        world = world_size or self.parallel.world_size or int(os.environ.get("WORLD_SIZE", "1"))
        return derive_layout(self, world).accumulation()

    def peak_lr(self) -> float:
        """The MAE recipe's LR scaling: ``optim.lr`` if set, else base_lr × global_batch / 256."""
        return self.optim.lr if self.optim.lr is not None else self.optim.base_lr * self.train.global_batch / 256

    def for_stage(self, stage: str) -> RunConfig:
        """This config with ``stage`` selected and that stage's ``stages.<stage>`` overrides applied."""
        if stage not in STAGES:
            raise ConfigError(f"stage: unknown stage '{stage}' (known: {', '.join(STAGES)})")
        raw = self.model_dump(mode="json", exclude={"stages"})
        overrides = copy.deepcopy(self.stages.get(stage) or {})  # as given: a JSON dump would turn .inf into null
        raw["stage"] = stage
        for key, value in _flatten(overrides).items():
            _set_dotted(raw, key, value, origin=f"stages.{stage}")
        return _validate(raw, origin=f"stages.{stage}")

    def resolved(self) -> RunConfig:
        """The config a single-stage command runs: ``stages.<stage>`` applied when the config has that section."""
        return self.for_stage(self.stage) if self.stage in self.stages else self

    def check_standalone(self) -> None:
        """Checks for a single-stage run (``maws-scale train``); the pipeline fills ``wsp.init_from`` itself."""
        if self.stage == "wsp" and self.wsp.init == "mae" and not self.wsp.init_from:
            raise ConfigError("wsp.init_from: wsp.init=mae needs an MAE checkpoint here, or set wsp.init=random")
        if self.stage == "finetune" and self.finetune.init == "checkpoint" and not self.finetune.init_from:
            raise ConfigError(
                "finetune.init_from: finetune.init=checkpoint needs a checkpoint here, or set finetune.init=random"
            )
        if self.stage == "lit" and not self.clip.image_init_from:
            raise ConfigError(
                "clip.image_init_from: stage lit locks a pretrained image tower; give an MAE, WSP or MAWS checkpoint"
            )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ----- loading ----------------------------------------------------------------------------------------------------
class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one silently, and a
    second ``train:`` section would drop the first one's keys)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden by design
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"key '{key}' is given twice (lines {seen[key]}, {line})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse config YAML safely; raise yaml.YAMLError (with the line) for a key given twice in one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML file (or the defaults), apply ``key=value`` overrides, validate; raise ConfigError on bad input."""
    raw: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        try:
            text = read_regular(path).decode("utf-8")
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}); give a YAML config") from None
        try:
            raw = load_yaml(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    given: list[str] = []
    stage_sets: list[tuple[str, str, Any]] = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        stage, _, sub = key.removeprefix("stages.").partition(".")
        if key.startswith("stages.") and sub:  # one key of a stage section: set after the sections are flattened
            if stage not in STAGES:
                raise ConfigError(f"override: unknown stage 'stages.{stage}' (known: {', '.join(STAGES)})")
            _resolve_dotted(sub, origin=f"override stages.{stage}")
            stage_sets.append((stage, sub, _parse_value(value)))
            continue
        given.append(key)
        _set_dotted(raw, key, _parse_value(value), origin="override")
    _overrides_win_over_stages(raw, given)
    for stage, sub, value in stage_sets:
        stages = raw.setdefault("stages", {})
        if not isinstance(stages, dict):
            raise ConfigError(f"{origin}: stages: must be a mapping of stage -> overrides")
        section = stages.setdefault(stage, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{origin}: stages.{stage}: must be a mapping of key -> value")
        section[sub] = value
    config = _validate(raw, origin=origin)
    for stage in config.stages:  # every pipeline stage must be valid too, before anything starts
        config.for_stage(stage)
    return config


def _overrides_win_over_stages(raw: dict[str, Any], given: list[str]) -> None:
    """What the command line sets wins over ``stages.<stage>``: drop (or update) the stage keys it overrides.

    ``train.steps=20`` removes ``train.steps`` (and anything under it) from every stage section and updates a stage
    key that holds a mapping above it (``tracking.tags``). Stage sections come out flat (``{"train.steps": 300}``).
    Every command loads configs here, so train, pipeline, sweep, plan, bench, eval, launch and config show agree.
    """
    stages = raw.get("stages")
    if not isinstance(stages, dict):
        return
    for stage, section in list(stages.items()):
        if section is None or isinstance(section, dict):
            stages[stage] = _flatten(section or {})
    for key in given:
        for section in stages.values():
            if not isinstance(section, dict):
                continue
            for stage_key in list(section):
                if stage_key == key or stage_key.startswith(f"{key}."):
                    del section[stage_key]
                elif key.startswith(f"{stage_key}.") and isinstance(section[stage_key], dict):
                    node = section[stage_key] = copy.deepcopy(section[stage_key])
                    *path, last = key[len(stage_key) + 1 :].split(".")
                    for part in path:
                        node = node.setdefault(part, {})
                    node[last] = _get_dotted(raw, key)


def _get_dotted(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node[part]
    return copy.deepcopy(node)


def _parse_value(text: str) -> Any:
    try:
        return load_yaml(text) if text.strip() else ""
    except (yaml.YAMLError, UnicodeEncodeError):  # not YAML (or not UTF-8: refused by the schema): the text itself
        return text


def _validate(raw: dict[str, Any], origin: str) -> RunConfig:
    _check_keys(raw, RunConfig, prefix="", origin=origin)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        where = f"{origin}: " if origin else ""
        raise ConfigError(f"{where}{key + ': ' if key else ''}{message}") from None


def _check_keys(raw: Any, model: type[BaseModel], prefix: str, origin: str) -> None:
    """Refuse unknown keys with their full dotted name and the closest known key."""
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f" (known: {', '.join(fields)})"
            raise ConfigError(f"{origin}: unknown key '{dotted}'{hint}")
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_keys(value, annotation, prefix=f"{dotted}.", origin=origin)
        elif key == "stages" and prefix == "" and isinstance(value, dict):
            for stage, stage_overrides in value.items():
                if stage not in STAGES:
                    raise ConfigError(f"{origin}: unknown stage 'stages.{stage}' (known: {', '.join(STAGES)})")
                if stage_overrides is not None and not isinstance(stage_overrides, dict):
                    raise ConfigError(
                        f"{origin}: stages.{stage} must be a mapping of overrides, got {type(stage_overrides).__name__}"
                    )
                for sub_key in _flatten(stage_overrides or {}):
                    _resolve_dotted(sub_key, origin=f"{origin}: stages.{stage}")


def _resolve_dotted(key: str, origin: str) -> None:
    model: type[BaseModel] = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.5)
            head = ".".join(parts[:i])
            hint = f"; did you mean '{head + '.' if head else ''}{close[0]}'?" if close else ""
            raise ConfigError(f"{origin}: unknown key '{key}'{hint}")
        annotation = fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif i < len(parts) - 1 and get_origin(annotation) is not dict:
            raise ConfigError(f"{origin}: '{'.'.join(parts[: i + 1])}' is a value, not a section (in '{key}')")
        else:
            return


def _set_dotted(raw: dict[str, Any], key: str, value: Any, origin: str) -> None:
    _resolve_dotted(key, origin=origin)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key in SECTIONS and not prefix:
            flat.update(_flatten(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
