"""Bad inputs to ``eval`` end in one clear line: unreadable checkpoint files and labels outside [0, 2**20)."""

from __future__ import annotations

import pytest
import torch

from maws_scale.config import ConfigError, load_config
from maws_scale.eval.checkpoint import CheckpointError, load_encoder
from maws_scale.eval.evaluate import evaluate_features
from maws_scale.eval.features import Features
from maws_scale.models import build_encoder


@pytest.mark.parametrize("damage", ["empty", "random", "truncated"])
def test_an_unreadable_checkpoint_file_is_a_checkpoint_error_naming_it(tmp_path, damage):
    path = tmp_path / "w.pt"
    torch.save(build_encoder("vit_micro_p4").state_dict(), path)
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "random": bytes(range(256)) * 8, "truncated": data[: len(data) // 2]}[damage])
    with pytest.raises(CheckpointError, match=rf"{path}: cannot load checkpoint \(not a readable checkpoint"):
        load_encoder(load_config(None, ["model.name=vit_micro_p4"]), path)


@pytest.mark.parametrize("label", [2**62, -1])
def test_labels_outside_the_class_range_are_refused_naming_the_data_set(label):
    y = torch.arange(40) % 4
    y[7] = label
    good = Features(x=torch.randn(40, 8), y=torch.arange(40) % 4, keys=[f"k{i}" for i in range(40)])
    bad = Features(x=torch.randn(40, 8), y=y, keys=[f"k{i}" for i in range(40)])
    with pytest.raises(ConfigError, match=rf"data.eval_path: label {label} "):
        evaluate_features(good, bad, load_config(None, ["eval.few_shot=[1]"]))
