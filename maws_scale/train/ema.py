"""An exponential moving average of the weights (timm ``ModelEmaV2``): after every applied optimizer step,
``ema = decay · ema + (1 − decay) · weights``, kept in fp32 beside the model, swapped in for evaluation.

It averages the parameters this rank holds, so it needs every rank to hold the whole model (ZeRO 0-2, no tensor
parallelism; the config refuses the rest)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


class WeightEMA:
    """fp32 shadow copies of ``module``'s parameters, updated with :meth:`update`."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"finetune.ema must lie in (0, 1), got {decay}")
        self.decay = decay
        named = list(module.named_parameters())
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        self.shadow = [param.detach().float().clone() for param in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average toward the current weights."""
        current = [param.detach().float() for param in self.params]
        torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model for the duration (the trained ones restored after)."""
        saved = [param.detach().clone() for param in self.params]
        with torch.no_grad():
            for param, value in zip(self.params, self.shadow, strict=True):
                param.copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, saved, strict=True):
                    param.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.clone() for name, value in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise ValueError(f"the EMA state lacks {missing[:4]}")
        self.shadow = [state[name].float().to(param.device).clone() for name, param in zip(self.names, self.params)]

    def save(self, path: Path) -> Path:
        """``torch.save`` of :meth:`state_dict` through a temp file and a rename."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)
        return path
