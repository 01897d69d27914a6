"""Pooling (``cls | gap | map | max``), the attention-pool head, and the WSP soft-target cross-entropy.

The WSP classifier itself is the encoder's ``head`` Linear(D, K) (see :func:`maws_scale.models.build_wsp`), so a
WSP checkpoint keeps timm's naming. Pooling follows timm's VisionTransformer: ``gap`` and ``max`` pool the patch
tokens (class token excluded) of the final-normed sequence, ``map`` is timm's ``AttentionPoolLatent`` (``attn_pool``)
over the whole sequence.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from maws_scale.models.attention import Backend, attention
from maws_scale.models.layers import Mlp, layer_norm

Pool = Literal["cls", "gap", "map", "max"]
POOLS = ("cls", "gap", "map", "max")


def check_pool(pool: str) -> str:
    """Return ``pool`` or raise ValueError naming the key and the choices."""
    if pool not in POOLS:
        raise ValueError(f"model.pool: unknown pooling '{pool}' (known: {', '.join(POOLS)})")
    return pool


def pool_tokens(tokens: torch.Tensor, pool: Pool, num_prefix_tokens: int = 1, attn_pool: nn.Module | None = None):
    """(B, T, D) tokens → (B, D) by ``pool``; ``map`` needs the ``attn_pool`` module."""
    if pool == "cls":
        return tokens[:, 0]
    if pool == "gap":
        return tokens[:, num_prefix_tokens:].mean(dim=1)
    if pool == "max":
        return tokens[:, num_prefix_tokens:].amax(dim=1)
    if pool == "map":
        if attn_pool is None:
            raise ValueError("model.pool=map needs an attention-pool module (attn_pool)")
        return attn_pool(tokens)
    raise ValueError(f"model.pool: unknown pooling '{pool}' (known: {', '.join(POOLS)})")


class AttentionPool(nn.Module):
    """Multihead attention pooling with one learned query (timm ``AttentionPoolLatent``, latent_len 1).

    Names: ``latent`` (1, 1, D), ``q`` Linear(D, D), ``kv`` Linear(D, 2D), ``q_norm``/``k_norm``, ``proj``,
    ``norm``, ``mlp`` (fc1, fc2). Output: ``x = proj(attn(q(latent), kv(tokens))); x = x + mlp(norm(x))``, (B, D).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        norm_bias: bool = True,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.q_norm = layer_norm(self.head_dim, norm_bias) if qk_norm else nn.Identity()
        self.k_norm = layer_norm(self.head_dim, norm_bias) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.norm = layer_norm(dim, norm_bias)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.init_latent()

    def init_latent(self) -> None:
        """timm's init of the latent query: truncated normal, std D^-0.5."""
        nn.init.trunc_normal_(self.latent, std=self.latent.shape[-1] ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q(self.latent.expand(batch, -1, -1)).reshape(batch, 1, heads, head_dim).transpose(1, 2)
        kv = self.kv(x).reshape(batch, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attention(q, k, v, self.backend).transpose(1, 2).reshape(batch, 1, heads * head_dim)
        out = self.proj(out)
        out = out + self.mlp(self.norm(out))
        return out[:, 0]


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy against soft targets, ``-sum(t · log_softmax(z))`` per row, computed in fp32.

    ``targets`` (B, K) rows sum to 1 (an image's tags share the mass equally). ``reduction``: mean | sum | none.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    loss = -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be mean, sum or none, got '{reduction}'")
