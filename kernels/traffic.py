"""Analytic memory traffic (bytes to and from device memory) of each op: fused kernels vs the eager references.

ANALYTIC, NOT MEASURED. The model: every eager torch op reads each input and writes each output once; a tensor no
bigger than (L, D) (position embeddings, mask token, per-patch statistics) is read once however often it is
broadcast, since it stays in L2; index tensors count; views (expand, narrow, transpose) are free. The fused counts
are what the kernels must move at least (masked-out patches of the loss are not read). The backward follows MAE's
defaults: fixed sin-cos position embeddings (no gradient), a learned mask token, no gradient for the images.
The benchmark divides the fused bytes by measured times to report effective bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

from .geometry import batch_splits, block_d

FP32 = 4


@dataclass(frozen=True)
class Pass:
    """One pass over memory: what it is and the bytes it reads and writes."""

    name: str
    read: int
    write: int

    @property
    def total(self) -> int:
        return self.read + self.write


@dataclass(frozen=True)
class Traffic:
    """The passes of the fused and the unfused (eager reference) version of one op in one direction."""

    op: str
    direction: str
    fused: tuple[Pass, ...]
    unfused: tuple[Pass, ...]

    @property
    def fused_bytes(self) -> int:
        return sum(p.total for p in self.fused)

    @property
    def unfused_bytes(self) -> int:
        return sum(p.total for p in self.unfused)


def gather_visible_traffic(
    batch: int, length: int, keep: int, width: int, elem: int = 2, index: int = 8
) -> tuple[Traffic, Traffic]:
    """(forward, backward) traffic of the visible-token gather, tokens (B, L, D) of ``elem`` bytes."""
    full, kept, pos, ids = (
        batch * length * width * elem,
        batch * keep * width * elem,
        length * width * elem,
        batch * keep * index,
    )
    slots = batch * length * 4
    forward = Traffic(
        "gather_visible",
        "forward",
        (Pass("gather rows, add pos-embed (kernel)", kept + pos + ids, kept),),
        (Pass("tokens + pos_embed", full + pos, full), Pass("gather", kept + ids, kept)),
    )
    backward = Traffic(
        "gather_visible",
        "backward",
        (
            Pass("keep ids -> slot map (torch full + scatter)", ids, slots + batch * keep * 4),
            Pass("scatter grad rows, zeros elsewhere (kernel)", kept + slots, full),
        ),
        (Pass("gather backward: zeros", 0, full), Pass("gather backward: scatter_add", 2 * kept + ids, kept)),
    )
    return forward, backward


def unshuffle_traffic(
    batch: int, length: int, keep: int, width: int, elem: int = 2, index: int = 8
) -> tuple[Traffic, Traffic]:
    """(forward, backward) traffic of the decoder unshuffle, decoder tokens of width ``width`` and ``elem`` bytes."""
    full, kept, pos, ids = (
        batch * length * width * elem,
        batch * keep * width * elem,
        length * width * elem,
        batch * length * index,
    )
    token = width * elem
    splits, _ = batch_splits(batch, length * -(-width // block_d(width)))
    partials = splits * length * width * FP32
    forward = Traffic(
        "unshuffle_with_mask_tokens",
        "forward",
        (Pass("pick visible row or mask token, add pos-embed (kernel)", kept + token + pos + ids, full),),
        (
            Pass("cat visible + expanded mask token", kept + token, full),
            Pass("gather (unshuffle)", full + ids, full),
            Pass("+ pos_embed", full + pos, full),
        ),
    )
    backward = Traffic(
        "unshuffle_with_mask_tokens",
        "backward",
        (
            Pass("route grad rows to visible, mask-token partials (kernel)", full + ids, kept + partials),
            Pass("sum mask-token partials (torch)", partials, width * FP32),
        ),
        (
            Pass("gather backward: zeros", 0, full),
            Pass("gather backward: scatter_add", 2 * full + ids, full),
            Pass("mask-token grad: sum over masked slots", full - kept, width * FP32),
        ),
    )
    return forward, backward


def loss_traffic(
    batch: int,
    chans: int,
    height: int,
    width: int,
    patch: int,
    mask_ratio: float = 0.75,
    img_elem: int = 2,
    pred_elem: int = 2,
    norm_pix: bool = True,
) -> tuple[Traffic, Traffic]:
    """(forward, backward) traffic of the masked (norm-pix) MSE: images (B, C, H, W), predictions (B, L, p²C)."""
    pixels = batch * chans * height * width  # = B · L · p²C, the size of the patchified target and of pred
    length = (height // patch) * (width // patch)
    weights = batch * length * FP32
    masked = round(mask_ratio * pixels)  # pixel values on masked patches: the only ones the kernels read
    fused_fwd = (
        Pass("per-patch loss of masked patches (kernel)", masked * (img_elem + pred_elem) + weights, weights),
        Pass("sum per-patch losses and mask (torch)", 2 * weights, 0),
    )
    fused_bwd = (
        Pass(
            "grad rows, zeros on visible patches (kernel)",
            masked * (img_elem + pred_elem) + weights,
            pixels * pred_elem,
        ),
    )
    f32 = pixels * FP32
    eager_fwd = [Pass("imgs.float()", pixels * img_elem, f32)] if img_elem != FP32 else []
    eager_fwd.append(Pass("patchify (einsum + reshape copy)", f32, f32))
    if norm_pix:
        eager_fwd += [
            Pass("mean over patch", f32, 0),
            Pass("var over patch", f32, 0),
            Pass("target - mean", f32, f32),
            Pass("/ sqrt(var + eps)", f32, f32),
        ]
    if pred_elem != FP32:
        eager_fwd.append(Pass("pred.float()", pixels * pred_elem, f32))
    eager_fwd += [
        Pass("pred - target", 2 * f32, f32),
        Pass("** 2", f32, f32),
        Pass("mean over patch, * mask, sums", f32 + 2 * weights, weights),
    ]
    eager_bwd = [Pass("pow backward: 2 · diff · grad", f32, f32)]
    if pred_elem != FP32:
        eager_bwd.append(Pass("float() backward: cast to pred dtype", f32, pixels * pred_elem))
    return (
        Traffic("norm_pix_masked_mse", "forward", fused_fwd, tuple(eager_fwd)),
        Traffic("norm_pix_masked_mse", "backward", fused_bwd, tuple(eager_bwd)),
    )
