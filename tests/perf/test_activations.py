"""The analytic activation model against what autograd really saves for backward (saved-tensor hooks, by storage)
on the real models, CPU, torch reference kernels."""

from __future__ import annotations

import pytest
import torch

from maws_scale.config import load_config
from maws_scale.model_config import build_model
from maws_scale.models import soft_target_cross_entropy
from maws_scale.perf.activations import estimate
from maws_scale.perf.storage import SavedTensors

BATCH = 4
CASES = [
    ("vit_tiny_p4", "mae", "bf16", "sdpa", False),
    ("vit_tiny_p4", "mae", "bf16", "sdpa", True),
    ("vit_tiny_p4", "wsp", "bf16", "math", False),
    ("vit_tiny_p8", "wsp", "fp32", "sdpa", False),
    ("vit_tiny_p8", "wsp", "bf16", "sdpa", True),
    ("vit_small_p8", "mae", "fp32", "math", False),
]


@pytest.mark.parametrize(("name", "stage", "precision", "attention", "ckpt"), CASES)
def test_activation_model_matches_saved_tensors(name, stage, precision, attention, ckpt) -> None:
    cfg = load_config(
        None,
        [
            f"model.name={name}",
            f"stage={stage}",
            "wsp.num_classes=100",
            f"parallel.precision={precision}",
            f"model.attention={attention}",
            f"parallel.activation_checkpointing={ckpt}",
            "model.kernels=torch",
        ],
    )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    model = build_model(cfg).to(dtype)
    images = torch.randn(BATCH, 3, cfg.img_size, cfg.img_size, dtype=dtype)
    with SavedTensors(model.parameters()) as saved:
        if stage == "mae":
            loss = model(images)[0]
        else:
            targets = torch.softmax(torch.randn(BATCH, 100), dim=-1)
            loss = soft_target_cross_entropy(model(images), targets)
    loss.backward()
    est = estimate(cfg, fused_kernels=False)
    predicted = BATCH * (est.blocks + est.other)  # the recomputed block only lives during backward
    assert saved.bytes > 0
    assert predicted == pytest.approx(saved.bytes, rel=0.03)
    if ckpt:
        assert est.recompute > 0
