"""StepGuard's gradient norm (fp32 ZeRO-0, where DeepSpeed hands the gradients straight to our optimizer)."""

from __future__ import annotations

import torch
from torch import nn

from maws_scale.parallel.step_guard import StepGuard


def guarded(seed: int = 0) -> tuple[nn.Module, StepGuard]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    optimizer = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[2].parameters()}])
    return model, StepGuard(optimizer)


def test_the_norm_is_torchs_total_norm_and_a_non_finite_gradient_skips_the_step():
    model, guard = guarded()
    model(torch.randn(5, 8)).square().sum().backward()
    model[2].bias.grad = None  # a parameter without a gradient is left out
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    guard.check_grads = True
    loss_sum, bad = guard.resolve(torch.tensor([3.0, 0.0]))
    assert (loss_sum, bad) == (3.0, 0.0) and not guard.skip_next
    assert abs(guard.grad_norm - expected.item()) <= 1e-6 * expected.item()

    model[0].weight.grad[0, 0] = float("nan")
    guard.resolve(torch.tensor([3.0, 0.0]))
    assert guard.skip_next and guard.skipped_by_grads
    before = [p.detach().clone() for p in model.parameters()]
    guard.optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # skipped
