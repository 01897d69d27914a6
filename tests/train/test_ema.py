"""The weight EMA against the formula written out, its swap for evaluation, and its refusals."""

from __future__ import annotations

import pytest
import torch

from maws_scale.config import ConfigError, load_config
from maws_scale.train.ema import WeightEMA


def test_ema_follows_decay_times_average_plus_rest_times_weights():
    model = torch.nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    ema = WeightEMA(model, 0.9)
    history = [w0]
    for step in range(3):
        with torch.no_grad():
            model.weight.add_(float(step + 1))
        history.append(model.weight.detach().clone())
        ema.update()
    w = history
    expected = 0.9 * (0.9 * (0.9 * w[0] + 0.1 * w[1]) + 0.1 * w[2]) + 0.1 * w[3]
    torch.testing.assert_close(ema.state_dict()["weight"], expected)


def test_swapped_puts_the_average_in_and_restores_the_trained_weights():
    model = torch.nn.Linear(3, 2)
    ema = WeightEMA(model, 0.5)
    with torch.no_grad():
        model.weight.mul_(3)
    trained = model.weight.detach().clone()
    ema.update()
    with ema.swapped():
        torch.testing.assert_close(model.weight, ema.state_dict()["weight"])
    assert torch.equal(model.weight, trained)
    state = ema.state_dict()
    other = WeightEMA(torch.nn.Linear(3, 2), 0.5)
    other.load_state_dict(state)
    torch.testing.assert_close(other.state_dict()["weight"], state["weight"])


def test_ema_needs_whole_weights_on_every_rank():
    with pytest.raises(ConfigError, match=r"finetune\.ema"):
        load_config(None, ["stage=finetune", "finetune.ema=0.99", "parallel.zero_stage=3"])
    with pytest.raises(ValueError, match=r"finetune\.ema"):
        WeightEMA(torch.nn.Linear(2, 2), 1.0)
    load_config(None, ["stage=finetune", "finetune.ema=0.99", "parallel.zero_stage=2"])
