"""``selective_op`` with ``model.compile`` (issue 30 item 7b, compile half): the selective policy cannot see inside
a compiled block, so the combination is refused at config check, and the planner never proposes it."""

from __future__ import annotations

import pytest

from maws_scale.config import ConfigError, load_config
from maws_scale.perf.planner import Hardware, candidate_layouts


@pytest.mark.parametrize("compile_mode", ["blocks", "full"])
def test_selective_op_under_compile_is_refused_naming_both_keys(compile_mode):
    overrides = [f"model.compile={compile_mode}", "parallel.activation_checkpointing=selective_op"]
    with pytest.raises(ConfigError, match=rf"selective_op with model.compile={compile_mode}.*full or every_k"):
        load_config(None, overrides)


@pytest.mark.parametrize("ckpt", ["none", "full", "every_k:2"])
def test_defined_modes_compile(ckpt):
    load_config(None, ["model.compile=blocks", f"parallel.activation_checkpointing={ckpt}"])
    load_config(None, ["model.compile=none", "parallel.activation_checkpointing=selective_op"])


@pytest.mark.parametrize(("compile_mode", "proposed"), [("none", True), ("blocks", False)])
def test_the_planner_proposes_selective_op_only_without_compile(compile_mode, proposed):
    cfg = load_config(None, ["model.name=vit_l16", f"model.compile={compile_mode}"])
    modes = {layout.recompute for layout in candidate_layouts(cfg, Hardware(gpus=8))}
    assert ("selective_op" in modes) == proposed and {"none", "full"} <= modes
