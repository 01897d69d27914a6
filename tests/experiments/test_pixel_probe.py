"""The probes' own floor: `python -m maws_scale.experiments.pixel_probe` on a small labeled Fashion-MNIST set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maws_scale.data.build import build_dataset
from maws_scale.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource
from maws_scale.experiments.pixel_probe import PixelEncoder, main

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
pytestmark = pytest.mark.skipif(not Path(DEFAULT_DIR).is_dir(), reason="Fashion-MNIST is not installed")


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fmnist-single") / "test"
    build_dataset(FashionMNISTSource(split="test", variant="single", limit=300), out, progress=False)
    return out


def test_pixel_features_are_the_flattened_images() -> None:
    images = torch.randn(4, 3, 8, 8)
    encoder = PixelEncoder()
    assert torch.equal(encoder.pool(encoder.forward_features(images)), images.reshape(4, -1))
    assert [p.requires_grad for p in encoder.parameters()] == [False]


def test_pixel_probe_scores_raw_pixels_with_the_configs_evaluation(labeled: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pixels.json"
    overrides = [f"data.eval_path={labeled}", "model.img_size=28", "data.num_workers=0", "eval.few_shot=[1]"]
    assert main([DEMO, *overrides, "eval.train_path=null", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics == json.loads(capsys.readouterr().out)
    assert metrics["eval/linear_top1"] > 30 and metrics["eval/knn_top1"] > 30  # pixels separate FMNIST (chance 10)
    assert metrics["eval/num_probe_train"] + metrics["eval/num_probe_test"] == 300
    assert "eval/fewshot_1_top1" in metrics and "eval/fewshot_5_top1" not in metrics


def test_pixel_probe_refuses_a_bad_key_with_one_line(capsys) -> None:
    assert main([DEMO, "eval.no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.no_such_key" in err
