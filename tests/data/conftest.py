"""Small data sets shared by the data-layer tests (built once per session from the Debian Fashion-MNIST)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maws_scale.config import load_config
from maws_scale.data.build import build_dataset
from maws_scale.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource
from maws_scale.data.labels import build_vocab


@pytest.fixture(scope="session")
def mosaic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 noisy mosaics in 7 shards (~90 records each), with vocab.json."""
    if not Path(DEFAULT_DIR, "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    out = tmp_path_factory.mktemp("mosaic")
    build_dataset(FashionMNISTSource(noise=0.3, limit=600, seed=1), out, shard_size=170_000, progress=False)
    build_vocab(out, min_count=1)
    return out


def make_config(path: Path, *overrides: str):
    """A tiny-model config reading ``path`` (56-px images, micro-batch 8, small shuffle window)."""
    return load_config(
        None,
        [
            "model.name=vit_tiny_p8",
            f"data.path={path}",
            "data.num_workers=0",
            "data.shuffle_buffer=64",
            "train.micro_batch=8",
            "train.global_batch=64",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def cfg_for():
    """The :func:`make_config` helper, as a fixture (test modules cannot import conftest under importlib mode)."""
    return make_config
