"""Masked autoencoder (He et al. 2022): the token encoder plus a light decoder, in facebookresearch/mae naming.

Composed from the shared parts (``models/encoder.py``, ``models/layers.py``); no classification head. Pooling exists
only when asked for (``pool=...``: the MAE image tower of the ``mae_clip`` stage pools its latent); the MAE stage
builds it without.

Keys: the encoder's at top level in timm naming (``cls_token``, ``pos_embed``, ``patch_embed.*``, ``blocks.N.*``,
``norm.*``), then ``mask_token``, ``decoder_embed``, ``decoder_pos_embed``, ``decoder_blocks.N.*``, ``decoder_norm``,
``decoder_pred``. Position embeddings of encoder and decoder are fixed 2-D sin-cos tables kept as frozen parameters
(as in MAE, so they are part of the checkpoint). Masking, unshuffling and the loss go through ``maws_scale.kernels``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maws_scale import kernels
from maws_scale.kernels.masking import masking_ids_from_noise
from maws_scale.models.encoder import TokenEncoder
from maws_scale.models.heads import Pool
from maws_scale.models.init import init_named_modules, init_tensor_, normal, tensor_generator
from maws_scale.models.layers import layer_norm, make_blocks, sincos_pos_embed_2d


def random_masking(
    batch: int,
    length: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device=None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (MAE ``random_masking``).

    Returns ``keep_ids`` (B, L_keep), ``restore_ids`` (B, L) and ``mask`` (B, L; 1 = masked, 0 = kept), with
    ``L_keep = int(L * (1 - mask_ratio))``. Noise comes from ``noise`` (B, L) when given (e.g. derived from each
    sample's global index, so a sample's mask does not depend on the data-parallel layout), else from ``generator``
    (on its own device) or the global RNG.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mae.mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise_device = generator.device if generator is not None else device
        noise = torch.rand(batch, length, generator=generator, device=noise_device).to(device)
    elif noise.shape != (batch, length):
        raise ValueError(f"noise must be (batch, patches) = {(batch, length)}, got {tuple(noise.shape)}")
    else:
        noise = noise.to(device)
    return masking_ids_from_noise(noise, keep)


class MaskedAutoencoder(TokenEncoder):
    """MAE: the ViT encoder sees the visible patches (+ class token); a light decoder reconstructs all patches.

    ``forward(imgs, mask_ratio=None, generator=None) -> (loss, pred, mask)``: loss is the (norm-pix) MSE over masked
    patches only, pred (B, L, p²·C), mask (B, L) with 1 = masked.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        norm_pix_eps: float = 1e-6,
        kernels_impl: str = "auto",
        pool: Pool | None = None,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            pool=pool,
            **encoder_kwargs,
        )
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mae.mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.norm_pix_eps = norm_pix_eps
        self.kernels_impl = kernels_impl
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.pos_embed.requires_grad_(False)  # fixed sin-cos, as in MAE

        norm_bias = self.block_args["norm_bias"]
        num_patches = self.patch_embed.num_patches
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = make_blocks(
            decoder_depth,
            decoder_embed_dim,
            decoder_num_heads,
            mlp_ratio,
            parallel=self.parallel_block,
            **self.block_args,
        )
        self.decoder_norm = layer_norm(decoder_embed_dim, norm_bias)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.init_weights()

    def init_weights(self) -> None:
        """MAE init: sin-cos position tables, xavier-uniform linears, normal(0.02) class and mask tokens; each tensor
        from its own generator keyed by ``init_seed`` and its name (:mod:`maws_scale.models.init`)."""

        def own() -> None:
            grid = self.patch_embed.grid_size
            with torch.no_grad():
                self.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dim, grid).unsqueeze(0))
                self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.decoder_embed_dim, grid).unsqueeze(0))
            init_tensor_(self.cls_token, normal(0.02), tensor_generator(self.init_seed, "cls_token"))
            init_tensor_(self.mask_token, normal(0.02), tensor_generator(self.init_seed, "mask_token"))

        init_named_modules(self, self.init_seed, self.linear_init, own)

    @staticmethod
    def linear_init(weight: torch.Tensor, generator: torch.Generator) -> None:
        """MAE's Linear weight init: xavier-uniform."""
        nn.init.xavier_uniform_(weight, generator=generator)

    # ----- forward ----------------------------------------------------------------------------------------------
    def forward_encoder(
        self,
        imgs: torch.Tensor,
        mask_ratio: float,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: → tokens (B, 1+L_keep, D) after the final norm, mask (B, L), restore_ids."""
        x = self.patch_embed(imgs)
        keep_ids, restore_ids, mask = random_masking(x.shape[0], x.shape[1], mask_ratio, generator, x.device, noise)
        x = kernels.gather_visible(x, self.pos_embed[0, 1:], keep_ids, impl=self.kernels_impl)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return self.norm(self.run_blocks(x)), mask, restore_ids

    def forward_decoder(self, tokens: torch.Tensor, restore_ids: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (B, 1+L_keep, D) → per-patch pixel predictions (B, L, p²·C)."""
        x = self.decoder_embed(tokens)
        patches = kernels.unshuffle_with_mask_tokens(
            x[:, 1:], self.mask_token.reshape(-1), restore_ids, self.decoder_pos_embed[0, 1:], impl=self.kernels_impl
        )
        x = torch.cat([x[:, :1] + self.decoder_pos_embed[:, :1], patches], dim=1)
        x = self.decoder_norm(self.run_blocks(x, self.decoder_blocks))
        return self.decoder_pred(x)[:, 1:]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(Norm-pix) MSE over masked patches only, fp32."""
        return kernels.norm_pix_masked_mse(
            imgs,
            pred,
            mask,
            self.patch_size,
            norm_pix=self.norm_pix_loss,
            eps=self.norm_pix_eps,
            impl=self.kernels_impl,
        )

    def forward(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (loss, pred (B, L, p²·C), mask (B, L), 1 = masked). ``noise`` (B, L): per-sample masking noise.

        ``target``: the pixels the (norm-pix) target is built from, default ``imgs``; pass the fp32 images when
        ``imgs`` are their bf16/fp16 copy, so that the target is not built from rounded pixels."""
        if imgs.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"input is {tuple(imgs.shape[-2:])} px but model.img_size={self.img_size}")
        if target is not None and target.shape != imgs.shape:
            raise ValueError(f"MAE target {tuple(target.shape)} and images {tuple(imgs.shape)} differ in shape")
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        tokens, mask, restore_ids = self.forward_encoder(imgs, ratio, generator, noise)
        pred = self.forward_decoder(tokens, restore_ids)
        return self.forward_loss(imgs if target is None else target, pred, mask), pred, mask

    def no_weight_decay(self) -> set[str]:
        """Embeddings and tokens of encoder and decoder."""
        return super().no_weight_decay() | {"mask_token", "decoder_pos_embed"}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's tensors only (timm naming), decoder and mask token dropped."""
        return {k: v for k, v in self.state_dict().items() if not is_decoder_key(k)}


DECODER_PREFIXES = ("decoder_", "mask_token")


def is_decoder_key(key: str) -> bool:
    """True for MAE-decoder keys (``decoder_*``, ``mask_token``)."""
    return key.startswith(DECODER_PREFIXES)
