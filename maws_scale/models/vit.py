"""The ViT encoder of the MAWS family, with timm ``VisionTransformer``'s parameter names and shapes.

Keys: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1+L, D), ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head`` (+ ``attn_pool.*`` for map pooling, ``attn.q_norm`` /
``attn.k_norm`` with QK-norm), so MAWS / MAE / timm checkpoints load strictly. ``gap`` / ``max`` pool after the final
``norm`` (timm with ``fc_norm=False``).
"""

from __future__ import annotations

import torch
from torch import nn

from maws_scale.models.attention import Backend
from maws_scale.models.checkpointing import parse_mode, run_blocks
from maws_scale.models.heads import AttentionPool, Pool, check_pool, pool_tokens
from maws_scale.models.layers import LN_EPS, PatchEmbed, layer_norm, make_blocks


class VisionTransformer(nn.Module):
    """Pre-norm ViT: patch embed + class token + learned position embedding → blocks → final norm → pool → head."""

    num_prefix_tokens = 1

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        pool: Pool = "cls",
        qkv_bias: bool = True,
        qk_norm: bool = False,
        norm_bias: bool = True,
        parallel_block: bool = False,
        drop_path: float = 0.0,
        attention: Backend = "auto",
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.patch_size = patch_size
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = check_pool(pool)
        self.checkpointing = "none"

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        block_args = dict(qkv_bias=qkv_bias, qk_norm=qk_norm, norm_bias=norm_bias, backend=attention)
        self.blocks = make_blocks(
            depth, embed_dim, num_heads, mlp_ratio, drop_path=drop_path, parallel=parallel_block, **block_args
        )
        self.norm = layer_norm(embed_dim, norm_bias)
        self.attn_pool = AttentionPool(embed_dim, num_heads, mlp_ratio, **block_args) if pool == "map" else None
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # ----- init -------------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """timm/MAE init of every parameter: trunc-normal(0.02) linears and pos-embed, xavier patch projection, unit
        LayerNorms. Call again after materialising a meta-device model (``to_empty``)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(init_module)

    # ----- forward ----------------------------------------------------------------------------------------------
    def run_blocks(self, x: torch.Tensor, blocks: nn.ModuleList | None = None) -> torch.Tensor:
        """Apply ``blocks`` (default: the encoder's), checkpointed as :attr:`checkpointing` says (training only)."""
        return run_blocks(self.blocks if blocks is None else blocks, x, self.checkpointing)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, 1+L, D) tokens after the final norm."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"input is {tuple(x.shape[-2:])} px but the model was built for model.img_size={self.img_size}; "
                "rebuild at the new size and load with adapt_state_dict (resamples pos_embed)"
            )
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        return self.norm(self.run_blocks(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1+L, D) → (B, D) by ``global_pool`` (cls | gap | map | max)."""
        return pool_tokens(tokens, self.global_pool, self.num_prefix_tokens, self.attn_pool)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool then ``head`` (Identity when ``num_classes == 0``)."""
        return self.head(self.pool(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images → pooled features (B, D), or logits (B, K) with a head."""
        return self.forward_head(self.forward_features(x))

    # ----- training helpers -------------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        """Activation checkpointing of the blocks: ``True`` / ``"full"``, ``False`` / ``"none"``, ``"every_k:<k>"``
        or ``"selective_op"`` (:mod:`maws_scale.models.checkpointing`)."""
        self.checkpointing = parse_mode(enable)

    @property
    def grad_checkpointing(self) -> bool:
        """Whether any block is checkpointed."""
        return self.checkpointing != "none"

    def set_attention_backend(self, backend: Backend) -> None:
        """Switch every attention op in the model (``auto | xformers | sdpa | math``)."""
        for module in self.modules():
            if hasattr(module, "backend"):
                module.backend = backend

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides 1-D params (norms, biases): embeddings and tokens."""
        names = {"pos_embed", "cls_token"}
        if self.attn_pool is not None:
            names.add("attn_pool.latent")
        return names

    def reset_head(self, num_classes: int) -> None:
        """Replace ``head`` by a fresh Linear(D, num_classes) (Identity for 0)."""
        device = self.norm.weight.device
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_module(self.head)


def init_module(module: nn.Module) -> None:
    """Init one module the timm/MAE way (used with ``Module.apply``)."""
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
