"""The streaming loader: exactly-once epochs over ranks × workers, exact and elastic resume, batch contents."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from maws_scale.config import ConfigError
from maws_scale.data import IMAGENET_MEAN, IMAGENET_STD, build_loader, normalize_on_device
from maws_scale.data.shards import load_manifest


def _keys(loader, limit: int | None = None) -> list[str]:
    """Keys of the first ``limit`` batches (all when None); never pulls a batch beyond ``limit``."""
    return [key for batch in itertools.islice(loader, limit) for key in batch["keys"]]


def test_epoch_exactly_once_over_2_ranks_x_2_workers(mosaic_dir, cfg_for):
    cfg = cfg_for(mosaic_dir, "data.num_workers=2")
    seen: list[str] = []
    for rank in range(2):
        seen += _keys(build_loader(cfg, "mae", rank=rank, world_size=2, infinite=False))
    assert len(seen) == 600
    assert len(set(seen)) == 600
    assert load_manifest(mosaic_dir).records == 600


def test_order_is_a_pure_function_of_seed_and_epoch(mosaic_dir, cfg_for):
    cfg = cfg_for(mosaic_dir)
    one = _keys(build_loader(cfg, "mae", infinite=False))
    two = _keys(build_loader(cfg, "mae", infinite=False))
    assert one == two
    other = _keys(build_loader(cfg_for(mosaic_dir, "seed=1"), "mae", infinite=False))
    assert other != one and sorted(other) == sorted(one)
    # the shuffle interleaves shards: the first shuffle window already mixes records of several shards
    ends = np.cumsum([s.records for s in load_manifest(mosaic_dir).shards])
    first_window = {int(np.searchsorted(ends, int(k[-6:]), side="right")) for k in one[:64]}
    assert len(first_window) >= 3


@pytest.mark.parametrize(("new_world", "new_workers"), [(2, 2), (3, 2), (1, 1), (3, 0)])
def test_resume_yields_exactly_the_remaining_samples(mosaic_dir, cfg_for, new_world, new_workers):
    cfg = cfg_for(mosaic_dir, "data.num_workers=2")
    loaders = [build_loader(cfg, "mae", rank=r, world_size=2, infinite=False) for r in range(2)]
    seen = [k for loader in loaders for k in _keys(loader, limit=5)]  # 5 micro-batches per rank
    states = [loader.state_dict() for loader in loaders]
    assert states[0]["consumed"] == states[1]["consumed"] == 5 * 2 * 8
    state = json.loads(json.dumps(states[0]))  # must survive a JSON checkpoint
    cfg2 = cfg_for(mosaic_dir, f"data.num_workers={new_workers}")
    rest: list[str] = []
    for r in range(new_world):
        loader = build_loader(cfg2, "mae", rank=r, world_size=new_world, infinite=False)
        loader.load_state_dict(state)
        rest += _keys(loader)
    assert len(seen) + len(rest) == 600
    assert set(seen) | set(rest) == {f"fmnist-train-mosaic-{i:06d}" for i in range(600)}
    assert not set(seen) & set(rest)


def test_resume_reproduces_the_same_pixels(mosaic_dir, cfg_for):
    """Augmentation depends only on (seed, position): a resumed run draws the very crops it would have drawn."""
    cfg = cfg_for(mosaic_dir)
    full = list(build_loader(cfg, "mae", infinite=False))
    loader = build_loader(cfg, "mae", infinite=False)
    _keys(loader, limit=3)
    state = loader.state_dict()
    resumed = build_loader(cfg, "mae", infinite=False)
    resumed.load_state_dict(state)
    batch = next(iter(resumed))
    assert batch["keys"] == full[3]["keys"]
    assert torch.equal(batch["images"], full[3]["images"])


def test_infinite_rolls_over_epochs_with_a_new_order(mosaic_dir, cfg_for):
    cfg = cfg_for(mosaic_dir, "train.micro_batch=50")
    loader = build_loader(cfg, "mae", infinite=True)
    keys = _keys(loader, limit=24)  # 2 epochs of 600
    assert loader.state_dict()["epoch"] == 2 and loader.epoch_size == 600
    first, second = keys[:600], keys[600:]
    assert sorted(first) == sorted(second) and first != second


def test_prefetched_batches_are_not_counted_as_consumed(mosaic_dir, cfg_for):
    cfg = cfg_for(mosaic_dir, "data.num_workers=2")
    loader = build_loader(cfg, "mae", infinite=True)
    it = iter(loader)
    next(it)
    next(it)
    assert loader.state_dict()["consumed"] == 16  # workers have prefetched more than this


def test_batch_contents_per_stage(mosaic_dir, cfg_for):
    cfg = cfg_for(mosaic_dir)
    mae = next(iter(build_loader(cfg, "mae")))
    assert mae["images"].dtype == torch.uint8 and mae["images"].shape == (8, 3, 56, 56)
    assert "targets" not in mae and mae["labels"].dtype == torch.int64
    wsp_loader = build_loader(cfg, "wsp")
    wsp = next(iter(wsp_loader))
    assert wsp_loader.num_classes == 10
    assert wsp["targets"].shape == (8, 10) and wsp["targets"].dtype == torch.float32
    assert torch.allclose(wsp["targets"].sum(1), torch.ones(8))
    eval_loader = build_loader(cfg, "eval", path=str(mosaic_dir), infinite=False)
    keys = _keys(eval_loader)
    assert keys == [f"fmnist-train-mosaic-{i:06d}" for i in range(600)]  # ordered, un-augmented


def test_eval_is_centre_crop_without_augmentation(mosaic_dir, cfg_for):
    cfg = cfg_for(mosaic_dir)
    one = next(iter(build_loader(cfg, "eval", path=str(mosaic_dir))))
    two = next(iter(build_loader(cfg_for(mosaic_dir, "seed=5"), "eval", path=str(mosaic_dir))))
    assert torch.equal(one["images"], two["images"])
    # 56-px mosaics at 56 px: the eval image is the stored image, grayscale copied to 3 channels
    assert torch.equal(one["images"][:, 0], one["images"][:, 1])


def test_wsp_without_vocab_is_refused_naming_file_and_command(tmp_path, mosaic_dir, cfg_for):
    cfg = cfg_for(mosaic_dir, f"wsp.vocab={tmp_path / 'nope.json'}")
    with pytest.raises(ConfigError, match=r"wsp\.vocab: .*nope\.json.*maws-scale data vocab"):
        build_loader(cfg, "wsp")


def test_missing_dataset_is_a_config_error(tmp_path, cfg_for):
    with pytest.raises(ConfigError, match=r"data\.path: .*manifest"):
        build_loader(cfg_for(tmp_path), "mae")


def test_state_from_another_seed_is_refused(mosaic_dir, cfg_for):
    state = build_loader(cfg_for(mosaic_dir), "mae").state_dict()
    with pytest.raises(ValueError, match="seed"):
        build_loader(cfg_for(mosaic_dir, "seed=3"), "mae").load_state_dict(state)


def test_normalize_on_device_matches_the_formula():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    out = normalize_on_device(images)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(out, (images.float() / 255 - mean) / std, atol=1e-6)
    assert normalize_on_device(images, dtype=torch.bfloat16).dtype == torch.bfloat16
    channels_last = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # the loader's layout
    assert torch.equal(normalize_on_device(channels_last), out) and normalize_on_device(channels_last).is_contiguous()
    with pytest.raises(ValueError, match="uint8"):
        normalize_on_device(images.float())


def test_synthetic_loader_has_the_same_interface(cfg_for, tmp_path):
    cfg = cfg_for(tmp_path, "data.synthetic=true", "wsp.num_classes=7")
    loader = build_loader(cfg, "wsp")
    batch = next(iter(loader))
    assert batch["images"].shape == (8, 3, 56, 56) and batch["targets"].shape == (8, 7)
    assert loader.error_counts() == {} and loader.num_classes == 7
    assert np.isfinite(loader.state_dict()["consumed"])


def test_eval_pass_over_3_ranks_sees_every_sample_once_in_order(mosaic_dir, cfg_for):
    cfg = cfg_for(mosaic_dir, "data.num_workers=2", "train.micro_batch=7")
    per_rank = [
        _keys(build_loader(cfg, "eval", rank=r, world_size=3, path=str(mosaic_dir), infinite=False)) for r in range(3)
    ]
    merged = [k for triple in itertools.zip_longest(*per_rank) for k in triple if k]  # rank r holds positions r mod 3
    assert merged == [f"fmnist-train-mosaic-{i:06d}" for i in range(600)]


def test_sample_ids_are_global_positions(mosaic_dir, cfg_for):
    cfg = cfg_for(mosaic_dir)
    loader = build_loader(cfg, "mae", rank=1, world_size=2)
    batch = next(iter(loader))
    assert batch["sample_ids"].tolist() == list(range(1, 16, 2))


def test_binary_column_reads_rows_across_chunks_slices_and_nulls():
    import pyarrow as pa

    from maws_scale.data.shards import BinaryColumn

    values = [b"a", None, b"", b"dddd", b"ee", None, b"ggggggg"]
    array = pa.array(values, pa.binary())
    column = pa.chunked_array([array.slice(0, 3), array.slice(3)])  # the second chunk has a non-zero offset
    got = BinaryColumn(column).get(np.array([6, 0, 3, 1, 2, 5, 4]))
    assert got == [b"ggggggg", b"a", b"dddd", None, b"", None, b"ee"]
