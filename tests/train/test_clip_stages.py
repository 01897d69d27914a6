"""The image-text stages through the one loop (in-process, one rank): clip, mae_clip, lit; the mae → wsp → lit
pipeline with zero-shot evaluation; and the config refusals of bad text/image set-ups."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from maws_scale.config import ConfigError, load_config
from maws_scale.models.state import load_state_dict_file
from maws_scale.train.loop import train_stage
from maws_scale.train.preflight import preflight

TINY = [
    "model.name=vit_micro_p4",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "parallel.precision=fp32",
    "optim.impl=torch",
    "optim.lr=1e-3",
    "tracking.enabled=false",
    "clip.text_model=text_micro",
    "train.global_batch=16",
    "train.micro_batch=16",
    "train.steps=3",
    "train.log_every=1",
]


def config(captioned: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            *TINY,
            f"data.path={captioned / 'train'}",
            f"data.eval_path={captioned / 'test'}",
            f"output_dir={out}",
            *extra,
        ],
    )


def losses(stage_dir: Path, key: str = "loss") -> list[float]:
    return [json.loads(x)[key] for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("zero", [0, 3])
def test_clip_stage_trains_and_consolidates(world, captioned, tmp_path, zero):
    cfg = config(captioned, tmp_path, "stage=clip", "model.pool=gap", f"parallel.zero_stage={zero}")
    result = train_stage(cfg, world)
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    state = load_state_dict_file(result.consolidated)
    assert {"logit_scale", "text_proj.weight", "image_proj.weight", "visual.pos_embed"} <= set(state)
    assert state["text.token_embedding.weight"].shape[0] <= 300


def test_mae_clip_adds_the_reconstruction_loss(world, captioned, tmp_path):
    clip_only = train_stage(config(captioned, tmp_path / "a", "stage=mae_clip", "clip.mae_weight=0"), world)
    both = train_stage(config(captioned, tmp_path / "b", "stage=mae_clip", "clip.mae_weight=1"), world)
    assert both.losses[0] > clip_only.losses[0] + 0.1  # + norm-pix MSE (~1 at init)
    state = load_state_dict_file(both.consolidated)
    assert "visual.decoder_pred.weight" in state and "visual.mask_token" in state


def test_the_loop_logs_the_stage_metrics_that_make_up_the_loss(world, captioned, tmp_path):
    from mlflow.tracking import MlflowClient

    weights = ("clip.clip_weight=0.5", "clip.mae_weight=2.0")
    cfg = config(captioned, tmp_path, "stage=mae_clip", "train.micro_batch=8", "tracking.enabled=true", *weights)
    train_stage(cfg, world)  # 2 micro-batches per step: each metric is their mean, as the loss
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    series = {
        name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"train/{name}")]
        for name in ("loss", "clip_loss", "mae_loss", "logit_scale", "clip_acc")
    }
    assert all([step for step, _ in values] == [1, 2, 3] for values in series.values()), series
    for (_, loss), (_, clip), (_, mae) in zip(series["loss"], series["clip_loss"], series["mae_loss"], strict=True):
        assert loss == pytest.approx(0.5 * clip + 2.0 * mae, rel=1e-6)
        assert clip > 1.0 and mae > 0.1  # InfoNCE over 16 pairs starts near ln 16; norm-pix MSE near 1
    assert series["logit_scale"][0][1] == pytest.approx(1 / 0.07, rel=1e-5)  # step 1 forwards the initial scale
    rows = [json.loads(x) for x in (tmp_path / "mae_clip" / "metrics.jsonl").read_text().splitlines()]
    assert [row["mae_loss"] for row in rows] == [v for _, v in series["mae_loss"]]


@pytest.mark.dist
def test_stage_metrics_of_two_ranks_equal_one_rank(captioned, tmp_path):
    from dist_support import FP16_FLAG, run_torchrun

    worker = Path(__file__).with_name("dist_worker.py")
    rows = {}
    for nproc, micro in ((1, 16), (2, 8)):  # the same global batch of 16 pairs: one contrastive batch
        out = tmp_path / f"ranks{nproc}"
        overrides = [*TINY, f"data.path={captioned / 'train'}", f"output_dir={out}", "stage=mae_clip"]
        run = ",".join([*overrides, f"train.micro_batch={micro}", "clip.mae_weight=2.0"])
        run_torchrun(worker, nproc, [str(tmp_path / f"result{nproc}.json"), run], env={FP16_FLAG: "0"}, timeout=240)
        rows[nproc] = [json.loads(x) for x in (out / "mae_clip" / "metrics.jsonl").read_text().splitlines()]
    for one, two in zip(rows[1], rows[2], strict=True):
        for key in ("loss", "clip_loss", "mae_loss", "logit_scale", "clip_acc"):
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), (one["step"], key)


def test_lit_keeps_the_loaded_image_tower_locked(world, captioned, tmp_path):
    from maws_scale.models import build_mae

    torch.manual_seed(5)
    mae = build_mae("vit_micro_p4")
    ckpt = tmp_path / "mae.pt"
    torch.save(mae.state_dict(), ckpt)
    cfg = config(captioned, tmp_path, "stage=lit", f"clip.image_init_from={ckpt}")
    result = train_stage(cfg, world)
    state = load_state_dict_file(result.consolidated)
    for key in ("pos_embed", "blocks.0.attn.qkv.weight", "norm.weight"):
        torch.testing.assert_close(state[f"visual.{key}"], mae.state_dict()[key])
    handoff = json.loads((tmp_path / "lit" / "handoff.json").read_text())
    assert handoff["init"] == "lit" and handoff["locked"] == "visual.*"


def test_lit_from_an_mae_checkpoint_refuses_map_pooling(world, captioned, tmp_path):
    from maws_scale.models import build_mae

    ckpt = tmp_path / "mae.pt"
    torch.save(build_mae("vit_micro_p4").state_dict(), ckpt)
    cfg = config(captioned, tmp_path, "stage=lit", "model.pool=map", f"clip.image_init_from={ckpt}")
    with pytest.raises(ConfigError, match=r"clip.image_init_from: .*attn_pool"):
        train_stage(cfg, world)


def test_pipeline_runs_mae_wsp_lit_and_reports_zero_shot(world, captioned, tmp_path):
    from maws_scale.cli import main

    raw = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": "vit_micro_p4", "pool": "gap"},
        "data": {"path": str(captioned / "train"), "eval_path": str(captioned / "test"), "num_workers": 0},
        "train": {"global_batch": 16, "micro_batch": 16, "steps": 2, "log_every": 1},
        "parallel": {"zero_stage": 1, "precision": "fp32"},
        "optim": {"impl": "torch", "lr": 1e-3},
        "clip": {"text_model": "text_micro", "templates": ["a photo of a {}"]},
        "eval": {"max_train": 64, "few_shot": [1], "seeds": 1},
        "tracking": {"enabled": False},
        "stages": {"mae": {"train.steps": 2}, "wsp": {"train.steps": 2}, "lit": {"train.steps": 3}},
    }
    path = tmp_path / "lit.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["pipeline", str(path)]) == 0
    out = tmp_path / "run"
    for stage in ("mae", "wsp", "lit"):
        assert (out / stage / "consolidated.pt").is_file()
    handoff = json.loads((out / "lit" / "handoff.json").read_text())
    assert handoff["from"] == str(out / "wsp" / "consolidated.pt")
    assert len(losses(out / "lit")) == 3

    from maws_scale.eval import evaluate_checkpoint

    cfg = load_config(path).for_stage("lit")
    metrics = evaluate_checkpoint(cfg, out / "lit" / "consolidated.pt")
    assert 0.0 <= metrics["eval/zero_shot_top1"] <= 100.0 and metrics["eval/zero_shot_classes"] == 10
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"):
        assert 0.0 <= metrics[f"eval/{key}"] <= 100.0
    assert metrics["eval/i2t_r5"] >= metrics["eval/i2t_r1"]
    assert "eval/linear_top1" in metrics or any(k.startswith("eval/linear") for k in metrics)


# ----- refusals at config check and preflight ---------------------------------------------------------------------
def test_text_tower_smaller_than_the_tokenizer_vocab_is_refused_at_preflight(captioned, tmp_path):
    cfg = config(captioned, tmp_path, "stage=clip", "clip.text_vocab=100")  # the config check reads no data set
    with pytest.raises(ConfigError, match=r"clip.text_vocab: the text tower embeds 100 token ids"):
        preflight([cfg], 1)


def test_context_longer_than_the_position_table_is_refused_at_preflight(captioned, tmp_path):
    cfg = config(captioned, tmp_path, "stage=clip", "clip.context_length=8")
    with pytest.raises(ConfigError, match=r"clip.context_length: captions are tokenized to 16 tokens"):
        preflight([cfg], 1)


def test_the_config_check_reads_no_data_set(tmp_path, monkeypatch):
    """Before: RunConfig's validator opened ``data.path``'s manifest (config.py → clip_checks.py)."""
    import maws_scale.data.text as text

    monkeypatch.setattr(text.TextInfo, "of", lambda *a, **k: pytest.fail("the config check read the manifest"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    load_config(None, [*TINY, "stage=clip", f"data.path={tmp_path / 'data'}", f"output_dir={tmp_path}"])


def test_lit_without_an_image_checkpoint_is_refused(captioned, tmp_path):
    cfg = config(captioned, tmp_path, "stage=lit")
    with pytest.raises(ConfigError, match=r"clip.image_init_from"):
        cfg.check_standalone()


def test_mae_clip_with_an_image_size_the_patch_does_not_divide_is_refused(captioned, tmp_path):
    with pytest.raises(ConfigError, match=r"model.img_size=18 is not a multiple of the patch size 4"):
        config(captioned, tmp_path, "stage=mae_clip", "model.img_size=18")


def test_image_text_stages_refuse_tensor_parallelism(captioned, tmp_path):
    with pytest.raises(ConfigError, match=r"parallel.tp=2"):
        config(captioned, tmp_path, "stage=clip", "parallel.tp=2")


def test_data_without_a_tokenizer_is_refused(tmp_path):
    from maws_scale.data.build import build_dataset
    from maws_scale.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource

    if not Path(DEFAULT_DIR, "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    build_dataset(FashionMNISTSource(limit=8, captions=True), tmp_path / "d", progress=False)
    cfg = load_config(None, ["stage=clip", f"data.path={tmp_path / 'd'}", f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=r"data.path: .*no tokenizer"):
        preflight([cfg], 1)


def test_clip_resumes_exactly(world, captioned, tmp_path):
    """4 steps with a checkpoint at step 2; drop everything after it and resume: steps 3-4 give the same losses
    (loader position, masks, RNG, optimizer and schedule restored)."""
    import shutil

    cfg = config(captioned, tmp_path, "stage=mae_clip", "train.steps=4", "checkpoint.every=2", "checkpoint.resume=auto")
    straight = train_stage(cfg, world)
    stage = tmp_path / "mae_clip"
    shutil.rmtree(stage / "checkpoints" / "step_00000004")
    (stage / "consolidated.pt").unlink()
    resumed = train_stage(cfg, world)
    assert resumed.steps == 4 and len(resumed.losses) == 2
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("stage", ["clip", "mae_clip"])
def test_the_image_tower_follows_the_configured_shape(captioned, tmp_path, stage):
    """model.width/depth/heads override the preset for the image tower too, as for MAE and WSP."""
    from maws_scale.train.clip_stages import build_clip_model

    cfg = config(captioned, tmp_path, f"stage={stage}", "model.width=48", "model.depth=3", "model.heads=2")
    visual = build_clip_model(cfg, device="meta").visual
    assert visual.embed_dim == 48 and len(visual.blocks) == 3


def test_retrieval_counts_a_hit_for_any_item_with_the_identical_caption():
    from maws_scale.eval.zero_shot import recall_at

    # items 1 and 2 share a caption: texts 1 and 2 are equal and tie for images 1 and 2; one of the two images
    # would miss at rank 1 by the sort's tie order alone
    image = torch.eye(4)
    image[2] = image[1]
    text = image.clone()
    similarity = image @ text.t()
    groups = torch.tensor([0, 1, 1, 2])
    assert recall_at(similarity, ks=(1,))[1] < 100.0
    assert recall_at(similarity, ks=(1,), groups=groups) == {1: 100.0}
    assert recall_at(similarity.t(), ks=(1,), groups=groups) == {1: 100.0}
    text[3] = -text[3]  # a real miss still counts as one
    assert recall_at(image @ text.t(), ks=(1,), groups=groups) == {1: 75.0}
