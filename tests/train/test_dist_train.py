"""Multi-process training under torchrun (gloo, CPU): ZeRO-2/3 on 2 ranks equal 1 rank; crash + exact/elastic resume.

Every run is a tiny MAE (vit_micro_p4) on real Fashion-MNIST mosaics, fp32, global batch 16, 6 steps, torch AdamW.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from dist_support import FP16_FLAG, run_torchrun

pytestmark = pytest.mark.dist
# DeepSpeed's accelerator answers "no fp16" in every worker, as on CPUs without mkldnn fp16 (AMD without AVX-512):
# the branch of zero.Init that ignored the requested dtype (tests/parallel/test_zero_init.py forces both answers).
ENV = {FP16_FLAG: "0"}

WORKER = Path(__file__).with_name("dist_worker.py")
TOL = 1e-5
TINY = [
    "model.name=vit_micro_p4",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "parallel.precision=fp32",
    "optim.impl=torch",
    "tracking.enabled=false",
]


def launch(tmp: Path, nproc: int, runs: list[list[str]], kill_after: int | None = None) -> list[dict] | None:
    out = tmp / f"result-{len(list(tmp.glob('result-*')))}.json"
    args = [str(out), *(",".join(run) for run in runs)]
    if kill_after is not None:
        args += ["--kill-after", str(kill_after)]
        with pytest.raises(AssertionError, match=r"SIGKILL|Signal 9|exitcode"):
            run_torchrun(WORKER, nproc, args, env=ENV, timeout=240)
        return None
    run_torchrun(WORKER, nproc, args, env=ENV, timeout=240)
    return json.loads(out.read_text())


def config(mosaics: Path, out: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"data.path={mosaics / 'train'}",
        "train.global_batch=16",
        "train.micro_batch=8",
        "train.steps=6",
        "train.log_every=3",
        "optim.lr=2e-3",
        "schedule.warmup_steps=2",
        "checkpoint.every=2",
        "checkpoint.resume=auto",
        f"output_dir={out}",
        *extra,
    ]


def wsp_after(mosaics: Path, out: Path, *extra: str) -> list[str]:
    """WSP for 4 steps, initialised from the MAE run in ``out``."""
    init = f"wsp.init_from={out / 'mae' / 'consolidated.pt'}"
    return config(mosaics, out, "stage=wsp", init, "train.steps=4", "checkpoint.every=0", *extra)


# fine-tuning with every deterministic piece of the recipe: layer decay, mean pool + fc_norm, label smoothing, a
# larger resolution (pos_embed resampled on load), evaluation every 2 steps (best.pt)
FINETUNE = [
    "finetune.layer_decay=0.75",
    "finetune.label_smoothing=0.1",
    "finetune.eval_every=2",
    "model.pool=gap",
    "model.fc_norm=true",
    "model.img_size=20",
]
# ... and the stochastic ones, drawn from each data-parallel rank's stream: equal under TP, not across DP sizes
STOCHASTIC = [
    "finetune.mixup=0.8",
    "finetune.cutmix=1.0",
    "finetune.random_erasing=0.5",
    "finetune.randaug_ops=2",
    "model.drop_path=0.2",
]


def finetune_after(mosaics: Path, out: Path, *extra: str) -> list[str]:
    """Fine-tuning for 4 steps on the mosaics' top-left labels, from the WSP run in ``out``, top-1/5 on the test
    split (kept in ``out/finetune``)."""
    init = f"finetune.init_from={out / 'wsp' / 'consolidated.pt'}"
    evals = f"data.eval_path={mosaics / 'test'}"
    return config(mosaics, out, "stage=finetune", init, evals, "train.steps=4", "checkpoint.every=0", *FINETUNE, *extra)


@pytest.fixture(scope="module")
def one_rank_runs(mosaics, tmp_path_factory) -> list[dict]:
    """The reference: one rank, ZeRO-0, micro-batch 8 × 2 accumulation steps; MAE, then WSP from it, then fine-tuning
    from that WSP (without, then with the stochastic pieces)."""
    tmp = tmp_path_factory.mktemp("one")
    z0 = "parallel.zero_stage=0"
    return launch(
        tmp,
        1,
        [
            config(mosaics, tmp / "z0", z0),
            wsp_after(mosaics, tmp / "z0", z0),
            finetune_after(mosaics, tmp / "z0", z0),
            finetune_after(mosaics, tmp / "z0", z0, *STOCHASTIC, "output_dir=" + str(tmp / "z0-aug")),
        ],
    )


@pytest.fixture(scope="module")
def one_rank(one_rank_runs) -> dict:
    return one_rank_runs[0]


@pytest.fixture(scope="module")
def two_ranks(mosaics, tmp_path_factory) -> dict[str, dict]:
    """One 2-rank launch (micro-batch 8, no accumulation): ZeRO-2 MAE, ZeRO-3 MAE, ZeRO-3 WSP from that MAE and
    fine-tuning from that WSP, then tensor parallel (tp=2, data-parallel size 1) MAE, WSP and fine-tuning (with the
    stochastic pieces)."""
    tmp = tmp_path_factory.mktemp("two")
    runs = launch(
        tmp,
        2,
        [
            config(mosaics, tmp / "z2", "parallel.zero_stage=2"),
            config(mosaics, tmp / "z3", "parallel.zero_stage=3"),
            wsp_after(mosaics, tmp / "z3", "parallel.zero_stage=3"),
            finetune_after(mosaics, tmp / "z3", "parallel.zero_stage=3"),
            config(mosaics, tmp / "tp", "parallel.zero_stage=1", "parallel.tp=2"),
            wsp_after(mosaics, tmp / "tp", "parallel.zero_stage=1", "parallel.tp=2"),
            finetune_after(
                mosaics,
                tmp / "tp",
                "parallel.zero_stage=1",
                "parallel.tp=2",
                *STOCHASTIC,
                f"output_dir={tmp / 'tp-aug'}",
            ),
        ],
    )
    names = ["zero2", "zero3", "wsp_zero3", "ft_zero3", "tp_mae", "tp_wsp", "tp_ft"]
    return {**dict(zip(names, runs)), "tp_dir": tmp / "tp"}


@pytest.fixture(scope="module")
def crashed(mosaics, tmp_path_factory) -> Path:
    """A 2-rank ZeRO-3 run SIGKILLed right after step 5 (checkpoints at steps 2 and 4)."""
    tmp = tmp_path_factory.mktemp("crash")
    launch(tmp, 2, [config(mosaics, tmp / "run", "parallel.zero_stage=3")], kill_after=5)
    steps = sorted(p.name for p in (tmp / "run" / "mae" / "checkpoints").glob("step_*"))
    assert steps == ["step_00000002", "step_00000004"]
    return tmp / "run"


def test_zero2_and_zero3_on_two_ranks_match_one_rank(one_rank, two_ranks):
    assert one_rank["steps"] == 6 and len(one_rank["losses"]) == 6
    assert one_rank["losses"][-1] < one_rank["losses"][0]  # it learns
    for name in ("zero2", "zero3"):
        run = two_ranks[name]
        assert run["ids"] == one_rank["ids"], name  # the same global batches, whatever the DP layout
        assert run["losses"] == pytest.approx(one_rank["losses"], abs=TOL), name
    assert two_ranks["zero3"]["leaf_blocks"]  # ZeRO-3 gathers whole ViT blocks (leaf modules)


def test_wsp_from_mae_under_zero3_matches_one_rank(one_rank_runs, two_ranks):
    # built under zero.Init, the MAE encoder copied into the partitioned parameters from rank 0
    assert two_ranks["wsp_zero3"]["losses"] == pytest.approx(one_rank_runs[1]["losses"], abs=TOL)


def test_finetune_on_two_ranks_under_zero3_matches_one_rank(one_rank_runs, two_ranks):
    # layer-decayed groups partitioned by ZeRO-3, the WSP encoder loaded into the partitioned classifier, pos_embed
    # resampled; the held-out top-1/top-5 sharded over the two ranks equals the one-rank pass
    ref, run = one_rank_runs[2], two_ranks["ft_zero3"]
    assert len(ref["losses"]) == 4 and all(math.isfinite(x) for x in ref["losses"])
    assert run["losses"] == pytest.approx(ref["losses"], abs=TOL)
    assert [e["step"] for e in ref["evals"]] == [2, 4]
    for mine, theirs in zip(run["evals"], ref["evals"], strict=True):
        assert mine == pytest.approx(theirs, abs=1e-9)
    assert all(e["eval/eval_samples"] == 256 for e in run["evals"])


def test_finetune_with_mixup_cutmix_drop_path_erasing_under_tp_matches_one_rank(one_rank_runs, two_ranks):
    ref, run = one_rank_runs[3], two_ranks["tp_ft"]
    assert run["losses"] == pytest.approx(ref["losses"], abs=TOL)
    for mine, theirs in zip(run["evals"], ref["evals"], strict=True):  # logits gathered from the sharded head
        assert mine == pytest.approx(theirs, abs=1e-9)


def test_crash_and_resume_on_the_same_ranks_is_exact(crashed, two_ranks, tmp_path, mosaics):
    out = tmp_path / "run"
    shutil.copytree(crashed, out)
    resumed = launch(tmp_path, 2, [config(mosaics, out, "parallel.zero_stage=3")])[0]
    reference = two_ranks["zero3"]
    assert resumed["start"] == 4 and resumed["steps"] == 6
    assert resumed["ids"] == reference["ids"][4:]
    assert resumed["losses"] == reference["losses"][4:]  # bit for bit
    assert (out / "mae" / "consolidated.pt").is_file()


def test_crash_and_resume_on_another_data_parallel_size(crashed, one_rank, tmp_path, mosaics):
    out = tmp_path / "run"
    shutil.copytree(crashed, out)
    resumed = launch(tmp_path, 1, [config(mosaics, out, "parallel.zero_stage=3")])[0]
    assert resumed["start"] == 4
    assert resumed["ids"] == one_rank["ids"][4:]  # data order continues exactly on 1 rank
    assert resumed["losses"] == pytest.approx(one_rank["losses"][4:], abs=TOL)  # universal checkpoint: same state
    assert (out / "mae" / "checkpoints" / ".universal" / "step_00000004").is_dir()


def test_tensor_parallel_mae_then_wsp_match_one_rank(one_rank_runs, two_ranks):
    # tp=2 on 2 ranks: data-parallel size 1, so the same micro-batches as one rank; megatron-core layers inside,
    # vocab-parallel soft-target CE for WSP, consolidation gathers the shards, WSP loads the MAE encoder sharded
    out = two_ranks["tp_dir"]
    mae, wsp = two_ranks["tp_mae"], two_ranks["tp_wsp"]
    ref_mae, ref_wsp = one_rank_runs[:2]
    # both TP ranks of the one data-parallel group train on the same micro-batches
    assert [sorted(set(ids)) for ids in mae["ids"]] == ref_mae["ids"]
    assert all(len(ids) == 2 * len(set(ids)) for ids in mae["ids"])
    assert mae["losses"] == pytest.approx(ref_mae["losses"], abs=TOL)
    assert wsp["losses"] == pytest.approx(ref_wsp["losses"], abs=TOL)
    assert len(wsp["losses"]) == 4
    handoff = json.loads((out / "wsp" / "handoff.json").read_text())
    assert "blocks.0.attn.qkv.weight" in handoff["loaded"]


def test_offline_export_of_any_tensor_parallel_step_equals_the_live_consolidation(two_ranks, tmp_path):
    # every step_* checkpoint of the tp=2 run carries its layout; consolidated offline in one process it is bit for bit
    # what the live TP gather gave at that step (dist_worker.py records it), and `maws-scale export` exports it
    import torch

    from maws_scale.cli import main as cli
    from maws_scale.parallel.consolidate import consolidate_checkpoint
    from maws_scale.train.checkpoint import read_checkpoint

    stage_dir = two_ranks["tp_dir"] / "mae"
    steps = sorted((stage_dir / "checkpoints").glob("step_*"))
    assert [p.name for p in steps] == ["step_00000002", "step_00000004", "step_00000006"]
    for step in steps:
        assert (step / "tp_layout.json").is_file()
        live = torch.load(stage_dir / "live" / f"{step.name}.pt")
        offline = torch.load(consolidate_checkpoint(read_checkpoint(step), tmp_path / f"{step.name}.pt"))
        assert set(offline) == set(live) and "decoder_blocks.0.attn.qkv.weight" in offline
        for name, value in live.items():
            assert torch.equal(offline[name], value), f"{step.name}: {name}"
    exported = tmp_path / "step4.pt"
    assert cli(["export", str(steps[1]), "--out", str(exported)]) == 0
    encoder = torch.load(exported)
    live = torch.load(stage_dir / "live" / "step_00000004.pt")
    assert "blocks.0.attn.qkv.weight" in encoder and not any(k.startswith("decoder") for k in encoder)
    assert all(torch.equal(value, live[name]) for name, value in encoder.items())
    final = torch.load(stage_dir / "consolidated.pt")  # the run's own final consolidation: the last step's live one
    last = torch.load(stage_dir / "live" / f"{steps[-1].name}.pt")
    assert set(final) == set(last) and all(torch.equal(value, final[name]) for name, value in last.items())
