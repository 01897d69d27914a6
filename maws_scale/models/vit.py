"""The ViT encoder of the MAWS family, with timm ``VisionTransformer``'s parameter names and shapes.

Keys: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1+L, D), ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head`` (+ ``attn_pool.*`` for map pooling, ``attn.q_norm`` /
``attn.k_norm`` with QK-norm), so MAWS / MAE / timm checkpoints load strictly. ``gap`` / ``max`` pool after the final
``norm`` (timm with ``fc_norm=False``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maws_scale.models.encoder import TokenEncoder
from maws_scale.models.heads import AttentionPool, Pool
from maws_scale.models.init import (
    init_module_tensors,
    init_named_modules,
    init_tensor_,
    normal,
    tensor_generator,
    trunc_normal,
)
from maws_scale.models.layers import LN_EPS


class VisionTransformer(TokenEncoder):
    """Pre-norm ViT: the token encoder (``models/encoder.py``) → pool → ``head`` (Identity without classes)."""

    def __init__(self, *args: Any, num_classes: int = 0, pool: Pool = "cls", **kwargs: Any) -> None:
        super().__init__(*args, pool=pool, **kwargs)
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # ----- init -------------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """timm init of every parameter: trunc-normal(0.02) linears and pos-embed, xavier patch projection, unit
        LayerNorms, each tensor from its own generator keyed by ``init_seed`` and its name (:mod:`models.init`).
        Call again after materialising a meta-device model (``to_empty``)."""

        def own() -> None:
            init_tensor_(self.pos_embed, trunc_normal(0.02), tensor_generator(self.init_seed, "pos_embed"))
            init_tensor_(self.cls_token, normal(1e-6), tensor_generator(self.init_seed, "cls_token"))

        init_named_modules(self, self.init_seed, self.linear_init, own)

    @staticmethod
    def linear_init(weight: torch.Tensor, generator: torch.Generator) -> None:
        """The encoder's Linear weight init (timm): truncated normal, std 0.02."""
        nn.init.trunc_normal_(weight, std=0.02, generator=generator)

    # ----- forward ----------------------------------------------------------------------------------------------
    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool then ``head`` (Identity when ``num_classes == 0``)."""
        return self.head(self.pool(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images → pooled features (B, D), or logits (B, K) with a head."""
        return self.forward_head(self.forward_features(x))

    # ----- training helpers -------------------------------------------------------------------------------------
    def reset_head(self, num_classes: int) -> None:
        """Replace ``head`` by a fresh Linear(D, num_classes) (Identity for 0)."""
        device = self.pos_embed.device
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_module_tensors(self.head, "head.", self.init_seed, self.linear_init)


def init_module(module: nn.Module) -> None:
    """Init one module the timm way from the global RNG (used with ``Module.apply``; the text tower's init)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):  # the patch projection (PatchEmbed.proj), the models' only convolution
        # touches only the module's own tensors, so DeepSpeed's zero.Init (which gathers those per module) works
        weight = module.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, AttentionPool):
        module.init_latent()


__all__ = ["LN_EPS", "VisionTransformer", "init_module"]
