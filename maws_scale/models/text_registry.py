"""Text-tower shapes by name: tiny sizes for CPU, CLIP's text transformers, and the maws_clip XLM-R towers.

Pure data (no torch import), so the config validator can check a text tower against the data set's tokenizer.
``vocab_size=None`` means "the tokenizer's" (towers trained from scratch on a data set's own BPE); the CLIP and
XLM-R towers have the vocabularies of their published tokenizers (49,408 and 250,002).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Literal

TextPool = Literal["eot", "first"]


@dataclass(frozen=True)
class TextSpec:
    """A text transformer: width/depth/heads, vocabulary, position-table length, pooling and attention mask."""

    width: int
    depth: int
    heads: int
    context_length: int
    vocab_size: int | None = None
    pool: TextPool = "eot"  # CLIP: the <eos> token's output; XLM-R (maws_clip): the first token's
    causal: bool = True  # CLIP: causal mask; XLM-R: bidirectional with a padding mask
    mlp_ratio: float = 4.0

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    def as_dict(self) -> dict:
        return asdict(self)


TEXT_MODELS: dict[str, TextSpec] = {
    # Tiny sizes for tests and CPU runs (vocabulary: the data set's tokenizer).
    "text_micro": TextSpec(width=32, depth=1, heads=2, context_length=32),
    "text_tiny": TextSpec(width=64, depth=2, heads=2, context_length=32),
    "text_small": TextSpec(width=128, depth=4, heads=4, context_length=64),
    # CLIP (Radford et al. 2021): ViT-B and ViT-L text towers.
    "clip_b": TextSpec(width=512, depth=12, heads=8, context_length=77, vocab_size=49408),
    "clip_l": TextSpec(width=768, depth=12, heads=12, context_length=77, vocab_size=49408),
    # maws_clip: XLM-RoBERTa base / large shapes, LiT-aligned to a MAWS image encoder.
    "xlmr_b": TextSpec(
        width=768, depth=12, heads=12, context_length=100, vocab_size=250002, pool="first", causal=False
    ),
    "xlmr_l": TextSpec(
        width=1024, depth=24, heads=16, context_length=100, vocab_size=250002, pool="first", causal=False
    ),
}


def get_text_spec(name: str) -> TextSpec:
    """The text shape registered under ``name``, or KeyError with a 'did you mean'."""
    try:
        return TEXT_MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, TEXT_MODELS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown text model '{name}'{hint} (known: {', '.join(TEXT_MODELS)})") from None
