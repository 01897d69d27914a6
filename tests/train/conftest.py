"""Shared fixtures of the training-engine tests: a tiny real data set."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = [
    "model.name=vit_micro_p4",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "parallel.precision=fp32",
    "optim.impl=torch",
    "tracking.enabled=false",
]


@pytest.fixture(scope="session")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """512 noisy Fashion-MNIST mosaics (56 px, multi-label tags) with vocab.json, plus a 256-image test split."""
    from maws_scale.data.build import build_dataset
    from maws_scale.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource
    from maws_scale.data.labels import build_vocab

    if not Path(DEFAULT_DIR, "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    root = tmp_path_factory.mktemp("fmnist-mosaic")
    build_dataset(FashionMNISTSource(noise=0.2, limit=512, seed=0), root / "train", progress=False)
    build_vocab(root / "train", min_count=1)
    build_dataset(FashionMNISTSource(split="test", noise=0.0, limit=256, seed=0), root / "test", progress=False)
    return root


@pytest.fixture(scope="session")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image-text mosaics: 256 training mosaics captioned from their noisy tags ("a mosaic of bag and shirt"),
    vocab.json and a BPE tokenizer (vocab ≤ 300, context 16); a 128-image captioned test split of single images."""
    from maws_scale.data.build import build_dataset
    from maws_scale.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource
    from maws_scale.data.labels import build_vocab
    from maws_scale.data.text import train_tokenizer

    if not Path(DEFAULT_DIR, "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    root = tmp_path_factory.mktemp("fmnist-captions")
    build_dataset(FashionMNISTSource(noise=0.2, limit=256, seed=0, captions=True), root / "train", progress=False)
    build_vocab(root / "train", min_count=1)
    train_tokenizer(root / "train", vocab_size=300, context_length=16)
    test = FashionMNISTSource(split="test", variant="single", limit=128, seed=0, captions=True)
    build_dataset(test, root / "test", progress=False)
    return root
