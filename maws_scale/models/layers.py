"""Transformer building blocks with timm's names: PatchEmbed, Attention, Mlp, Block (+ DropPath, sin-cos tables).

Tensor parallelism (``maws_scale.parallel``) swaps ``attn.qkv``/``attn.proj`` and ``mlp.fc1``/``mlp.fc2`` for sharded
layers and sets ``attn.num_heads`` to the local head count, so :class:`Attention` reads ``num_heads`` and
``head_dim`` at call time and never caches them in shapes.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from maws_scale.models.attention import Backend, attention

LN_EPS = 1e-6


def layer_norm(dim: int, bias: bool = True) -> nn.LayerNorm:
    """LayerNorm as ViTs use it (eps 1e-6), optionally without bias (ViT-22B)."""
    return nn.LayerNorm(dim, eps=LN_EPS, bias=bias)


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: ``proj`` is a Conv2d(in_chans, dim, patch, stride=patch)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"model.img_size={img_size} is not a multiple of the patch size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, L, D), row-major patch order."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` Linear(D, 3D), optional per-head ``q_norm``/``k_norm``, ``proj``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        norm_bias: bool = True,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = layer_norm(self.head_dim, norm_bias) if qk_norm else nn.Identity()
        self.k_norm = layer_norm(self.head_dim, norm_bias) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim  # read at call time (tensor parallelism rewrites them)
        qkv = self.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attention(q, k, v, self.backend)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))


class Mlp(nn.Module):
    """``fc1`` → ``act`` (GELU) → ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block, timm names: ``norm1``, ``attn``, ``norm2``, ``mlp``.

    ``parallel=True`` is ViT-22B's parallel form ``x + attn(norm1(x)) + mlp(norm1(x))`` (one shared norm; ``norm2``
    is then an Identity without parameters).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        norm_bias: bool = True,
        parallel: bool = False,
        drop_path: float = 0.0,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.parallel = parallel
        self.norm1 = layer_norm(dim, norm_bias)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, norm_bias=norm_bias, backend=backend)
        self.norm2 = nn.Identity() if parallel else layer_norm(dim, norm_bias)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path1 = DropPath(drop_path)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            y = self.norm1(x)
            return x + self.drop_path1(self.attn(y)) + self.drop_path2(self.mlp(y))
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def make_blocks(
    depth: int,
    dim: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    drop_path: float = 0.0,
    **kwargs,
) -> nn.ModuleList:
    """``depth`` blocks with stochastic depth rising linearly from 0 to ``drop_path``."""
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    make = partial(Block, dim, num_heads, mlp_ratio, **kwargs)
    return nn.ModuleList(make(drop_path=rate) for rate in rates)


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table (1 + grid², dim) (first row zeros for the class token), float32.

    Half the channels encode one grid axis, half the other, each as [sin, cos] at 1/10000^(2i/d) frequencies.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float64, device="cpu")
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # grid_w varies along columns, as in MAE

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device="cpu") / (dim / 4))
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([out.sin(), out.cos()], dim=1)

    table = torch.cat([one_axis(grid_w), one_axis(grid_h)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64, device="cpu"), table], dim=0)
    return table.float()
