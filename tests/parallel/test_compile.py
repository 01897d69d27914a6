"""model.compile: compiled vs eager (model; trainer at ZeRO 0-3), one graph per block stack, clean keys.

Backend ``aot_eager`` (Dynamo + AOTAutograd, eager kernels): it checks what compilation changes in our code (tracing,
the autograd graph, activation checkpointing around compiled blocks, DeepSpeed's hooks) without inductor's C++
build, which takes ~65 s for the tiny MAE on this 2-core machine. Tolerance: fp32, ``rtol=1e-5, atol=1e-6``
(aot_eager runs the same kernels in the same order, so the measured differences are 0).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from maws_scale.config import load_config
from maws_scale.models.build import build_mae, build_wsp
from maws_scale.models.registry import get_spec
from maws_scale.parallel.compile import CompileDowngradeWarning, apply_compile, compile_blocks, effective_compile

RTOL, ATOL = 1e-5, 1e-6


def _model(stage: str, depth: int = 3):
    spec = dataclasses.replace(get_spec("vit_micro_p4"), depth=depth)
    torch.manual_seed(0)
    return build_mae(spec) if stage == "mae" else build_wsp(spec, num_classes=10)


def _loss_and_grads(model, stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, model.img_size, model.img_size, generator=gen)
    if stage == "mae":
        noise = torch.rand(4, model.patch_embed.num_patches, generator=gen)
        loss = model(x, noise=noise)[0]
    else:
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(4) % 10)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("stage", ["mae", "wsp"])
@pytest.mark.parametrize("mode", ["blocks", "full"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_model_matches_eager_losses_and_gradients(stage, mode, checkpointing):
    eager, compiled = _model(stage), _model(stage)
    for m in (eager, compiled):
        m.set_recompute(checkpointing)
    counter = CompileCounterWithBackend("aot_eager")
    if mode == "blocks":
        compile_blocks(compiled, counter)
    else:
        compiled.compile(backend=counter, dynamic=False)  # what engine.compile does to engine.module
    loss_e, grads_e = _loss_and_grads(eager, stage)
    loss_c, grads_c = _loss_and_grads(compiled, stage)
    assert counter.frame_count >= 1  # the compiled path really ran
    torch.testing.assert_close(loss_c, loss_e, rtol=RTOL, atol=ATOL)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 10
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("depth", [2, 5])
def test_blocks_compile_once_per_stack_whatever_the_depth(depth):
    """One graph for the encoder's blocks and one for the decoder's (another width), at any depth, over two steps
    with activation checkpointing (the recompute reuses the graph): compile time does not grow with depth."""
    model = _model("mae", depth)
    model.set_recompute(True)
    counter = CompileCounterWithBackend("aot_eager")
    assert compile_blocks(model, counter) == depth + model.decoder_depth
    for _ in range(2):
        _loss_and_grads(model, "mae")
    assert counter.frame_count == 2
    wsp = _model("wsp", depth)
    counter = CompileCounterWithBackend("aot_eager")
    compile_blocks(wsp, counter)
    _loss_and_grads(wsp, "wsp")
    _loss_and_grads(wsp, "wsp")
    assert counter.frame_count == 1


def test_full_compile_of_the_mae_is_one_graph():
    """Before: the kernel dispatch (triton import, ``triton.knobs``, an lru_cache) split the MAE into 7 graphs."""
    from maws_scale.kernels.dispatch import prepare_compile

    prepare_compile()  # what apply_compile does before compiling
    model = _model("mae")
    counter = CompileCounterWithBackend("aot_eager")
    model.compile(backend=counter, dynamic=False)
    _loss_and_grads(model, "mae")
    assert counter.frame_count == 1


def test_compiling_keeps_parameter_names():
    model = _model("mae")
    names = list(model.state_dict())
    compile_blocks(model, "aot_eager")
    model.compile(backend="aot_eager")
    assert list(model.state_dict()) == names and not any("_orig_mod" in n for n in names)


@pytest.mark.parametrize(
    ("overrides", "expected", "warned"),
    [
        (["model.compile=full", "parallel.zero_stage=3"], "blocks", "zero_stage=3"),
        (["model.compile=full", "model.name=vit_tiny_p4", "parallel.tp=2"], "blocks", "parallel.tp=2"),
        (["model.compile=full", "parallel.zero_stage=1"], "full", None),
        (["model.compile=blocks", "parallel.zero_stage=3"], "blocks", None),
        (["model.compile=none"], "none", None),
    ],
)
def test_incompatible_full_compile_is_downgraded_with_one_warning(overrides, expected, warned):
    cfg = load_config(None, overrides)
    assert effective_compile(cfg)[0] == expected

    class Engine:
        module = _model("wsp")
        compiled = None

        def compile(self, backend, compile_kwargs):
            self.compiled = backend

    engine = Engine()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert apply_compile(engine, cfg, backend="aot_eager") == expected
    ours = [w for w in caught if issubclass(w.category, CompileDowngradeWarning)]
    assert len(ours) == (1 if warned else 0)
    if warned:
        assert warned in str(ours[0].message)
    assert (engine.compiled == "aot_eager") == (expected == "full")


def test_config_refuses_unknown_compile_modes():
    from maws_scale.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.compile"):
        load_config(None, ["model.compile=everything"])
    with pytest.raises(ConfigError, match=r"model\.compile_backend"):
        load_config(None, ["model.compile_backend=tensorrt"])


# ----- the trainer: compiled vs eager under DeepSpeed, checkpoints and consolidated.pt -----------------------------
_EAGER: dict[tuple[str, int], tuple[list[float], dict[str, torch.Tensor]]] = {}


def _train(world, tmp_path, stage: str, zero: int, mode: str):
    from maws_scale.train.loop import Trainer

    overrides = [
        "model.name=vit_micro_p4",
        "data.num_workers=0",
        "data.synthetic=true",
        "parallel.precision=fp32",
        "optim.impl=torch",
        "tracking.enabled=false",
        "eval.enabled=false",
        "train.global_batch=4",
        "train.micro_batch=4",
        "train.steps=3",
        "parallel.activation_checkpointing=true",
        f"stage={stage}",
        f"parallel.zero_stage={zero}",
        f"model.compile={mode}",
        "model.compile_backend=aot_eager",
        f"output_dir={tmp_path / mode}",
    ]
    if stage == "wsp":
        overrides += ["wsp.init=random", "wsp.num_classes=10"]
    result = Trainer(load_config(None, overrides), world).run()
    return result.losses, torch.load(result.consolidated, map_location="cpu", weights_only=True), result


@pytest.mark.parametrize(("stage", "zero", "mode"), [("mae", 1, "blocks"), ("mae", 3, "blocks"), ("wsp", 1, "full"),
                                                     ("wsp", 3, "blocks"), ("mae", 1, "full"), ("mae", 0, "full"),
                                                     ("wsp", 2, "blocks")])  # fmt: skip
def test_compiled_training_matches_eager_under_zero(world, tmp_path, stage, zero, mode):
    """3 steps with activation checkpointing: equal losses, equal final weights, clean keys everywhere."""
    if (stage, zero) not in _EAGER:
        losses, weights, _ = _train(world, tmp_path, stage, zero, "none")
        _EAGER[(stage, zero)] = (losses, weights)
    eager_losses, eager_weights = _EAGER[(stage, zero)]
    torch._dynamo.utils.counters.clear()
    losses, weights, result = _train(world, tmp_path, stage, zero, mode)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 1  # compiled code ran
    if mode == "blocks":  # one graph per block stack (MAE: encoder and decoder), never one per block
        assert graphs == (2 if stage == "mae" else 1)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager_losses), rtol=RTOL, atol=ATOL)
    assert list(weights) == list(eager_weights)
    for name in weights:
        torch.testing.assert_close(weights[name], eager_weights[name], rtol=RTOL, atol=ATOL, msg=name)
    saved = sorted(result.stage_dir.glob("checkpoints/step_*/*model_states.pt"))
    assert saved
    for path in saved:
        module = torch.load(path, map_location="cpu", weights_only=False)["module"]
        assert module and not any("_orig_mod" in k for k in module), path
