"""The demo's loss curves, pinned: MAE then WSP from it, exactly as configs/demo.yaml sets them up (model, image size,
batch, learning rates, schedule, seed), shortened to 40 steps each on the 512-mosaic test set.

A change that moves any step's loss by more than ``rtol`` (relative) fails here. Regenerate the curves only when a
change is *meant* to move them, and say so in the commit:

    MAWS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/train/test_golden_curve.py

The tolerance covers other x86 CPUs: the curves computed with AVX2-only kernels (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``, as on AMD without AVX-512) are recorded in the asset next to
the reference, with their largest deviation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from maws_scale.config import load_config
from maws_scale.train.loop import train_stage
from maws_scale.train.pipeline import stage_configs

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "assets" / "golden_demo_losses.json"
STEPS = 40
RTOL = 2e-3


def demo_curves(mosaics: Path, out: Path, world) -> dict[str, list[float]]:
    """Per-step losses of the demo's MAE and WSP stages (40 steps each) on ``mosaics``."""
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [f"data.path={mosaics / 'train'}", f"output_dir={out}", "tracking.enabled=false", "eval.enabled=false"],
    )
    mae, wsp = stage_configs(cfg)
    curves = {}
    for stage_cfg in (mae, wsp):
        stage_cfg.train.steps = STEPS
        curves[stage_cfg.stage] = train_stage(stage_cfg, world).losses
    return curves


def test_demo_losses_match_the_golden_curves(mosaics, tmp_path, world):
    curves = demo_curves(mosaics, tmp_path, world)
    assert {stage: len(losses) for stage, losses in curves.items()} == {"mae": STEPS, "wsp": STEPS}
    if os.environ.get("MAWS_UPDATE_GOLDEN") == "1":
        record = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        record.update({"steps": STEPS, "rtol": RTOL, "losses": curves})
        GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    for stage, losses in golden["losses"].items():
        assert curves[stage] == pytest.approx(losses, rel=RTOL), f"{stage} loss curve moved (see this file's docstring)"
    assert curves["mae"][-1] < 0.8 * curves["mae"][0]  # both stages learn within the window
    assert curves["wsp"][-1] < curves["wsp"][0]
