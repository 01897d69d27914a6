"""The plain-PyTorch baseline ``maws-scale bench --baseline`` runs beside our stack, in the same process.

A timm-style ViT written the straightforward way: standard (math) attention — softmax(q·kᵀ/√d)·v as separate ops —,
MAE masking and unmasking as separate argsort / gather / cat / gather ops and the norm-pix loss in plain tensor ops,
``torch.optim.AdamW`` (default implementation), mixed precision by ``torch.autocast`` (fp32 weights), no DeepSpeed,
no fused kernels, no tensor parallelism. When ``timm`` is importable (the lent GPU machine has it), timm's own
``VisionTransformer`` is the encoder instead (its defaults, fused attention where timm enables it); the MAE masking,
decoder and loss around it stay ours-unfused. Shapes come from the registry, so both sides run the same model.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maws_scale.config import RunConfig


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


class MathAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class PlainBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MathAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PlainViT(nn.Module):
    """timm's layout (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``, ``head``)."""

    def __init__(self, img: int, patch: int, dim: int, depth: int, heads: int, mlp: int, classes: int) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        n = (img // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[PlainBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes) if classes else nn.Identity()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch_embed.proj(images).flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def _timm_encoder(cfg: RunConfig, classes: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    s = cfg.spec
    return VisionTransformer(
        img_size=cfg.img_size,
        patch_size=s.patch,
        embed_dim=s.width,
        depth=s.depth,
        num_heads=s.heads,
        mlp_ratio=s.mlp_ratio,
        num_classes=classes,
        global_pool="token",
    )


class PlainMAE(nn.Module):
    """MAE around a timm-layout encoder, every step a separate op: random masking by argsort, gather of the visible
    tokens, cat of mask tokens, gather back to image order, decoder, per-patch normalised MSE on masked patches."""

    def __init__(self, encoder: nn.Module, cfg: RunConfig) -> None:
        super().__init__()
        s = cfg.spec
        dw = cfg.mae.decoder_width or s.decoder_width
        dd = cfg.mae.decoder_depth or s.decoder_depth
        dh = cfg.mae.decoder_heads or s.decoder_heads
        self.encoder, self.patch, self.mask_ratio = encoder, s.patch, cfg.mae.mask_ratio
        n = (cfg.img_size // s.patch) ** 2
        self.decoder_embed = nn.Linear(s.width, dw)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dw))
        self.decoder_pos_embed = nn.Parameter(torch.randn(1, n + 1, dw) * 0.02, requires_grad=False)
        self.decoder_blocks = nn.Sequential(*[PlainBlock(dw, dh, int(dw * s.mlp_ratio)) for _ in range(dd)])
        self.decoder_norm = nn.LayerNorm(dw, eps=1e-6)
        self.decoder_pred = nn.Linear(dw, s.patch**2 * 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = enc.patch_embed.proj(images).flatten(2).transpose(1, 2) + enc.pos_embed[:, 1:]
        b, n, d = x.shape
        keep = int(n * (1 - self.mask_ratio))
        shuffle = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        x = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, d))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(b, -1, -1)
        x = enc.norm(enc.blocks(torch.cat([cls, x], dim=1)))
        x = self.decoder_embed(x)
        masked = self.mask_token.expand(b, n - keep, -1)
        y = torch.cat([x[:, 1:], masked], dim=1)
        y = torch.gather(y, 1, restore[:, :, None].expand(-1, -1, y.shape[-1]))
        y = torch.cat([x[:, :1], y], dim=1) + self.decoder_pos_embed
        pred = self.decoder_pred(self.decoder_norm(self.decoder_blocks(y)))[:, 1:]
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        p = self.patch
        target = images.reshape(b, 3, images.shape[2] // p, p, images.shape[3] // p, p)
        target = target.permute(0, 2, 4, 3, 5, 1).reshape(b, n, p * p * 3).float()
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        loss = ((pred.float() - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()


def build_baseline(cfg: RunConfig, num_classes: int | None = None, use_timm: bool | None = None) -> nn.Module:
    """The baseline model for ``cfg.stage`` (fp32 weights; autocast supplies the mixed precision)."""
    s = cfg.spec
    use_timm = timm_available() if use_timm is None else use_timm
    classes = 0 if cfg.stage == "mae" else int(num_classes or cfg.wsp.num_classes or 1000)
    if use_timm:
        encoder = _timm_encoder(cfg, classes)
    else:
        encoder = PlainViT(cfg.img_size, s.patch, s.width, s.depth, s.heads, s.mlp_hidden, classes)
    return PlainMAE(encoder, cfg) if cfg.stage == "mae" else encoder


def baseline_loss(cfg: RunConfig) -> Callable[[nn.Module, dict], torch.Tensor]:
    def mae(model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["images"])

    def wsp(model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(batch["images"]).float()
        return -(batch["targets"] * F.log_softmax(logits, dim=-1)).sum(-1).mean()

    return mae if cfg.stage == "mae" else wsp


@dataclass
class BaselineResult:
    encoder: str
    step_s: float
    cpu_s: float
    images_per_step: int
    images_per_s: float
    peak_mem_bytes: int | None
    steps: int
    losses: list[float]


def run_baseline(
    cfg: RunConfig,
    batches: list[dict],
    steps: int,
    warmup: int,
    accum: int,
    device: torch.device,
    num_classes: int | None = None,
) -> BaselineResult:
    """Time ``steps`` optimizer steps (``accum`` micro-batches each) of the baseline after ``warmup`` steps.

    ``batches``: device-resident dicts with normalised ``images`` (and ``targets`` for WSP), cycled."""
    torch.manual_seed(cfg.seed)
    use_timm = timm_available()
    model = build_baseline(cfg, num_classes, use_timm).to(device)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=1e-4,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
    )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.parallel.precision)
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    loss_fn = baseline_loss(cfg)
    cuda = device.type == "cuda"
    losses: list[float] = []
    index = 0

    def step() -> None:
        nonlocal index
        for _ in range(accum):
            batch = batches[index % len(batches)]
            index += 1
            with amp:
                loss = loss_fn(model, batch) / accum
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()) * accum)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    per_step = elapsed / max(steps, 1)
    images = accum * batches[0]["images"].shape[0]
    peak = int(torch.cuda.max_memory_allocated(device)) if cuda else None
    return BaselineResult(
        encoder="timm.VisionTransformer" if use_timm else "maws_scale.bench.baseline.PlainViT (math attention)",
        step_s=per_step,
        cpu_s=cpu / max(steps, 1),
        images_per_step=images,
        images_per_s=images / per_step if per_step > 0 else math.nan,
        peak_mem_bytes=peak,
        steps=steps,
        losses=losses,
    )
