"""FP8's CUDA-only risks, tested on CPU (issue 30 items 7a, 7c): the micro-batch × tokens shape rule of the FP8
weight gradient, refused at config check, and the warning for eager (uncompiled) FP8."""

from __future__ import annotations

import warnings

import pytest
import torch

from maws_scale.config import ConfigError, load_config
from maws_scale.models.build import build_mae, build_wsp
from maws_scale.parallel.fp8 import Fp8EagerWarning, apply_fp8, encoder_tokens, fp8_micro_batch_problem


def cfg(*overrides: str):
    return load_config(None, ["parallel.precision=bf16", "train.global_batch=64", *overrides])


@pytest.mark.parametrize(("stage", "tokens"), [("mae", 65), ("wsp", 257)])
def test_vit_2b14_token_counts_are_odd(stage, tokens):
    assert encoder_tokens(cfg("model.name=vit_2b14", f"stage={stage}")) == tokens


@pytest.mark.parametrize("stage", ["mae", "wsp"])
def test_the_token_count_is_what_the_blocks_see(stage):
    """The rule's token count against the model: the rows entering the first encoder block (class token included)."""
    c = cfg("model.name=vit_micro_p4", f"stage={stage}", "wsp.num_classes=8")
    model = build_mae("vit_micro_p4") if stage == "mae" else build_wsp("vit_micro_p4", num_classes=8)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    model(torch.randn(2, 3, c.img_size, c.img_size))
    assert seen == [encoder_tokens(c)]


@pytest.mark.parametrize("micro", [1, 2, 4, 8, 24])
@pytest.mark.parametrize("stage", ["mae", "wsp"])
def test_a_micro_batch_fp8_backward_cannot_take_is_refused_at_config_check(stage, micro):
    overrides = ["model.name=vit_2b14", f"stage={stage}", f"train.micro_batch={micro}", "parallel.fp8=tensorwise"]
    with pytest.raises(ConfigError, match=rf"train.micro_batch={micro} × \d+ encoder tokens.*multiple of 16"):
        cfg(*overrides)


@pytest.mark.parametrize("micro", [16, 32])
def test_multiples_of_16_pass_and_emulation_takes_any_shape(micro):
    assert (
        fp8_micro_batch_problem(cfg("model.name=vit_2b14", f"train.micro_batch={micro}", "parallel.fp8=rowwise"))
        is None
    )
    emulated = cfg("model.name=vit_2b14", "train.micro_batch=8", "parallel.fp8=rowwise", "parallel.fp8_emulate=true")
    assert fp8_micro_batch_problem(emulated) is None
    assert fp8_micro_batch_problem(cfg("model.name=vit_2b14", "train.micro_batch=3")) is None  # fp8 off


@pytest.mark.parametrize(("compile_mode", "warns"), [("none", True), ("blocks", False)])
def test_eager_fp8_warns(compile_mode, warns):
    c = cfg("parallel.fp8=tensorwise", "parallel.fp8_emulate=true", f"model.compile={compile_mode}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_fp8(build_mae("vit_micro_p4"), c, "cpu")
    eager = [w for w in caught if issubclass(w.category, Fp8EagerWarning)]
    assert len(eager) == (1 if warns else 0)
    if warns:
        assert "model.compile=blocks" in str(eager[0].message)


@pytest.mark.parametrize("stage", ["mae", "wsp"])
def test_the_planner_proposes_only_micro_batches_fp8_can_take(stage):
    from maws_scale.perf.planner import Hardware, search

    c = cfg(
        "model.name=vit_l16",
        f"stage={stage}",
        "train.global_batch=4096",
        "wsp.num_classes=1000",
        "train.micro_batch=16",
        "parallel.fp8=rowwise",
    )
    rows = [r for r in search(c, Hardware(gpus=1)) if r.fits]  # one GPU: FP8 refuses TP
    assert rows and all(r.micro_batch * encoder_tokens(c) % 16 == 0 for r in rows)
