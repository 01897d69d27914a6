"""evaluate_checkpoint on a tiny model checkpoint and a small labeled Fashion-MNIST set; the `eval` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maws_scale.cli import main
from maws_scale.config import load_config
from maws_scale.data.build import build_dataset
from maws_scale.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource
from maws_scale.eval import evaluate_checkpoint
from maws_scale.eval.checkpoint import CheckpointError, load_encoder, random_encoder
from maws_scale.eval.features import Features, split_by_key
from maws_scale.models import build_mae, build_wsp

pytestmark = pytest.mark.skipif(not Path(DEFAULT_DIR).is_dir(), reason="Fashion-MNIST is not installed")
MODEL = "vit_micro_p4"


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fmnist-single") / "test"
    build_dataset(FashionMNISTSource(split="test", variant="single", limit=300), out, progress=False)
    return out


def config(data: Path, *extra: str):
    return load_config(
        None,
        [
            f"model.name={MODEL}",
            f"data.eval_path={data}",
            "data.num_workers=0",
            "eval.few_shot=[1,5]",
            "eval.seeds=2",
            "tracking.enabled=false",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "mae.pt"
    torch.save(build_mae(MODEL).state_dict(), path)
    return path


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.calls.append((dict(metrics), step))


def test_evaluate_checkpoint_on_an_mae_checkpoint(labeled: Path, mae_checkpoint: Path) -> None:
    cfg = config(labeled, "train.steps=7")
    tracker = Recorder()
    metrics = evaluate_checkpoint(cfg, mae_checkpoint, tracker=tracker)
    for key in ("linear_top1", "knn_top1", "fewshot_1_top1", "fewshot_5_top1", "fewshot_5_top1_std"):
        assert f"eval/{key}" in metrics
    # a random encoder on Fashion-MNIST is far above the 10 % chance level with a linear probe
    assert 25.0 < metrics["eval/linear_top1"] <= 100.0
    assert metrics["eval/num_probe_train"] + metrics["eval/num_probe_test"] == 300
    assert tracker.calls == [(metrics, 7)]


def test_the_probe_uses_the_encoder_weights(labeled: Path, mae_checkpoint: Path, tmp_path: Path) -> None:
    """Zeroed patch embedding = constant features = chance: evaluation really runs the checkpoint's encoder."""
    state = torch.load(mae_checkpoint, weights_only=True)
    state = {k: (torch.zeros_like(v) if k.startswith("patch_embed") else v) for k, v in state.items()}
    dead = tmp_path / "dead.pt"
    torch.save(state, dead)
    metrics = evaluate_checkpoint(config(labeled, "eval.few_shot=[]"), dead)
    assert metrics["eval/linear_top1"] < 25.0


def test_pooling_choice_is_respected(labeled: Path, mae_checkpoint: Path) -> None:
    cfg_cls, cfg_gap = config(labeled, "model.pool=cls"), config(labeled, "model.pool=gap")
    enc_cls, enc_gap = load_encoder(cfg_cls, mae_checkpoint), load_encoder(cfg_gap, mae_checkpoint)
    x = torch.randn(2, 3, 16, 16)
    tokens = enc_cls.forward_features(x)
    assert torch.allclose(enc_cls(x), tokens[:, 0])
    assert torch.allclose(enc_gap(x), tokens[:, 1:].mean(1), atol=1e-6)
    with pytest.raises(CheckpointError, match="attn_pool"):
        load_encoder(config(labeled, "model.pool=map"), mae_checkpoint)


def test_a_wsp_checkpoint_with_map_pooling_loads(labeled: Path, tmp_path: Path) -> None:
    model = build_wsp(MODEL, num_classes=10, pool="map")
    path = tmp_path / "wsp.pt"
    torch.save({"model": model.state_dict()}, path)
    encoder = load_encoder(config(labeled, "model.pool=map"), path)
    assert torch.equal(encoder.attn_pool.latent, model.attn_pool.latent)


def test_a_checkpoint_of_another_model_is_refused(labeled: Path, tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(build_mae("vit_tiny_p4").state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_encoder(config(labeled), path)


def test_split_by_key_is_deterministic_and_order_free() -> None:
    keys = [f"k{i}" for i in range(500)]
    feats = Features(torch.arange(500.0)[:, None], torch.zeros(500, dtype=torch.long), keys)
    train, test = split_by_key(feats)
    rev = Features(feats.x.flip(0), feats.y, keys[::-1])
    _, test2 = split_by_key(rev)
    assert sorted(test.keys) == sorted(test2.keys) and not set(train.keys) & set(test.keys)
    assert 60 < len(test) < 140


def test_eval_command_prints_json(labeled: Path, mae_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", str(labeled), "--json", f"model.name={MODEL}", "eval.few_shot=[1]", "eval.seeds=1"]
    code = main(["eval", str(mae_checkpoint), *args, "data.num_workers=0", "tracking.enabled=false"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["eval/linear_top1"] > 25.0 and "eval/fewshot_1_top1" in metrics


def test_eval_command_refuses_a_bad_key(mae_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(mae_checkpoint), "--data", "x", "eval.knn=3"]) == 2
    assert "eval.knn" in capsys.readouterr().err


def test_random_init_is_a_seeded_reference(labeled: Path) -> None:
    a, b = random_encoder(config(labeled, "seed=4")), random_encoder(config(labeled, "seed=4"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = random_encoder(config(labeled, "seed=5"))
    assert not torch.equal(a.pos_embed, c.pos_embed)
    metrics = evaluate_checkpoint(config(labeled, "eval.few_shot=[]"), "random")
    assert 10.0 < metrics["eval/linear_top1"] <= 100.0 and "eval/knn_top1" in metrics


def test_features_are_extracted_under_autocast_to_the_given_dtype() -> None:
    """On CUDA the evaluation extracts in bf16 (autocast) on the training device; here the CPU autocast stands in."""
    from maws_scale.eval.features import extract_features
    from maws_scale.models import build_encoder

    encoder = build_encoder("vit_micro_p4")
    seen = []
    forward_features = encoder.forward_features

    def spy(images):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward_features(images)

    encoder.forward_features = spy
    size = encoder.img_size
    batches = [{"images": torch.zeros(2, 3, size, size, dtype=torch.uint8), "labels": [0, 1], "keys": ["a", "b"]}]
    features = extract_features(encoder, batches, progress=False, dtype=torch.bfloat16)
    assert seen == [(True, torch.bfloat16)] and features.x.dtype == torch.float32
    extract_features(encoder, batches, progress=False)
    assert seen[-1][0] is False  # no dtype: no autocast


@pytest.mark.dist
def test_two_ranks_extract_their_slices_and_equal_one_rank(tmp_path, mae_checkpoint):
    """Collective evaluation (issue: features of a big model must not be extracted on rank 0 alone): 2 ranks each
    extract a strided slice of 301 images; rank 0's gathered features are one rank's, in the same order."""
    import importlib.util

    from dist_support import run_torchrun

    from maws_scale.eval.evaluate import _features

    spec = importlib.util.spec_from_file_location("eval_worker", Path(__file__).with_name("eval_worker.py"))
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    MAX_TRAIN, eval_config = worker.MAX_TRAIN, worker.eval_config

    data = tmp_path / "odd"
    build_dataset(FashionMNISTSource(split="test", variant="single", limit=301), data, progress=False)
    out = tmp_path / "two.json"
    run_torchrun(Path(__file__).with_name("eval_worker.py"), 2, [str(data), str(mae_checkpoint), str(out)])
    two = json.loads(out.read_text())
    cfg = eval_config(str(data))
    one = _features(load_encoder(cfg, mae_checkpoint), cfg, str(data), MAX_TRAIN, "features", False, (0, 1))
    assert two["keys"] == one.keys and len(one.keys) == MAX_TRAIN
    torch.testing.assert_close(torch.tensor(two["x"]), one.x, atol=1e-5, rtol=1e-5)
    reference = evaluate_checkpoint(cfg, mae_checkpoint)
    assert set(two["metrics"]) == set(reference)
    assert two["metrics"]["eval/num_probe_train"] == reference["eval/num_probe_train"] == MAX_TRAIN
    assert two["metrics"]["eval/linear_top1"] == pytest.approx(reference["eval/linear_top1"], abs=1.0)
