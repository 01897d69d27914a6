"""timm ``VisionTransformer`` and facebookresearch/mae ``MaskedAutoencoderViT`` state-dict naming.

``TIMM_VIT_B16`` is written out literally (timm ``vit_base_patch16_224``, 1000-class head, state_dict order);
``timm_vit_keys`` generalises it to any shape and is checked against the literal, so every size is tested against
timm's naming. The MAE naming follows ``models_mae.py`` (``mae_vit_base_patch16``).
"""

from __future__ import annotations

_B16_BLOCK = [
    ("norm1.weight", (768,)),
    ("norm1.bias", (768,)),
    ("attn.qkv.weight", (2304, 768)),
    ("attn.qkv.bias", (2304,)),
    ("attn.proj.weight", (768, 768)),
    ("attn.proj.bias", (768,)),
    ("norm2.weight", (768,)),
    ("norm2.bias", (768,)),
    ("mlp.fc1.weight", (3072, 768)),
    ("mlp.fc1.bias", (3072,)),
    ("mlp.fc2.weight", (768, 3072)),
    ("mlp.fc2.bias", (768,)),
]

TIMM_VIT_B16: list[tuple[str, tuple[int, ...]]] = [
    ("cls_token", (1, 1, 768)),
    ("pos_embed", (1, 197, 768)),
    ("patch_embed.proj.weight", (768, 3, 16, 16)),
    ("patch_embed.proj.bias", (768,)),
    *[(f"blocks.{i}.{name}", shape) for i in range(12) for name, shape in _B16_BLOCK],
    ("norm.weight", (768,)),
    ("norm.bias", (768,)),
    ("head.weight", (1000, 768)),
    ("head.bias", (1000,)),
]


def _block(prefix: str, dim: int, hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.norm1.weight", (dim,)),
        (f"{prefix}.norm1.bias", (dim,)),
        (f"{prefix}.attn.qkv.weight", (3 * dim, dim)),
        (f"{prefix}.attn.qkv.bias", (3 * dim,)),
        (f"{prefix}.attn.proj.weight", (dim, dim)),
        (f"{prefix}.attn.proj.bias", (dim,)),
        (f"{prefix}.norm2.weight", (dim,)),
        (f"{prefix}.norm2.bias", (dim,)),
        (f"{prefix}.mlp.fc1.weight", (hidden, dim)),
        (f"{prefix}.mlp.fc1.bias", (hidden,)),
        (f"{prefix}.mlp.fc2.weight", (dim, hidden)),
        (f"{prefix}.mlp.fc2.bias", (dim,)),
    ]


def timm_vit_keys(
    dim: int, depth: int, patch: int, img: int, hidden: int, chans: int = 3, num_classes: int = 0
) -> list[tuple[str, tuple[int, ...]]]:
    """timm VisionTransformer(class_token=True, global_pool='token') keys and shapes, in state_dict order."""
    tokens = 1 + (img // patch) ** 2
    keys = [
        ("cls_token", (1, 1, dim)),
        ("pos_embed", (1, tokens, dim)),
        ("patch_embed.proj.weight", (dim, chans, patch, patch)),
        ("patch_embed.proj.bias", (dim,)),
    ]
    for i in range(depth):
        keys += _block(f"blocks.{i}", dim, hidden)
    keys += [("norm.weight", (dim,)), ("norm.bias", (dim,))]
    if num_classes:
        keys += [("head.weight", (num_classes, dim)), ("head.bias", (num_classes,))]
    return keys


def mae_keys(
    dim: int, depth: int, patch: int, img: int, hidden: int, dec_dim: int, dec_depth: int, chans: int = 3
) -> list[tuple[str, tuple[int, ...]]]:
    """facebookresearch/mae MaskedAutoencoderViT keys and shapes (mlp_ratio 4 for the decoder too)."""
    tokens = 1 + (img // patch) ** 2
    enc = timm_vit_keys(dim, depth, patch, img, hidden, chans)
    keys = [
        enc[0],
        enc[1],
        ("mask_token", (1, 1, dec_dim)),
        ("decoder_pos_embed", (1, tokens, dec_dim)),
        *enc[2:],
        ("decoder_embed.weight", (dec_dim, dim)),
        ("decoder_embed.bias", (dec_dim,)),
    ]
    for i in range(dec_depth):
        keys += _block(f"decoder_blocks.{i}", dec_dim, 4 * dec_dim)
    keys += [
        ("decoder_norm.weight", (dec_dim,)),
        ("decoder_norm.bias", (dec_dim,)),
        ("decoder_pred.weight", (patch * patch * chans, dec_dim)),
        ("decoder_pred.bias", (patch * patch * chans,)),
    ]
    return keys
