"""Model shapes by name: the MAWS ViT family (facebookresearch/maws MODEL_CONFIGS) plus tiny sizes for CPU.

This module is pure data (no torch import) so the config validator can check shapes before anything starts.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DecoderShape:
    """The MAE decoder's blocks: width, depth, heads and MLP width (the encoder's MLP ratio)."""

    width: int
    depth: int
    heads: int
    mlp_hidden: int


@dataclass(frozen=True)
class ViTSpec:
    """Shape of a ViT encoder and the MAE decoder that goes with it by default."""

    width: int
    depth: int
    heads: int
    patch: int
    img_size: int = 224
    mlp_ratio: float = 4.0
    in_chans: int = 3
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def decoder_shape(
        self, width: int | None = None, depth: int | None = None, heads: int | None = None
    ) -> DecoderShape:
        """The MAE decoder for this encoder: the given width / depth / heads (``mae.decoder_*``), else the spec's."""
        width = width or self.decoder_width
        return DecoderShape(
            width, depth or self.decoder_depth, heads or self.decoder_heads, int(width * self.mlp_ratio)
        )

    def num_patches(self, img_size: int | None = None) -> int:
        side = (img_size or self.img_size) // self.patch
        return side * side

    def as_dict(self) -> dict:
        return asdict(self)


MODELS: dict[str, ViTSpec] = {
    # The MAWS family, 224 px (Singh et al. 2023, Table 1; maws/model_builder.py).
    "vit_b16": ViTSpec(width=768, depth=12, heads=12, patch=16),
    "vit_l16": ViTSpec(width=1024, depth=24, heads=16, patch=16),
    "vit_h14": ViTSpec(width=1280, depth=32, heads=16, patch=14),
    "vit_2b14": ViTSpec(width=2560, depth=24, heads=32, patch=14),
    "vit_6.5b14": ViTSpec(width=4096, depth=32, heads=32, patch=14),
    # Tiny sizes for tests and CPU runs (Fashion-MNIST: 28 px singles, 56 px 2x2 mosaics).
    "vit_micro_p4": ViTSpec(
        width=32, depth=2, heads=2, patch=4, img_size=16, decoder_width=32, decoder_depth=1, decoder_heads=2
    ),
    "vit_tiny_p4": ViTSpec(
        width=96, depth=4, heads=4, patch=4, img_size=32, decoder_width=64, decoder_depth=2, decoder_heads=4
    ),
    "vit_tiny_p8": ViTSpec(
        width=128, depth=6, heads=4, patch=8, img_size=56, decoder_width=64, decoder_depth=2, decoder_heads=4
    ),
    "vit_small_p8": ViTSpec(
        width=256, depth=8, heads=8, patch=8, img_size=56, decoder_width=128, decoder_depth=4, decoder_heads=4
    ),
}


class UnknownModelError(KeyError):
    """Raised for a model name that is not in the registry; the message suggests the closest name."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_spec(name: str | ViTSpec) -> ViTSpec:
    """Return the shape registered under ``name`` (a ViTSpec is returned as is) or raise with a 'did you mean'."""
    if isinstance(name, ViTSpec):
        return name
    try:
        return MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UnknownModelError(f"unknown model '{name}'{hint} (known: {', '.join(MODELS)})") from None
