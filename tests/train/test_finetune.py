"""Stage finetune end to end on one process: from a timm/MAWS-named state dict and from this toolkit's checkpoints
(MAE, CLIP), what is loaded / dropped / new, top-1/top-5 against an independent count, best.pt, export to timm names,
refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maws_scale.cli import main as cli
from maws_scale.config import ConfigError, load_config
from maws_scale.models import build_mae, build_wsp
from maws_scale.models.handoff import HandoffError, classifier_state
from maws_scale.models.state import resample_pos_embed

TINY = [
    "model.name=vit_micro_p4",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "parallel.precision=fp32",
    "parallel.zero_stage=0",
    "optim.impl=torch",
    "tracking.enabled=false",
]


def _distinct(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_timm_named_state_dict_loads_with_a_fresh_head_and_resampled_pos_embed():
    source = _distinct(build_wsp("vit_micro_p4", 1000))  # a released MAWS/timm classifier: 1000-class head, 16 px
    model = build_wsp("vit_micro_p4", 7, img_size=24)
    state, report = classifier_state(source, model)
    assert sorted(report.new) == ["head.bias", "head.weight"]
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    assert report.resampled == ["pos_embed"]
    assert set(state) == set(model.state_dict()) - {"head.weight", "head.bias"}
    torch.testing.assert_close(state["pos_embed"], resample_pos_embed(source["pos_embed"], 6))
    assert torch.equal(state["blocks.1.mlp.fc2.weight"], source["blocks.1.mlp.fc2.weight"])


def test_mae_checkpoint_into_the_fc_norm_classifier_drops_decoder_and_final_norm():
    source = _distinct(build_mae("vit_micro_p4"))
    model = build_wsp("vit_micro_p4", 5, pool="gap", fc_norm=True)
    _, report = classifier_state({"model": source}, model)
    assert sorted(report.new) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert {"norm.weight", "norm.bias", "mask_token"} <= set(report.dropped)
    assert any(k.startswith("decoder_") for k in report.dropped)
    assert not report.resampled


def test_clip_checkpoint_gives_its_image_tower():
    tower = _distinct(build_wsp("vit_micro_p4", 3))
    source = {f"visual.{k}": v for k, v in tower.items() if not k.startswith("head.")}
    source["logit_scale"] = torch.ones(())
    source["text.token_embedding.weight"] = torch.ones(4, 4)
    state, report = classifier_state(source, build_wsp("vit_micro_p4", 3))
    assert torch.equal(state["blocks.0.attn.qkv.weight"], tower["blocks.0.attn.qkv.weight"])
    assert {"logit_scale", "text.token_embedding.weight"} <= set(report.dropped)


def test_a_checkpoint_of_another_shape_is_refused_naming_the_keys():
    source = build_wsp("vit_micro_p4", 3, qk_norm=True).state_dict()
    with pytest.raises(HandoffError, match=r"missing encoder keys|shape mismatch"):
        classifier_state(source, build_wsp("vit_tiny_p4", 3))


def _train(mosaics: Path, out: Path, *extra: str) -> list[str]:
    config = out.parent / "finetune.yaml"
    config.write_text("stage: finetune\n")
    return [
        "train",
        str(config),
        *TINY,
        f"data.path={mosaics / 'train'}",
        f"data.eval_path={mosaics / 'test'}",
        "train.global_batch=16",
        "train.micro_batch=16",
        "train.steps=4",
        "train.log_every=2",
        "optim.lr=1e-3",
        "model.img_size=20",
        "finetune.eval_every=2",
        "finetune.layer_decay=0.75",
        "finetune.mixup=0.8",
        "finetune.cutmix=1.0",
        "finetune.random_erasing=0.25",
        "finetune.randaug_ops=2",
        "model.drop_path=0.1",
        f"output_dir={out}",
        *extra,
    ]


@pytest.fixture(scope="module")
def finetuned(world, mosaics, tmp_path_factory) -> Path:
    """4 steps from a timm-named .safetensors (1000-class head, 16 px) at 20 px, mean pool + fc_norm."""
    from safetensors.torch import save_file

    tmp = tmp_path_factory.mktemp("ft")
    source = tmp / "released.safetensors"
    save_file({k: v.contiguous() for k, v in _distinct(build_wsp("vit_micro_p4", 1000)).items()}, str(source))
    argv = _train(mosaics, tmp / "run", f"finetune.init_from={source}", "model.pool=gap", "model.fc_norm=true")
    assert cli(argv) == 0
    return tmp / "run" / "finetune"


def _topk_by_hand(weights: dict[str, torch.Tensor], mosaics: Path) -> tuple[float, float]:
    """Top-1 / top-5 of the saved weights over the test split, counted here from the loader's images."""
    from maws_scale.data import build_loader, normalize_on_device

    cfg = load_config(None, [*TINY, "stage=finetune", f"data.eval_path={mosaics / 'test'}", "model.img_size=20"])
    model = build_wsp("vit_micro_p4", 10, img_size=20, pool="gap", fc_norm=True).eval()
    model.load_state_dict(weights)
    hits1 = hits5 = total = 0
    with torch.no_grad():
        for batch in build_loader(cfg, "eval", infinite=False, eval_crop=0.875):
            logits = model(normalize_on_device(batch["images"], dtype=torch.float32))
            labels = torch.as_tensor(batch["labels"]).long()
            ranked = logits.argsort(dim=1, descending=True)
            hits1 += int((ranked[:, 0] == labels).sum())
            hits5 += int((ranked[:, :5] == labels[:, None]).any(dim=1).sum())
            total += len(labels)
    return 100.0 * hits1 / total, 100.0 * hits5 / total


def test_finetune_from_a_timm_state_dict_runs_and_reports_what_it_loaded(finetuned):
    handoff = json.loads((finetuned / "handoff.json").read_text())
    assert handoff["init"] == "checkpoint"
    assert sorted(handoff["new"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert {"norm.weight", "head.weight"} <= set(handoff["dropped"])
    assert handoff["resampled"] == ["pos_embed"]
    records = [json.loads(line) for line in (finetuned / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/top1" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 <= r["eval/top1"] <= r["eval/top5"] <= 100 for r in evals)


def test_best_and_last_weights_and_their_accuracy_counted_by_hand(finetuned, mosaics):
    records = [json.loads(line) for line in (finetuned / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in records if "eval/top1" in r}
    best = json.loads((finetuned / "best.json").read_text())
    assert best["value"] == max(r["eval/top1"] for r in evals.values())
    assert best["model"] == "vit_micro_p4" and best["img_size"] == 20 and best["fc_norm"]  # export reads these
    assert best["step"] == min(s for s, r in evals.items() if r["eval/top1"] == best["value"])
    last = torch.load(finetuned / "consolidated.pt")
    assert _topk_by_hand(last, mosaics) == pytest.approx((evals[4]["eval/top1"], evals[4]["eval/top5"]), abs=1e-9)
    kept = torch.load(finetuned / "best.pt")
    assert _topk_by_hand(kept, mosaics) == pytest.approx((best["eval/top1"], best["eval/top5"]), abs=1e-9)


def test_export_writes_timm_names_with_fc_norm(finetuned, tmp_path):
    out = tmp_path / "ft.safetensors"
    assert cli(["export", str(finetuned / "consolidated.pt"), "--out", str(out), "--model", "vit_micro_p4"]) == 0
    from safetensors.torch import load_file

    state = load_file(str(out))
    # timm VisionTransformer(embed_dim=32, depth=2, patch_size=4, img_size=20, global_pool="avg", fc_norm=True,
    # num_classes=10): no final norm (an Identity), fc_norm before the head
    dim, hidden = 32, 128
    expected = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + 25, dim),
        "patch_embed.proj.weight": (dim, 3, 4, 4),
        "patch_embed.proj.bias": (dim,),
        "fc_norm.weight": (dim,),
        "fc_norm.bias": (dim,),
        "head.weight": (10, dim),
        "head.bias": (10,),
    }
    for i in range(2):
        for name, shape in [
            ("norm1.weight", (dim,)),
            ("norm1.bias", (dim,)),
            ("attn.qkv.weight", (3 * dim, dim)),
            ("attn.qkv.bias", (3 * dim,)),
            ("attn.proj.weight", (dim, dim)),
            ("attn.proj.bias", (dim,)),
            ("norm2.weight", (dim,)),
            ("norm2.bias", (dim,)),
            ("mlp.fc1.weight", (hidden, dim)),
            ("mlp.fc1.bias", (hidden,)),
            ("mlp.fc2.weight", (dim, hidden)),
            ("mlp.fc2.bias", (dim,)),
        ]:
            expected[f"blocks.{i}.{name}"] = shape
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_weight_ema_is_evaluated_and_saved(world, mosaics, tmp_path):
    run = tmp_path / "ema"
    assert cli(_train(mosaics, run, "finetune.init=random", "finetune.ema=0.5", "train.steps=2")) == 0
    stage = run / "finetune"
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/top1" in r]
    assert [r["step"] for r in evals] == [2] and 0 <= evals[0]["eval/ema_top1"] <= evals[0]["eval/ema_top5"] <= 100
    averaged, last = torch.load(stage / "ema.pt"), torch.load(stage / "consolidated.pt")
    assert set(averaged) == set(last)
    assert not all(torch.equal(averaged[k], last[k]) for k in last)  # half-way back toward the initial weights


def test_stage_finetune_needs_an_init_checkpoint_or_random():
    cfg = load_config(None, ["stage=finetune"])
    with pytest.raises(ConfigError, match=r"finetune\.init_from"):
        cfg.check_standalone()
    load_config(None, ["stage=finetune", "finetune.init=random"]).check_standalone()


def test_an_unlabeled_training_set_is_refused(mosaics, tmp_path):
    cfg = load_config(None, [*TINY, "stage=finetune", f"data.path={tmp_path / 'none'}"])
    from maws_scale.data import build_loader

    with pytest.raises(ConfigError, match=r"data\.path"):
        build_loader(cfg, "finetune")
