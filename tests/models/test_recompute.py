"""Activation checkpointing modes: same gradients as no checkpointing, and each mode recomputes what it says."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import maws_scale.models.recompute as ckpt
from maws_scale.config import ConfigError, load_config
from maws_scale.model_config import build_model
from maws_scale.models.recompute import parse_mode, recomputed_blocks
from maws_scale.models.text import TextTransformer
from maws_scale.perf.activations import estimate
from maws_scale.perf.storage import SavedTensors

MODES = ["none", "full", "every_k:2", "every_k:3", "selective_op"]


def _cfg(stage: str, mode: str, *extra: str):
    return load_config(
        None,
        [
            "model.name=vit_tiny_p8",
            f"stage={stage}",
            "wsp.num_classes=10",
            "model.kernels=torch",
            "model.img_size=32",
            f"parallel.activation_checkpointing={mode}",
            "model.drop_path=0.1",
            *extra,
        ],
    )


def _grads(stage: str, mode: str, attention: str = "sdpa") -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model(_cfg(stage, mode, f"model.attention={attention}"))
    model.train()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = model(images)[0] if stage == "mae" else model(images).logsumexp(-1).mean()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage", ["mae", "wsp"])
@pytest.mark.parametrize("mode", MODES[1:])
def test_gradients_equal_no_checkpointing(stage: str, mode: str) -> None:
    loss0, ref = _grads(stage, "none")
    loss, got = _grads(stage, mode)
    assert loss == loss0
    assert got.keys() == ref.keys()
    for name in ref:  # fp32, same ops in the same order: recompute reproduces the forward to rounding
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_selective_with_math_attention_matches() -> None:
    _, ref = _grads("wsp", "none", "math")
    _, got = _grads("wsp", "selective_op", "math")
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_block_rule() -> None:
    assert recomputed_blocks("every_k:2", 5) == [False, True, False, True, False]
    assert recomputed_blocks("every_k:3", 6) == [False, False, True, False, False, True]
    assert recomputed_blocks("full", 3) == [True] * 3 == recomputed_blocks("selective_op", 3)
    assert recomputed_blocks("none", 2) == [False, False]
    assert parse_mode(True) == "full" and parse_mode(False) == "none" and parse_mode("every_k:1") == "full"
    for bad in ("every_k:0", "every_2", "sometimes"):
        with pytest.raises(ValueError, match="unknown activation checkpointing mode"):
            parse_mode(bad)
    with pytest.raises(ConfigError, match=r"parallel\.activation_checkpointing"):
        load_config(None, ["parallel.activation_checkpointing=every_k:x"])
    # the old boolean configs keep working
    assert load_config(None, ["parallel.activation_checkpointing=true"]).parallel.activation_checkpointing == "full"


@pytest.mark.parametrize(("mode", "twice"), [("none", []), ("full", [0, 1, 2, 3]), ("every_k:2", [1, 3])])
def test_blocks_run_forward_twice_only_where_checkpointed(mode: str, twice: list[int]) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg("wsp", mode, "model.depth=4"))
    calls = [0] * 4
    for i, block in enumerate(model.blocks):
        # on the first submodule: recompute calls the checkpointed module's forward without its own hooks, and
        # stops early once the last tensor backward needs is recomputed
        block.norm1.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert [i for i, c in enumerate(calls) if c == 2] == twice
    assert all(c in (1, 2) for c in calls)


class OpCounter(TorchDispatchMode):
    """Counts aten ops by name; ``phase`` tells forward from backward."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.counts: dict[tuple[str, str], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        key = (self.phase, func.overloadpacket.__name__)
        self.counts[key] = self.counts.get(key, 0) + 1
        return func(*args, **(kwargs or {}))

    def n(self, phase: str, *names: str) -> int:
        return sum(self.counts.get((phase, name), 0) for name in names)


def _backward_ops(mode: str) -> OpCounter:
    torch.manual_seed(0)
    model = build_model(_cfg("wsp", mode, "model.attention=sdpa"))
    images = torch.randn(2, 3, 32, 32)
    with OpCounter() as counter:
        loss = model(images).sum()
        counter.phase = "backward"
        loss.backward()
    return counter


def test_selective_recomputes_no_matmul_but_the_norms() -> None:
    none, full, sel = _backward_ops("none"), _backward_ops("full"), _backward_ops("selective_op")
    mm = ("addmm", "mm", "bmm")
    attn = ("_scaled_dot_product_flash_attention_for_cpu",)
    depth = 6  # vit_tiny_p8; 4 linears per block (full may stop before the last fc2: checkpoint's early stop)
    assert full.n("backward", *mm) >= none.n("backward", *mm) + 3 * depth  # full re-runs the linears
    assert full.n("backward", *attn) == depth
    assert sel.n("backward", *mm) == none.n("backward", *mm)  # selective: no matmul twice
    assert sel.n("backward", *attn) == 0
    assert none.n("backward", "native_layer_norm", "gelu") == 0
    assert sel.n("backward", "native_layer_norm") == 2 * depth  # ... but the norms and GELU again
    assert sel.n("backward", "gelu") == depth


@pytest.mark.parametrize(("stage", "attention"), [("wsp", "sdpa"), ("mae", "sdpa"), ("wsp", "math")])
def test_selective_activation_model_matches_what_is_kept(monkeypatch, stage: str, attention: str) -> None:
    """The planner's bytes for selective_op against what is really held after forward: tensors saved through
    autograd (block inputs, everything outside the blocks) plus the policy's cache of matmul outputs."""
    caches = []

    def observed():
        fwd, rec = torch.utils.checkpoint.create_selective_checkpoint_contexts(ckpt.save_matmuls)
        caches.append(fwd.storage)
        return fwd, rec

    monkeypatch.setattr(ckpt, "selective_contexts", observed)
    cfg = _cfg(stage, "selective_op", f"model.attention={attention}", "parallel.precision=bf16")
    torch.manual_seed(0)
    model = build_model(cfg).to(torch.bfloat16)
    batch = 4
    images = torch.randn(batch, 3, 32, 32, dtype=torch.bfloat16)
    with SavedTensors(model.parameters()) as saved:
        loss = model(images)[0] if stage == "mae" else model(images).float().logsumexp(-1).mean()
    cached: dict[int, int] = {}
    for storage in caches:  # {op key: {call index (2.13) or position (2.11, a list): output(s) or recompute marker}}
        for entries in storage.values():
            for entry in entries.values() if isinstance(entries, dict) else entries:
                for leaf in tree_leaves(entry):
                    t = getattr(leaf, "val", None)
                    if isinstance(t, torch.Tensor):
                        cached[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    measured = saved.bytes + sum(v for k, v in cached.items() if k not in saved._seen)
    est = estimate(cfg, fused_kernels=False)
    assert cached and measured == pytest.approx(batch * (est.blocks + est.other), rel=0.03)
    loss.backward()
    full = estimate(cfg, checkpointing="none", fused_kernels=False)
    assert est.blocks < full.blocks


def test_text_tower_modes_match() -> None:
    def grads(mode):
        torch.manual_seed(0)
        model = TextTransformer(100, 8, 32, 3, 4)
        model.set_recompute(mode)
        model(torch.randint(1, 100, (2, 8))).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    ref = grads(False)
    for mode in ("full", "every_k:2", "selective_op"):
        for a, b in zip(ref, grads(mode), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
