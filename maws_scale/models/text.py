"""The text tower: a plain pre-norm transformer over token ids with CLIP's or XLM-R's pooling.

``pool="eot"`` (CLIP): causal mask, the output at the ``<eos>`` token (the last non-pad position) is the text
feature. ``pool="first"`` (XLM-R, as in maws_clip): bidirectional attention with a padding mask, the first token's
output. Pad id is 0 (``maws_scale.data.text``). Parameter names: ``token_embedding``, ``positional_embedding``,
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``ln_final``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maws_scale.models.layers import Attention, Block, layer_norm
from maws_scale.models.recompute import parse_mode, run_blocks
from maws_scale.models.text_registry import TextSpec

PAD_ID = 0


class MaskedAttention(Attention):
    """:class:`Attention` with an attention mask (bool, True = attend) or a causal mask."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        batch, tokens, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))


class TextBlock(Block):
    """Pre-norm block whose attention takes a mask."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__(dim, num_heads, mlp_ratio)
        self.attn = MaskedAttention(dim, num_heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask, causal)
        return x + self.mlp(self.norm2(x))


class TextTransformer(nn.Module):
    """Token ids (B, T) → pooled text features (B, width)."""

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        pool: str = "eot",
        causal: bool = True,
    ) -> None:
        super().__init__()
        if pool not in ("eot", "first"):
            raise ValueError(f"clip.text_pool: unknown pooling '{pool}' (known: eot, first)")
        self.vocab_size, self.context_length, self.width = vocab_size, context_length, width
        self.pool, self.causal = pool, causal
        self.recompute_mode = "none"
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.blocks = nn.ModuleList(TextBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.ln_final = layer_norm(width)
        self.init_weights()

    @classmethod
    def from_spec(cls, spec: TextSpec, vocab_size: int, context_length: int | None = None) -> TextTransformer:
        return cls(
            vocab_size,
            context_length or spec.context_length,
            spec.width,
            spec.depth,
            spec.heads,
            spec.mlp_ratio,
            spec.pool,
            spec.causal,
        )

    def init_weights(self) -> None:
        """CLIP's init: normal(0.02) token table, normal(0.01) positions, trunc-normal(0.02) linears."""
        from maws_scale.models.vit import init_module

        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in self.blocks:
            block.apply(init_module)
        init_module(self.ln_final)

    def set_recompute(self, enable: bool | str = True) -> None:
        """Activation recompute of the blocks (modes of :mod:`maws_scale.models.recompute`)."""
        self.recompute_mode = parse_mode(enable)

    @property
    def recomputes(self) -> bool:
        return self.recompute_mode != "none"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length = tokens.shape
        if length > self.context_length:
            raise ValueError(
                f"{length} tokens per caption but the position table holds {self.context_length} "
                "(clip.context_length / the tokenizer's context length)"
            )
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        valid = tokens != PAD_ID
        mask = None if self.causal else valid[:, None, None, :]
        x = run_blocks(self.blocks, x, self.recompute_mode, mask, self.causal)
        x = self.ln_final(x)
        if self.pool == "first":
            return x[:, 0]
        last = valid.sum(dim=1).clamp(min=1) - 1  # <eos>: the last non-pad token
        return x[torch.arange(batch, device=x.device), last]

    def no_weight_decay(self) -> set[str]:
        return {"token_embedding.weight", "positional_embedding"}
