"""Soft-target cross-entropy over vocab-parallel logits, without ever gathering the full (B, K) logits.

Each tensor-parallel rank holds the logits of its class slice. Per row, with z the logits and t the soft targets,
``loss = logsumexp(z) · Σt − Σ t·z`` (= ``−Σ t · log_softmax(z)``, the plain model's loss). Two collectives over the
TP group: a MAX all-reduce of the row maxima, then one SUM all-reduce of the packed (Σ exp(z − max), Σ t·(z − max))
pairs. Backward is local: ``∂loss/∂z = softmax(z) · Σt − t`` (softmax − targets when rows sum to 1), times the
incoming gradient. megatron-core only has the hard-label ``vocab_parallel_cross_entropy``; this is its soft-target
counterpart.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from maws_scale.parallel.tp_layout import vocab_range


class _VocabParallelSoftCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, target_sum: torch.Tensor, group) -> torch.Tensor:
        if logits.shape[-1]:
            row_max = logits.max(dim=-1).values
        else:  # a rank holding only padding classes
            row_max = logits.new_full(logits.shape[:-1], float("-inf"))
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - row_max.unsqueeze(-1)
        exp = shifted.exp()
        sums = torch.stack([exp.sum(dim=-1), (targets * shifted).sum(dim=-1)])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        sum_exp, target_dot = sums
        ctx.save_for_backward(exp, sum_exp, targets, target_sum)
        return sum_exp.log() * target_sum - target_dot

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        exp, sum_exp, targets, target_sum = ctx.saved_tensors
        softmax = exp / sum_exp.unsqueeze(-1)
        grad = (softmax * target_sum.unsqueeze(-1) - targets) * grad_loss.unsqueeze(-1)
        return grad, None, None, None


def vocab_parallel_soft_cross_entropy(
    local_logits: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    group: dist.ProcessGroup | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """``soft_target_cross_entropy`` of the full logits, from this rank's vocab slice of them.

    ``local_logits`` (B, K_pad/tp): this rank's columns of the (padded) classifier output. ``targets``: the full
    (B, K) soft targets (every TP rank has the same batch) or this rank's (B, valid) slice. Padding classes are
    dropped before the softmax, so they get no probability and no gradient. Computed in fp32; reduction mean | sum |
    none, as the plain loss.
    """
    tp_size = dist.get_world_size(group)
    tp_rank = dist.get_rank(group)
    start, valid, local = vocab_range(num_classes, tp_rank, tp_size)
    if local_logits.shape[-1] != local:
        raise ValueError(
            f"local logits have {local_logits.shape[-1]} classes; {num_classes} classes over tensor-parallel size "
            f"{tp_size} give {local} per rank"
        )
    if targets.shape[-1] == num_classes:
        target_sum = targets.float().sum(dim=-1)
        targets = targets[..., start : start + valid]
    elif targets.shape[-1] == valid:
        target_sum = targets.float().sum(dim=-1)
        dist.all_reduce(target_sum, group=group)
    else:
        raise ValueError(
            f"targets have {targets.shape[-1]} classes; expected the full {num_classes} or this rank's {valid}"
        )
    logits = local_logits[..., :valid].float()
    loss = _VocabParallelSoftCE.apply(logits, targets.float(), target_sum, group)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be mean, sum or none, got '{reduction}'")


class VocabParallelSoftTargetCE:
    """The WSP criterion under TP: ``(local_logits, full_targets) -> loss`` (mean over the batch)."""

    def __init__(self, num_classes: int, group: dist.ProcessGroup | None = None) -> None:
        self.num_classes = num_classes
        self.group = group

    def __call__(self, local_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_soft_cross_entropy(local_logits, targets, self.num_classes, self.group)

    def __repr__(self) -> str:
        return f"VocabParallelSoftTargetCE(num_classes={self.num_classes})"


def gather_logits(local_logits: torch.Tensor, num_classes: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The full (B, K) logits from every rank's vocab slice (for metrics and evaluation; not differentiable)."""
    tp_size = dist.get_world_size(group)
    parts = [torch.empty_like(local_logits) for _ in range(tp_size)]
    dist.all_gather(parts, local_logits.detach().contiguous(), group=group)
    return torch.cat(parts, dim=-1)[..., :num_classes]
