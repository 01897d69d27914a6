"""The token encoder the ViT and the MAE are both composed around, with timm's parameter names.

Keys: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1+L, D), ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm`` (+ ``attn_pool.*`` for map pooling, ``attn.q_norm`` / ``attn.k_norm``
with QK-norm). :class:`~maws_scale.models.vit.VisionTransformer` adds the classification ``head``;
:class:`~maws_scale.models.mae.MaskedAutoencoder` adds the masking path and the decoder. Pooling is optional: an
encoder built with ``pool=None`` (the MAE of the MAE stage) has no pooling and no ``attn_pool`` parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from maws_scale.models.attention import Backend
from maws_scale.models.heads import AttentionPool, Pool, check_pool, pool_tokens
from maws_scale.models.init import draw_init_seed
from maws_scale.models.layers import PatchEmbed, layer_norm, make_blocks
from maws_scale.models.recompute import parse_mode, run_blocks


class TokenEncoder(nn.Module):
    """Patch embed + class token + position embedding → pre-norm blocks → final norm (→ optional pooling)."""

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
        pool: Pool | None = "cls",
        qkv_bias: bool = True,
        qk_norm: bool = False,
        norm_bias: bool = True,
        parallel_block: bool = False,
        drop_path: float = 0.0,
        attention: Backend = "auto",
        init_seed: int | None = None,
        fc_norm: bool = False,
    ) -> None:
        super().__init__()
        # first, before any submodule draws from the global RNG: the weights depend on this seed alone (models/init.py)
        self.init_seed = draw_init_seed() if init_seed is None else int(init_seed)
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.patch_size = patch_size
        self.img_size = img_size
        self.in_chans = in_chans
        self.global_pool = check_pool(pool) if pool is not None else None
        self.recompute_mode = "none"
        self.block_args = dict(qkv_bias=qkv_bias, qk_norm=qk_norm, norm_bias=norm_bias, backend=attention)
        self.parallel_block = parallel_block

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.blocks = make_blocks(
            depth, embed_dim, num_heads, mlp_ratio, drop_path=drop_path, parallel=parallel_block, **self.block_args
        )
        # timm's fc_norm (MAE fine-tuning's global pool): the final norm moves from the tokens to the pooled feature
        self.norm = nn.Identity() if fc_norm else layer_norm(embed_dim, norm_bias)
        self.fc_norm = layer_norm(embed_dim, norm_bias) if fc_norm else None
        self.attn_pool = AttentionPool(embed_dim, num_heads, mlp_ratio, **self.block_args) if pool == "map" else None

    # ----- forward ----------------------------------------------------------------------------------------------
    def run_blocks(self, x: torch.Tensor, blocks: nn.ModuleList | None = None) -> torch.Tensor:
        """Apply ``blocks`` (default: the encoder's), recomputed as :attr:`recompute_mode` says (training only)."""
        return run_blocks(self.blocks if blocks is None else blocks, x, self.recompute_mode)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, 1+L, D) tokens after the final norm (every patch, no masking)."""
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
        """(B, 1+L, D) → (B, D) by ``global_pool`` (cls | gap | map | max), then ``fc_norm`` where built with it."""
        if self.global_pool is None:
            raise ValueError(f"{type(self).__name__} was built without pooling (pool=None)")
        pooled = pool_tokens(tokens, self.global_pool, self.num_prefix_tokens, self.attn_pool)
        return self.fc_norm(pooled) if self.fc_norm is not None else pooled

    # ----- training helpers -------------------------------------------------------------------------------------
    def set_recompute(self, enable: bool | str = True) -> None:
        """Activation recompute of the blocks: ``True`` / ``"full"``, ``False`` / ``"none"``, ``"every_k:<k>"``
        or ``"selective_op"`` (:mod:`maws_scale.models.recompute`)."""
        self.recompute_mode = parse_mode(enable)

    @property
    def recomputes(self) -> bool:
        """Whether any block is checkpointed."""
        return self.recompute_mode != "none"

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
