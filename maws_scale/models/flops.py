"""Exact matmul FLOPs per sample (2·M·N·K per product) of the encoder, MAE decoder, pooling and head.

Counted: the patch-embedding convolution, every Linear, and attention's two T² products (q·kᵀ and p·v). Not counted:
norms, softmax, GELU, bias adds, the loss (element-wise, not matmul). A training step is forward + backward = 3 ×
forward (backward computes the input and weight gradients of every product). Numbers match
``torch.utils.flop_counter.FlopCounterMode`` with the ``math`` attention backend (tests/models/test_flops.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from maws_scale.models.registry import ViTSpec, get_spec

STAGES = ("mae", "wsp", "finetune", "encoder")


@dataclass(frozen=True)
class FlopShape:
    """The shapes FLOPs depend on."""

    width: int
    depth: int
    mlp_hidden: int
    patch: int
    img_size: int
    in_chans: int
    decoder_width: int
    decoder_depth: int
    decoder_mlp_hidden: int
    pool: str = "cls"
    num_classes: int = 0
    mask_ratio: float = 0.75

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch) ** 2

    @property
    def visible_tokens(self) -> int:
        """Encoder sequence length under MAE masking: class token + int(L · (1 − r)) patches."""
        return 1 + int(self.num_patches * (1 - self.mask_ratio))


def block_flops(tokens: int, width: int, mlp_hidden: int) -> int:
    """One transformer block at ``tokens`` tokens: qkv, q·kᵀ, p·v, proj, fc1, fc2."""
    linears = 2 * tokens * width * (3 * width + width + 2 * mlp_hidden)
    attention = 2 * 2 * tokens * tokens * width
    return linears + attention


def pool_flops(shape: FlopShape, tokens: int) -> int:
    """Matmul FLOPs of pooling: zero for cls/gap/max; the attention-pool head (one latent query) for map."""
    if shape.pool != "map":
        return 0
    d, h = shape.width, shape.mlp_hidden
    return 2 * d * d + 2 * tokens * d * 2 * d + 2 * 2 * tokens * d + 2 * d * d + 2 * 2 * d * h


def flop_shape(model_or_name: nn.Module | str, img_size: int | None = None, **overrides) -> FlopShape:
    """The :class:`FlopShape` of a built model (ViT or MAE) or a registry name (+ overrides: pool, num_classes,
    mask_ratio, decoder_width, decoder_depth)."""
    if isinstance(model_or_name, (str, ViTSpec)):
        spec = get_spec(model_or_name)
        decoder = spec.decoder_shape(overrides.pop("decoder_width", None), overrides.pop("decoder_depth", None))
        shape = FlopShape(
            width=spec.width,
            depth=spec.depth,
            mlp_hidden=spec.mlp_hidden,
            patch=spec.patch,
            img_size=img_size or spec.img_size,
            in_chans=spec.in_chans,
            decoder_width=decoder.width,
            decoder_depth=decoder.depth,
            decoder_mlp_hidden=decoder.mlp_hidden,
        )
    else:
        model = model_or_name
        dec_width = getattr(model, "decoder_embed_dim", 0)
        shape = FlopShape(
            width=model.embed_dim,
            depth=model.depth,
            mlp_hidden=int(model.embed_dim * model.mlp_ratio),
            patch=model.patch_size,
            img_size=model.img_size if img_size is None else img_size,
            in_chans=model.in_chans,
            decoder_width=dec_width,
            decoder_depth=getattr(model, "decoder_depth", 0),
            decoder_mlp_hidden=int(dec_width * model.mlp_ratio),
            pool=getattr(model, "global_pool", "cls"),
            num_classes=getattr(model, "num_classes", 0),
            mask_ratio=getattr(model, "mask_ratio", 0.75),
        )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(shape, **overrides)


def flops_breakdown(
    model_or_name: nn.Module | str,
    stage: str,
    img_size: int | None = None,
    mask_ratio: float | None = None,
    num_classes: int | None = None,
    decoder: bool = True,
    pool: str | None = None,
) -> dict[str, int]:
    """Forward matmul FLOPs per sample by part: patch_embed, encoder, decoder, pool, head (and ``tokens``, the
    encoder sequence length). ``stage``: ``mae`` (encoder on the visible tokens + decoder on all), ``wsp`` (encoder
    on all tokens + pool + head), ``encoder`` (features only). Defaults come from the model (or the registry)."""
    if stage not in STAGES:
        raise ValueError(f"stage: unknown stage '{stage}' for FLOPs (known: {', '.join(STAGES)})")
    if stage == "finetune":  # a classifier over every token, as in WSP
        stage = "wsp"
    shape = flop_shape(model_or_name, img_size, pool=pool, num_classes=num_classes, mask_ratio=mask_ratio)
    patches = shape.num_patches
    parts = {"patch_embed": 2 * patches * shape.in_chans * shape.patch**2 * shape.width}
    tokens = shape.visible_tokens if stage == "mae" else 1 + patches
    parts["encoder"] = shape.depth * block_flops(tokens, shape.width, shape.mlp_hidden)
    parts["decoder"] = parts["pool"] = parts["head"] = 0
    if stage == "mae" and decoder:
        if not shape.decoder_depth:
            raise ValueError("decoder FLOPs asked for, but the model has no MAE decoder; pass decoder=False")
        dw, full = shape.decoder_width, 1 + patches
        embed = 2 * tokens * shape.width * dw
        blocks = shape.decoder_depth * block_flops(full, dw, shape.decoder_mlp_hidden)
        pred = 2 * full * dw * shape.patch**2 * shape.in_chans
        parts["decoder"] = embed + blocks + pred
    if stage == "wsp":
        parts["pool"] = pool_flops(shape, tokens)
        parts["head"] = 2 * shape.width * shape.num_classes
    parts["tokens"] = tokens
    return parts


def forward_flops(model_or_name: nn.Module | str, stage: str, **kwargs) -> int:
    """Forward matmul FLOPs per sample (see :func:`flops_breakdown` for the arguments)."""
    parts = flops_breakdown(model_or_name, stage, **kwargs)
    return sum(v for k, v in parts.items() if k != "tokens")


def step_flops(
    model_or_name: nn.Module | str,
    stage: str,
    img_size: int | None = None,
    mask_ratio: float | None = None,
    num_classes: int | None = None,
    decoder: bool = True,
    pool: str | None = None,
) -> int:
    """Training-step (forward + backward = 3 × forward) matmul FLOPs per sample: the numerator of MFU.

    ``mask_ratio`` defaults to the model's own (0.75 for a registry name); ``num_classes``/``pool`` likewise."""
    return 3 * forward_flops(
        model_or_name,
        stage,
        img_size=img_size,
        mask_ratio=mask_ratio,
        num_classes=num_classes,
        decoder=decoder,
        pool=pool,
    )
