"""Skipping bad optimizer steps (non-finite loss or gradients), the step's gradient norm, and the repair of the inner
optimizer after DeepSpeed's universal-checkpoint loader."""

from __future__ import annotations

import math
from typing import Any

import torch

from maws_scale.parallel.patches import route_optimizer_step


class StepGuard:
    """Skips optimizer updates judged bad: a non-finite loss anywhere in the window, or non-finite gradients.

    Installed on the *inner* optimizer that DeepSpeed drives, so every ZeRO stage skips the same way. DeepSpeed's
    ZeRO 1-3 (and its bf16/fp16 optimizers) also skip by themselves on a non-finite gradient norm, which
    ``engine.was_step_applied()`` reports; for fp32 ZeRO-0, where DeepSpeed hands the averaged gradients straight
    to our optimizer, :meth:`resolve` checks them and takes their norm before clipping.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, mpu: Any = None) -> None:
        self.optimizer = optimizer
        self.mpu = mpu
        self.check_grads = False
        self.skip_next = False
        self.skipped_by_grads = False
        self.grad_norm: float | None = None
        self.group_hparams: list[dict[str, Any]] = []
        self.group_names: list[list[str]] = []
        self._step = route_optimizer_step(optimizer, self._guarded_step)  # parallel/patches.py

    def arm(self, skip: bool) -> None:
        """Call before ``engine.step()`` at an accumulation boundary; ``skip`` drops this update."""
        self.skip_next = skip
        self.skipped_by_grads = False
        self.grad_norm = None

    def resolve(self, window: torch.Tensor) -> tuple[float, float]:
        """The step's one host sync, after the last backward of the window: arm (and, for fp32 ZeRO-0, measure).

        ``window`` is the device tensor (sum of finite losses, count of non-finite losses), already summed over
        ranks; the gradient norm joins it when we check gradients, and the whole is read at once. → (loss sum,
        non-finite count)."""
        values = window.detach().double()
        if self.check_grads:
            values = torch.cat([values, self._full_grad_norm().to(values).reshape(1)])
        host = values.tolist()
        self.arm(host[1] > 0)
        if self.check_grads:
            self.grad_norm = host[2]
            if not math.isfinite(host[2]):
                self.skipped_by_grads = True
                self.skip_next = True
        return host[0], host[1]

    def _full_grad_norm(self) -> torch.Tensor:
        """Global L2 norm of full gradients; tensor-parallel shards summed, replicated tensors counted once."""
        from deepspeed.runtime.utils import is_model_parallel_parameter

        tp_rank0 = self.mpu is None or self.mpu.get_tensor_model_parallel_rank() == 0
        grads = [
            p.grad.detach()
            for g in self.optimizer.param_groups
            for p in g["params"]
            if p.grad is not None and (tp_rank0 or is_model_parallel_parameter(p))
        ]
        # one foreach op instead of a norm per parameter (the step's largest own cost beside a plain loop, RESULTS.md)
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32) if grads else []
        total = torch.stack(norms).pow(2).sum() if norms else torch.zeros(())
        if self.mpu is not None and self.mpu.get_tensor_model_parallel_world_size() > 1:
            torch.distributed.all_reduce(total, group=self.mpu.get_tensor_model_parallel_group())
        return total.sqrt()

    def _guarded_step(self, *args: Any, **kwargs: Any) -> Any:
        if self.skip_next:
            return None
        return self._step(*args, **kwargs)


def repair_optimizer_after_load(engine: Any, guard: StepGuard) -> None:
    """Undo two side effects of DeepSpeed 0.19's universal-checkpoint loader on the inner optimizer.

    It copies the hyper-parameters of group 0 onto every group (weight decay on norms and biases), and gives every
    sub-group's Adam state the *same* ``step`` tensor, which torch's AdamW then increments once per group and step
    (wrong bias correction from the second group on). Harmless after a regular load.
    """
    groups = engine.optimizer.param_groups
    if len(groups) != len(guard.group_hparams):
        raise RuntimeError(
            f"optimizer has {len(groups)} parameter groups after loading, expected {len(guard.group_hparams)}"
        )
    for group, hparams in zip(groups, guard.group_hparams):
        group.update(hparams)
    for state in guard.optimizer.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            state["step"] = step.clone()


def global_grad_norm(engine: Any, guard: StepGuard) -> float | None:
    """The pre-clipping global gradient norm of the last step, whichever ZeRO stage computed it."""
    norm = engine.get_global_grad_norm()
    if norm is None:
        norm = guard.grad_norm
    if norm is None:
        return None
    norm = float(norm.item() if torch.is_tensor(norm) else norm)
    return norm if math.isfinite(norm) and norm >= 0 else float("nan")
