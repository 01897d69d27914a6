"""``parallel.fp8``: FP8 matmuls (torchao float8, dynamic tensor-wise or row-wise scaling) in the encoder's blocks.

Converted: every ``nn.Linear`` of the encoder's transformer blocks (``blocks.N.attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``: nearly all of a ViT's FLOPs) whose in and out features are multiples of 16 (what the FP8
GEMM, ``torch._scaled_mm``, needs). Kept in bf16/fp32, and why:

* ``patch_embed.proj``: a convolution on raw pixels (torchao converts Linear only); the first layer, where input
  quantisation error enters every token, for <1 % of the FLOPs;
* ``head`` (WSP classifier) and ``attn_pool``: the logits over the whole vocabulary feed the softmax directly, and
  the head sees one token per image (tiny FLOP share);
* the MAE decoder (``decoder_embed``, ``decoder_blocks``, ``decoder_pred``): ``decoder_pred`` regresses the
  normalised pixels the loss is measured on, and the decoder is a small share of the step at MAWS sizes.

The weights stay ordinary parameters with the same names, so checkpoints, ZeRO partitioning and ``consolidated.pt``
do not change. FP8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper); ``parallel.fp8_emulate``
runs the same casts with high-precision matmuls (CPU tests, no speed-up).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import warnings

import torch
from torch import nn

from maws_scale.config import ConfigError, RunConfig
from maws_scale.parallel.layout import FP8_MULTIPLE, fp8_convertible

log = logging.getLogger("maws_scale.parallel")

MIN_CAPABILITY = (8, 9)
_ENCODER_BLOCK = re.compile(r"(^|\.)blocks\.\d+\.")  # the encoder's blocks; not ``decoder_blocks.N``


class Fp8EagerWarning(UserWarning):
    """``parallel.fp8`` with ``model.compile=none``: eager float8 casts are separate kernels, usually slower than
    bf16."""


class Fp8NoLayersWarning(UserWarning):
    """``parallel.fp8`` is on but no layer qualifies (widths not multiples of 16): the run trains in high precision."""


def fp8_layer(module: nn.Module, fqn: str) -> bool:
    """True for the Linear layers FP8 converts (see the module docstring)."""
    return (
        isinstance(module, nn.Linear)
        and _ENCODER_BLOCK.search(fqn) is not None
        and fp8_convertible(module.in_features, module.out_features)
    )


def fp8_unsupported(device: torch.device | str, emulate: bool) -> str | None:
    """Why FP8 training cannot run on ``device`` (None when it can)."""
    device = torch.device(device)
    if emulate:
        return None
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"FP8 matmuls need a CUDA GPU of compute capability >= 8.9; this run is on {device}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"FP8 matmuls need compute capability >= 8.9; {torch.cuda.get_device_name(device)} has {capability}"
    return None


def encoder_tokens(cfg: RunConfig) -> int:
    """Tokens per image through the encoder's blocks: the class token plus every patch (WSP) or the visible ones
    (MAE: ``int(L * (1 - mask_ratio))``, as the masking keeps)."""
    length = cfg.spec.num_patches(cfg.img_size)
    return 1 + (int(length * (1 - cfg.mae.mask_ratio)) if cfg.stage == "mae" else length)


def fp8_allows_micro_batch(cfg: RunConfig, micro_batch: int) -> bool:
    """Whether ``micro_batch`` × encoder tokens suits ``cfg``'s FP8 matmuls (always true without FP8 or emulated)."""
    if cfg.parallel.fp8 == "none" or cfg.parallel.fp8_emulate:
        return True
    return micro_batch * encoder_tokens(cfg) % FP8_MULTIPLE == 0


def fp8_micro_batch_problem(cfg: RunConfig) -> str | None:
    """Why ``cfg``'s micro-batch cannot run FP8 (None when it can). The weight-gradient matmul of a converted
    Linear has the inner dimension micro-batch × encoder tokens (65 for ViT/14 MAE at 224 px, 257 for WSP: odd), and
    ``torch._scaled_mm`` needs a multiple of 16 there, so any other micro-batch raises on the first backward.
    ``parallel.fp8_emulate`` runs high-precision matmuls, which take any shape."""
    if fp8_allows_micro_batch(cfg, cfg.train.micro_batch):
        return None
    tokens = encoder_tokens(cfg)
    rows = cfg.train.micro_batch * tokens
    step = FP8_MULTIPLE // math.gcd(FP8_MULTIPLE, tokens)
    return (
        f"parallel.fp8={cfg.parallel.fp8}: train.micro_batch={cfg.train.micro_batch} × {tokens} encoder tokens = "
        f"{rows} rows, not a multiple of {FP8_MULTIPLE} (FP8 weight gradients, torch._scaled_mm); use a "
        f"train.micro_batch that is a multiple of {step}, or parallel.fp8=none"
    )


def float8_config(recipe: str, emulate: bool = False):
    """torchao's ``Float8LinearConfig`` for ``tensorwise`` or ``rowwise`` dynamic scaling."""
    try:
        from torchao.float8 import Float8LinearConfig
    except ImportError as err:
        raise ConfigError(
            f"parallel.fp8={recipe} needs torchao (pip install 'maws-scale[fp8]'): {type(err).__name__}: {err}"
        ) from None
    return dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=emulate)


def apply_fp8(model: nn.Module, cfg: RunConfig, device: torch.device | str) -> int:
    """Convert the encoder's block Linears of ``model`` to torchao ``Float8Linear`` in place; → how many.

    Refused at set-up (ConfigError) where the device cannot run FP8 and ``parallel.fp8_emulate`` is off, or
    torchao is missing; one :class:`Fp8NoLayersWarning` when no layer qualifies."""
    recipe = cfg.parallel.fp8
    if recipe == "none":
        return 0
    reason = fp8_unsupported(device, cfg.parallel.fp8_emulate)
    if reason is not None:
        raise ConfigError(f"parallel.fp8={recipe}: {reason}; set parallel.fp8=none")
    config = float8_config(recipe, emulate=cfg.parallel.fp8_emulate)
    from torchao.float8 import convert_to_float8_training

    chosen = [name for name, module in model.named_modules() if fp8_layer(module, name)]
    if not chosen:
        warnings.warn(
            f"parallel.fp8={recipe}: no encoder Linear has in/out features that are multiples of {FP8_MULTIPLE}; "
            "the run trains in high precision",
            Fp8NoLayersWarning,
            stacklevel=2,
        )
        return 0
    convert_to_float8_training(model, module_filter_fn=fp8_layer, config=config)
    if cfg.model.compile == "none":
        warnings.warn(
            f"parallel.fp8={recipe} with model.compile=none: eager float8 runs every cast and scale as its own kernel "
            "and is usually slower than bf16; set model.compile=blocks to fuse them",
            Fp8EagerWarning,
            stacklevel=2,
        )
    log.info("parallel.fp8=%s: %d Linear layers converted (emulate=%s)", recipe, len(chosen), cfg.parallel.fp8_emulate)
    return len(chosen)
