"""Multi-rank scenarios for the tensor-parallel tests, run under torchrun by tests/parallel/test_tp_*.py.

``python -m torch.distributed.run --nproc_per_node N tp_worker.py SCENARIO [options]``. Every rank builds the plain
reference model from the same seed *in its own process*, so it can compare its TP shard against TP=1 locally; a
mismatch raises (non-zero exit) with the offending tensor named. Each scenario prints ``<scenario> OK`` on rank 0;
``TP_DEBUG=1`` prints every comparison (difference and magnitude).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

warnings.filterwarnings("ignore")

from dist_support import prepare_worker  # noqa: E402

from maws_scale.config import load_config  # noqa: E402
from maws_scale.models import build_mae, build_wsp, soft_target_cross_entropy  # noqa: E402
from maws_scale.models.registry import get_spec  # noqa: E402
from maws_scale.parallel.distributed import init_distributed, shutdown_distributed  # noqa: E402
from maws_scale.parallel.mpu import destroy_model_parallel, init_model_parallel  # noqa: E402
from maws_scale.parallel.plan import make_plan  # noqa: E402
from maws_scale.parallel.tensor_parallel import parallelize_vit  # noqa: E402
from maws_scale.parallel.tp_checkpoint import (  # noqa: E402
    consolidate_deepspeed_checkpoint,
    gather_tensor_parallel_state_dict,
    load_plain_state_dict,
)
from maws_scale.parallel.tp_layout import TPLayout, merge_state_dicts, shard_state_dict  # noqa: E402
from maws_scale.parallel.tp_loss import VocabParallelSoftTargetCE, gather_logits  # noqa: E402
from maws_scale.perf.inventory import build_inventory  # noqa: E402

ATOL = 1e-5
MODEL = "vit_tiny_p4"


def check(name: str, got: torch.Tensor, want: torch.Tensor, atol: float = ATOL) -> None:
    """``got`` equals ``want`` to ``atol`` relative to the larger of 1 and ``want``'s largest magnitude."""
    if got.shape != want.shape:
        raise AssertionError(f"rank {dist.get_rank()}: {name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    if not got.numel():
        return
    want = want.detach().double()
    diff = (got.detach().double() - want).abs().max().item()
    tol = atol * max(1.0, want.abs().max().item())
    if os.environ.get("TP_DEBUG") and dist.get_rank() == 0:
        print(f"{name}: diff {diff:.3g} max {want.abs().max().item():.3g}")
    if not diff <= tol:
        raise AssertionError(f"rank {dist.get_rank()}: {name}: max |diff| {diff:.3g} > {tol:.3g}")


def say(*args) -> None:
    if dist.get_rank() == 0:
        print(*args, flush=True)


def build(stage: str, num_classes: int, device: str | None = None, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if stage == "mae":
        return build_mae(MODEL, device=device, attention="math", **kw)
    return build_wsp(MODEL, num_classes, device=device, attention="math", **kw)


def batch(step: int, size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same global batch on every rank: images and soft multi-hot targets (rows sum to 1)."""
    gen = torch.Generator().manual_seed(1000 + step)
    spec = get_spec(MODEL)
    imgs = torch.randn(size, 3, spec.img_size, spec.img_size, generator=gen)
    hot = (torch.rand(size, num_classes, generator=gen) < 0.3).float()
    hot[:, 0] += (hot.sum(1) == 0).float()
    return imgs, hot / hot.sum(1, keepdim=True)


def loss_of(model, stage: str, imgs, targets, step: int, criterion=None) -> torch.Tensor:
    if stage == "mae":  # the same masks on every rank and layout: a generator seeded by the step
        return model(imgs, generator=torch.Generator().manual_seed(step))[0]
    logits = model(imgs)
    return criterion(logits, targets) if criterion is not None else soft_target_cross_entropy(logits, targets)


def sgd(model) -> torch.optim.Optimizer:
    """SGD with momentum: updates linear in the gradients, so a mis-scaled gradient shows in the parameters (Adam's
    first steps are sign-like and would amplify round-off in near-zero gradients into O(lr) differences)."""
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)


def local_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


# ----- scenarios -------------------------------------------------------------------------------------------------
def equivalence(args) -> None:
    """TP = world (DP 1), torch SGD + DeepSpeed's mpu-aware clip_grad_norm_: losses, grads, norms, params."""
    from deepspeed.runtime.utils import clip_grad_norm_

    mpu = init_model_parallel(dist.get_world_size())
    group, tp_rank = mpu.get_tensor_model_parallel_group(), mpu.get_tensor_model_parallel_rank()
    ref = build(args.stage, args.classes, drop_path=args.drop_path)
    tp = parallelize_vit(copy.deepcopy(ref), group, shard_decoder=not args.replicate_decoder)
    tp.set_recompute(args.checkpointing)  # recomputation re-runs the TP collectives and drop-path draws
    if args.compile:  # model.compile=blocks on the sharded blocks (aot_eager: no C++ build), against eager TP=1
        from maws_scale.parallel.compile import compile_blocks

        compile_blocks(tp, "aot_eager")
    criterion = VocabParallelSoftTargetCE(args.classes, group) if args.stage == "wsp" else None
    opt_ref = sgd(ref)
    opt_tp = sgd(tp)
    for step in range(args.steps):
        imgs, targets = batch(step, 4, args.classes)
        torch.manual_seed(step)  # drop-path draws: same stream for the reference and on every TP rank
        loss_ref = loss_of(ref, args.stage, imgs, targets, step)
        torch.manual_seed(step)
        loss_tp = loss_of(tp, args.stage, imgs, targets, step, criterion)
        check(f"step {step} loss", loss_tp, loss_ref)
        loss_ref.backward()
        loss_tp.backward()
        want = shard_state_dict(local_grads(ref), tp.tp_layout, tp_rank)
        got = local_grads(tp)
        if set(got) != set(want):
            raise AssertionError(f"gradient names differ: {sorted(set(got) ^ set(want))}")
        for name in want:
            check(f"step {step} grad {name}", got[name], want[name])
        norm_ref = torch.nn.utils.clip_grad_norm_(ref.parameters(), args.clip)
        norm_tp = clip_grad_norm_(list(tp.parameters()), args.clip, mpu=mpu)
        check(f"step {step} grad norm", norm_tp.reshape(()), norm_ref)
        if step == 0 and not norm_ref > args.clip:
            raise AssertionError(f"clip {args.clip} is not active (norm {norm_ref:.3g}); the test would not test it")
        opt_ref.step()
        opt_tp.step()
        opt_ref.zero_grad()
        opt_tp.zero_grad()
        say(f"step {step}: loss {loss_ref.item():.6f} (tp {loss_tp.item():.6f}) grad-norm {norm_ref.item():.6f}")
    full = gather_tensor_parallel_state_dict(tp, group, dst=None)
    for name, value in ref.state_dict().items():
        check(f"param {name} after {args.steps} steps", full[name], value)
    say("equivalence OK")


def zero3(args) -> None:
    """TP × DP with deepspeed.initialize(mpu=...) and ZeRO-3 over DP vs a single-process TP=1 SGD reference."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    world = dist.get_world_size()
    micro, global_batch = 2, 2 * (world // args.tp)
    cfg = load_config(
        overrides=[
            f"stage={args.stage}",
            f"model.name={MODEL}",
            f"parallel.tp={args.tp}",
            "parallel.zero_stage=3",
            f"train.micro_batch={micro}",
            f"train.global_batch={global_batch}",
            f"wsp.num_classes={args.classes}",
        ]
    )
    ref = build(args.stage, args.classes)
    # the trainer's seam: megatron groups, then the model built on meta and materialised directly sharded; it must
    # start from exactly the reference's weights (checked after the first step through the losses and gradients)
    plan = make_plan(cfg, init_distributed("gloo"))
    tp = plan.build(lambda device=None: build(args.stage, args.classes, device=device), {})
    mpu = plan.mpu
    criterion = plan.classification_loss() if args.stage == "wsp" else None
    if args.stage == "wsp" and not isinstance(criterion, VocabParallelSoftTargetCE):
        raise AssertionError(f"wsp: the TP plan's criterion is {criterion}, not the vocab-parallel one")
    check_mpu(mpu, args.tp)
    group, tp_rank, dp_rank, dp_size = mpu.get_tensor_model_parallel_group(), plan.tp_rank, plan.dp_rank, plan.dp_size
    ds_config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": global_batch,
        "gradient_clipping": args.clip,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": False},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,  # torch SGD (see sgd())
    }
    opt = sgd(tp)
    engine, _, _, _ = deepspeed.initialize(model=tp, optimizer=opt, config=ds_config, mpu=mpu)
    opt_ref = sgd(ref)
    dp_group = mpu.get_data_parallel_group()
    for step in range(args.steps):
        imgs, targets = batch(step, global_batch, args.classes)
        chunks = [slice(r * micro, (r + 1) * micro) for r in range(dp_size)]
        # the reference sees the global batch as the mean of the DP ranks' micro-batch losses (MAE: their masks)
        loss_ref = torch.stack(
            [loss_of(ref, args.stage, imgs[c], targets[c], step * 100 + r) for r, c in enumerate(chunks)]
        ).mean()
        loss_ref.backward()
        mine = chunks[dp_rank]
        loss = loss_of(engine, args.stage, imgs[mine], targets[mine], step * 100 + dp_rank, criterion)
        engine.backward(loss)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss, group=dp_group)
        check(f"step {step} loss (mean over DP)", mean_loss / dp_size, loss_ref)
        want = shard_state_dict(local_grads(ref), tp.tp_layout, tp_rank)
        for name, param in engine.module.named_parameters():
            if param.requires_grad:
                check(f"step {step} grad {name}", safe_get_full_grad(param), want[name])
        norm_ref = torch.nn.utils.clip_grad_norm_(ref.parameters(), args.clip)
        engine.step()
        opt_ref.step()
        opt_ref.zero_grad()
        check(f"step {step} grad norm", torch.as_tensor(engine.get_global_grad_norm()).float(), norm_ref)
        if step == 0 and not norm_ref > args.clip:
            raise AssertionError(f"clip {args.clip} is not active (norm {norm_ref:.3g}); the test would not test it")
        say(f"step {step}: loss {loss_ref.item():.6f} grad-norm {norm_ref.item():.6f}")
    full = gather_tensor_parallel_state_dict(engine.module, group, dst=None)
    for name, value in ref.state_dict().items():
        check(f"param {name} after {args.steps} steps", full[name], value)
    # DeepSpeed's own TP-sharded checkpoint (mp_rank_XX files, ZeRO-partitioned), consolidated offline
    engine.save_checkpoint(args.dir, tag="final")
    if dist.get_rank() == 0:
        tp.tp_layout.save(Path(args.dir) / "final")
    dist.barrier()
    if dist.get_rank() == 0:
        offline = consolidate_deepspeed_checkpoint(args.dir)
        if set(offline) != set(full):
            raise AssertionError(f"consolidated keys differ: {sorted(set(offline) ^ set(full))}")
        for name, value in full.items():
            check(f"consolidated DeepSpeed checkpoint {name}", offline[name], value, atol=0)
    say("zero3 OK")


def check_mpu(mpu, tp: int) -> None:
    """The DeepSpeed mpu adapter: every call DeepSpeed 0.19.8 makes, answered for a TP-inner × DP layout."""
    rank, world = dist.get_rank(), dist.get_world_size()
    expected = {
        "get_model_parallel_rank": rank % tp,
        "get_model_parallel_world_size": tp,
        "get_tensor_model_parallel_rank": rank % tp,
        "get_tensor_model_parallel_world_size": tp,
        "get_tensor_model_parallel_src_rank": rank - rank % tp,
        "get_data_parallel_rank": rank // tp,
        "get_data_parallel_world_size": world // tp,
        "get_data_parallel_group_ranks": list(range(rank % tp, world, tp)),
        "get_pipeline_model_parallel_world_size": 1,
    }
    for method, value in expected.items():
        if getattr(mpu, method)() != value:
            raise AssertionError(f"rank {rank}: mpu.{method}() = {getattr(mpu, method)()}, expected {value}")
    for method in ("get_model_parallel_group", "get_tensor_model_parallel_group", "get_data_parallel_group"):
        if getattr(mpu, method)() is None:
            raise AssertionError(f"mpu.{method}() is None")
    if hasattr(mpu, "initialize_sequence_parallel"):
        raise AssertionError("the mpu must not look like a sequence-parallel unit to DeepSpeed")
    try:
        init_model_parallel(tp * 2 if world % (tp * 2) == 0 else 3)
    except ValueError as err:
        if "parallel.tp" not in str(err):
            raise
    else:
        raise AssertionError("init_model_parallel accepted a second, different TP size")


def cross_entropy(args) -> None:
    """Vocab-parallel soft-target CE == full-logit CE, value and gradient, for several K (padding included)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    for num_classes in (2, 7, 10, 33):
        for targets_kind in ("full", "local"):
            gen = torch.Generator().manual_seed(num_classes)
            logits = (torch.randn(5, num_classes, generator=gen) * 4).double().requires_grad_(True)
            targets = torch.rand(5, num_classes, generator=gen).double()
            targets[0] = 0.0
            targets[0, num_classes - 1] = 1.0  # a one-hot row on the last class (on the padded rank)
            targets[1] *= 3.0  # a row summing to more than 1: the loss is linear in the targets
            loss_ref = soft_target_cross_entropy(logits, targets)
            loss_ref.backward()
            local = -(-num_classes // world)
            padded = torch.cat([logits.detach(), torch.full((5, local * world - num_classes), 7.0).double()], 1)
            mine = padded[:, rank * local : (rank + 1) * local].clone().requires_grad_(True)
            start, valid = rank * local, max(0, min(local, num_classes - rank * local))
            tgt = targets if targets_kind == "full" else targets[:, start : start + valid]
            loss = VocabParallelSoftTargetCE(num_classes)(mine, tgt)
            loss.backward()
            where = f"K={num_classes} targets={targets_kind}"
            check(f"{where} loss", loss.double(), loss_ref, atol=1e-5)
            want = torch.cat([logits.grad, torch.zeros(5, local * world - num_classes).double()], 1)
            check(f"{where} grad", mine.grad.double(), want[:, rank * local : (rank + 1) * local], atol=1e-6)
            gathered = gather_logits(mine.detach(), num_classes)
            check(f"{where} gathered logits", gathered, logits.detach(), atol=0)
    say("cross_entropy OK")


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every tensor moved away from the fresh init (padding rows too): stands for a trained model."""
    with torch.no_grad():
        for i, param in enumerate(model.parameters()):
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(i)) * 0.01)
    return model


def checkpoints(args) -> None:
    """Save at TP=2 (sharded files + layout), consolidate offline and online, load at TP=1 and TP=4: same outputs;
    MAE at TP=1 continues as WSP at TP=4 and back."""
    world, rank = dist.get_world_size(), dist.get_rank()
    out = Path(args.dir)
    imgs, _ = batch(0, 3, args.classes)
    mpu = init_model_parallel(2)
    group = mpu.get_tensor_model_parallel_group()
    wsp2 = perturbed(parallelize_vit(build("wsp", args.classes), group))
    want = gather_logits(wsp2(imgs), args.classes, group)
    if mpu.get_data_parallel_rank() == 0:
        torch.save(wsp2.state_dict(), out / f"tp_rank_{mpu.get_tensor_model_parallel_rank():02d}.pt")
        if rank == 0:
            wsp2.tp_layout.save(out)
    online = gather_tensor_parallel_state_dict(wsp2, group, dst=0)
    dist.barrier()
    layout = TPLayout.load(out)
    shards = [torch.load(out / f"tp_rank_{r:02d}.pt") for r in range(layout.tp_size)]
    offline = merge_state_dicts([{k: v for k, v in s.items() if "_extra_state" not in k} for s in shards], layout)
    if mpu.get_tensor_model_parallel_rank() == 0:
        if set(online) != set(offline):
            raise AssertionError(f"online/offline keys differ: {sorted(set(online) ^ set(offline))}")
        for name in offline:
            check(f"consolidated {name}", online[name], offline[name], atol=0)
    plain = build("wsp", args.classes)
    if set(plain.state_dict()) != set(offline):
        raise AssertionError(
            f"consolidated keys are not the plain model's: {sorted(set(plain.state_dict()) ^ set(offline))}"
        )
    plain.load_state_dict(offline)
    check("TP=1 logits from the TP=2 checkpoint", plain(imgs), want)
    destroy_model_parallel()

    mpu = init_model_parallel(world)
    group = mpu.get_tensor_model_parallel_group()
    wsp4 = parallelize_vit(build("wsp", args.classes), group)
    load_plain_state_dict(wsp4, offline, group)
    check(f"TP={world} logits from the TP=2 checkpoint", gather_logits(wsp4(imgs), args.classes, group), want)

    mae = perturbed(build("mae", 0))  # MAE trained at TP=1 ...
    wsp4 = parallelize_vit(build("wsp", args.classes), group)
    missing, unexpected = load_plain_state_dict(wsp4, mae.encoder_state_dict(), group, strict=False)
    if sorted(missing) != ["head.bias", "head.weight"] or unexpected:
        raise AssertionError(f"MAE → WSP handoff: missing {missing}, unexpected {unexpected}")
    back = gather_tensor_parallel_state_dict(wsp4, group, dst=None)  # ... continues as WSP at TP=4, and back
    for name, value in mae.encoder_state_dict().items():
        check(f"MAE→WSP(TP={world})→plain {name}", back[name], value, atol=0)
    mae2 = build("mae", 0)  # the MAE again: its decoder, and the encoder that went through TP=4 WSP
    decoder = {k: v for k, v in mae.state_dict().items() if k not in back}
    mae2.load_state_dict({**decoder, **{k: v for k, v in back.items() if not k.startswith("head.")}})
    check(
        "MAE loss after the round trip",
        mae2(imgs, generator=torch.Generator().manual_seed(0))[0],
        mae(imgs, generator=torch.Generator().manual_seed(0))[0],
    )
    say("checkpoints OK")


def meta_init(args) -> None:
    """A model built on the meta device is initialised directly sharded: no meta tensor left, replicated tensors
    identical on every TP rank, the sharded weights distributed as the plain init, per-rank counts as planned."""
    mpu = init_model_parallel(dist.get_world_size())
    group, tp = mpu.get_tensor_model_parallel_group(), mpu.get_tensor_model_parallel_world_size()
    for stage in ("wsp", "mae"):
        model = parallelize_vit(build(stage, args.classes, device="meta"), group)
        left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
        if left:
            raise AssertionError(f"{stage}: still on meta after parallelize_vit: {left}")
        for name, value in model.state_dict().items():
            if name in model.tp_layout.shards or name.endswith("_extra_state"):
                continue
            parts = [torch.empty_like(value) for _ in range(tp)]
            dist.all_gather(parts, value.contiguous(), group=group)
            for other in parts:
                check(f"{stage} replicated {name} across TP ranks", other, value, atol=0)
        # exactly the weights of the same model built whole from the same seed (name-keyed init, models/init.py)
        full = gather_tensor_parallel_state_dict(model, group, dst=None)
        plain = build(stage, args.classes).state_dict()
        if set(full) != set(plain):
            raise AssertionError(f"{stage}: keys differ from the plain model: {sorted(set(full) ^ set(plain))}")
        for name, value in plain.items():
            if not torch.equal(full[name], value):
                raise AssertionError(f"{stage}: {name} differs from the unsharded model's init")
        dense = torch.stack(
            [full["blocks.0.attn.qkv.weight"][:8].flatten(), full["blocks.1.attn.qkv.weight"][:8].flatten()]
        )
        if torch.equal(dense[0], dense[1]):
            raise AssertionError(f"{stage}: two layers got the same init")
        cfg = load_config(overrides=[f"stage={stage}", f"model.name={MODEL}", f"wsp.num_classes={args.classes}"])
        planned = build_inventory(cfg, tp=tp).numel
        local = sum(p.numel() for p in model.parameters())
        if local != planned:
            raise AssertionError(f"{stage}: rank holds {local} parameters, the planner's inventory says {planned}")
        imgs, targets = batch(0, 2, args.classes)
        criterion = VocabParallelSoftTargetCE(args.classes, group) if stage == "wsp" else None
        loss = loss_of(model, stage, imgs, targets, 0, criterion)
        if not torch.isfinite(loss):
            raise AssertionError(f"{stage}: non-finite loss {loss}")
    say("meta_init OK")


def compat(args) -> None:
    """megatron paths that need CUDA on their own, run on CPU through parallel/patches.py (2 ranks)."""
    from megatron.core import tensor_parallel as mtp
    from megatron.core.model_parallel_config import ModelParallelConfig

    from maws_scale.parallel import patches

    mpu = init_model_parallel(dist.get_world_size())  # installs the compat layer
    if not patches.megatron_cpu_installed():
        raise AssertionError("init_model_parallel did not install the CPU compatibility layer")
    tp_rank = mpu.get_tensor_model_parallel_rank()
    # gather_output=True allocates its output with torch.cuda.current_device()
    torch.manual_seed(0)
    dense = torch.nn.Linear(8, 6)
    config = ModelParallelConfig(
        tensor_model_parallel_size=2,
        use_cpu_initialization=True,
        perform_initialization=False,
        gradient_accumulation_fusion=False,
    )
    layer = mtp.ColumnParallelLinear(8, 6, config=config, init_method=torch.nn.init.zeros_, gather_output=True)
    with torch.no_grad():
        layer.weight.copy_(dense.weight.chunk(2)[tp_rank])
        layer.bias.copy_(dense.bias.chunk(2)[tp_rank])
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out, _ = layer(x)
    check("gather_output=True forward", out, dense(x))
    out.square().sum().backward()
    grad_x = x.grad.clone()
    x.grad = None
    dense(x).square().sum().backward()
    check("gather_output=True input grad", grad_x, x.grad)
    # the model-parallel RNG tracker: different dropout streams per TP rank, the default stream shared
    mtp.model_parallel_cuda_manual_seed(123)
    before = torch.get_rng_state()
    with mtp.get_cuda_rng_tracker().fork():
        tp_mask = torch.nn.functional.dropout(torch.ones(64), 0.5)
    if not torch.equal(torch.get_rng_state(), before):
        raise AssertionError("the tracker fork did not restore the default RNG state")
    shared = torch.nn.functional.dropout(torch.ones(64), 0.5)
    masks = [torch.empty_like(tp_mask) for _ in range(2)]
    dist.all_gather(masks, tp_mask)
    if torch.equal(masks[0], masks[1]):
        raise AssertionError("the tensor-parallel RNG stream is the same on both TP ranks")
    dist.all_gather(masks, shared)
    if not torch.equal(masks[0], masks[1]):
        raise AssertionError("the default (data-parallel) RNG stream differs across TP ranks")
    say("compat OK")


SCENARIOS = {
    "equivalence": equivalence,
    "zero3": zero3,
    "cross_entropy": cross_entropy,
    "checkpoints": checkpoints,
    "meta_init": meta_init,
    "compat": compat,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--stage", choices=["mae", "wsp"], default="wsp")
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--clip", type=float, default=0.5)
    parser.add_argument("--drop-path", type=float, default=0.0)
    parser.add_argument("--replicate-decoder", action="store_true", help="keep the MAE decoder replicated")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the TP model")
    parser.add_argument("--compile", action="store_true", help="compile the TP model's blocks (aot_eager)")
    parser.add_argument("--dir", default=None, help="a directory shared by all ranks (checkpoints)")
    return parser.parse_args(argv)


def main() -> None:
    """Run each scenario of the command line (several separated by ``+``) in one world, one after another; each
    starts from no model-parallel state, and rank 0 prints ``=== <i>`` before scenario ``i``."""
    argv, runs = sys.argv[1:], [[]]
    for token in argv:
        if token == "+":
            runs.append([])
        else:
            runs[-1].append(token)
    torch.set_num_threads(1)
    prepare_worker()
    init_distributed("gloo")
    for index, run in enumerate(runs):
        args = parse(run)
        say(f"=== {index}")
        SCENARIOS[args.scenario](args)
        if ps.model_parallel_is_initialized():
            destroy_model_parallel()
        dist.barrier()
    shutdown_distributed()


if __name__ == "__main__":
    main()
