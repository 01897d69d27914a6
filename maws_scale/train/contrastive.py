"""The CLIP contrastive loss, distributed-correct.

Every rank all-gathers the image and text embeddings of the whole data-parallel group *with gradients* (the
backward all-reduces the gradient of the gathered tensor and keeps the local rows, as open_clip's
``gather_with_grad``) and computes the same loss over the global batch. Each rank's local embeddings then receive
``W ×`` their share of the global-loss gradient; DeepSpeed's data-parallel gradient averaging divides by ``W``,
so the update equals a one-rank run over the same global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the gradients over ranks and returns this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """(B, E) local rows → (W·B, E) rows of every rank in rank order; identity without a process group.
    Every rank must hold the same number of rows (training batches are padded to ``train.micro_batch``)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return x
    return _GatherWithGrad.apply(x, group)


def contrastive_logits(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Image→text logits (N, N) = scale · image · textᵀ, in fp32."""
    return scale.float() * image.float() @ text.float().t()


def gather_ids(ids: torch.Tensor, group=None) -> torch.Tensor:
    """(B,) sample ids of this rank → (W·B,) of every rank in rank order (no gradient); identity without a group."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, ids.contiguous(), group=group)
    return torch.cat(parts)


def repeated_samples(ids: torch.Tensor) -> torch.Tensor:
    """(N,) bool: True where a sample id already occurred earlier in the batch (the loader refills a batch whose bad
    records were dropped by repeating valid samples). Built on the device, without a host sync."""
    same = ids[:, None] == ids[None, :]
    return torch.tril(same, diagonal=-1).any(dim=1)


def clip_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, group=None, ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the global batch: → (loss, image→text top-1 accuracy of the global batch).

    ``image``/``text`` are this rank's L2-normalised embeddings (B, E); pair i of the global batch is the i-th
    gathered row of both. With ``ids`` (B,), the sample ids of the rows, a repeated sample is neither a negative
    of any pair (that would be a false negative: the same image and text) nor a pair of its own: the loss and
    accuracy are those of the batch without the repeats."""
    all_image = gather_with_grad(image, group)
    all_text = gather_with_grad(text, group)
    logits = contrastive_logits(all_image, all_text, scale)
    labels = torch.arange(logits.shape[0], device=logits.device)
    if ids is None:
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, accuracy
    repeat = repeated_samples(gather_ids(ids.to(logits.device), group))
    eye = torch.eye(len(labels), dtype=torch.bool, device=logits.device)
    hidden = repeat[None, :] & ~eye  # a repeat's column is hidden from every other row; its own diagonal stays
    keep = (~repeat).float()
    count = keep.sum()
    per_row = [
        F.cross_entropy(scores.masked_fill(hidden, float("-inf")), labels, reduction="none")
        for scores in (logits, logits.t())
    ]
    loss = 0.5 * sum((row * keep).sum() for row in per_row) / count
    hits = (logits.detach().masked_fill(hidden, float("-inf")).argmax(dim=1) == labels).float()
    return loss, (hits * keep).sum() / count
