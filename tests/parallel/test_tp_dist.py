"""Tensor parallelism against TP=1 on several CPU ranks (gloo): tests/parallel/tp_worker.py does the work.

Each scenario builds the plain model on every rank from one seed and checks its TP shard against it in-process, so
a failure names the step and the tensor. Tiny model (vit_tiny_p4: width 96, 4 heads), fp32, tolerance 1e-5 relative
to each tensor's largest magnitude.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.dist


@pytest.mark.parametrize(
    "scenario",
    [
        "equivalence-mae",
        "equivalence-mae-replicated-decoder",
        "equivalence-wsp-activation-checkpointing",
        "equivalence-mae-compiled-blocks",
        "equivalence-wsp-compiled-blocks-checkpointing",
    ],
)
def test_tp2_matches_tp1_over_steps(tp_scenario, scenario):
    """TP=2: loss, every gradient, clipped grad norm and the parameters after 3 SGD steps equal TP=1 (drop-path on;
    MAE masks from one generator, decoder sharded or replicated; WSP K=11 padded to 12, activation checkpointing;
    model.compile=blocks on the TP model, aot_eager)."""
    assert tp_scenario(scenario).output.count("step ") == 3


@pytest.mark.parametrize("stage", ["mae", "wsp"])
def test_tp2_dp2_zero3_matches_tp1(tp_scenario, stage):
    """The trainer's TensorParallelPlan (meta build) + deepspeed.initialize(mpu=plan.mpu), ZeRO-3 over DP=2,
    clipping on: per-step loss, full gradients, DeepSpeed's global grad norm and the final parameters equal a TP=1
    single-process reference; DeepSpeed's TP-sharded checkpoint consolidates offline to the same plain state dict."""
    run = tp_scenario(f"zero3-{stage}")
    assert sorted(p.name for p in (run.dir / "final").glob("*mp_rank_01*")), "no TP-rank-1 files were written"


def test_vocab_parallel_cross_entropy_equals_full(tp_scenario):
    """Value and gradient for K = 2, 7, 10, 33 over 4 ranks (padding; ranks holding only padding), full or local
    targets, a row summing to 3; gather_logits returns the full logits."""
    tp_scenario("cross_entropy")


def test_checkpoint_tp2_loads_at_tp1_and_tp4(tp_scenario):
    """Sharded files + tp_layout.json written at TP=2; offline merge == online gather; TP=1 and TP=4 give the same
    logits; an MAE (TP=1) encoder goes into a TP=4 WSP model and comes back bit-identical."""
    assert (tp_scenario("checkpoints").dir / "tp_layout.json").exists()


def test_meta_model_initialised_directly_sharded(tp_scenario):
    """A meta-device model gets sharded weights without ever materialising them whole; replicated tensors agree
    across TP ranks; per-rank parameter counts equal tp_param_counts."""
    tp_scenario("meta_init")
