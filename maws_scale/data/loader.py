"""``build_loader``: the one call the trainer and the evaluator make to get batches from a RunConfig."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from maws_scale.config import ConfigError, RunConfig
from maws_scale.data.gpu_decode import JpegDecoder, torchvision_decoder
from maws_scale.data.labels import VOCAB, Vocabulary, load_vocab
from maws_scale.data.order import GlobalOrder
from maws_scale.data.shards import MANIFEST, DatasetError, image_encoding, load_manifest, open_shard
from maws_scale.data.stream import StreamLoader, StreamSpec

STAGES = ("mae", "wsp", "clip", "eval", "finetune")


def build_loader(
    cfg: RunConfig,
    stage: str,
    rank: int = 0,
    world_size: int = 1,
    micro_batch: int | None = None,
    path: str | None = None,
    infinite: bool = True,
    captions: bool = False,
    device: str | torch.device | None = None,
    jpeg_decoder: JpegDecoder | None = None,
    eval_crop: float = 1.0,
) -> StreamLoader | SyntheticLoader:
    """A resumable loader of uint8 image batches for ``stage`` ("mae", "wsp" or "eval") on data-parallel ``rank``.

    ``path`` overrides ``cfg.data.path`` (``cfg.data.eval_path`` for "eval"). "wsp" adds soft multi-hot
    ``targets`` over the vocabulary (``cfg.wsp.vocab``, default ``<data path>/vocab.json``). "eval" does not
    shuffle or augment (centre crop) and, with ``infinite=False``, makes one ordered pass in which every sample
    is seen once across the ranks. "clip" (and "eval" with ``captions``) adds ``tokens`` (B, context) from one
    caption per record, tokenized with the tokenizer stored with the *training* set (``data.path``). "finetune"
    trains on ``labels`` (refused without them). ``eval_crop``: the centre crop of "eval" (1 = the shorter side,
    0 = the whole image squashed). Raises ConfigError naming the key or file when the data cannot be used. With
    ``data.decode=gpu`` JPEGs are decoded on ``device`` (default: the current CUDA device) by ``jpeg_decoder``
    (default: torchvision's ``decode_jpeg``); evaluation streams with a centre crop below 1 decode on the CPU.
    """
    if stage not in STAGES:
        raise ConfigError(f"stage: unknown data stage '{stage}' (known: {', '.join(STAGES)})")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside the data-parallel world of {world_size}")
    micro_batch = micro_batch or cfg.train.micro_batch
    if cfg.data.synthetic:
        return SyntheticLoader(cfg, stage, rank, micro_batch)
    key = "data.eval_path" if stage == "eval" else "data.path"
    root = path or (cfg.data.eval_path if stage == "eval" else cfg.data.path)
    if not root:
        raise ConfigError(f"{key}: not set; point it at a directory built by `maws-scale data build`")
    try:
        manifest = load_manifest(root)
    except DatasetError as err:
        raise ConfigError(f"{key}: {err}") from None
    if manifest.records == 0:
        raise ConfigError(f"{key}: {Path(root) / MANIFEST} holds no records (the empty part of a partitioned build?)")
    vocab = _vocab(cfg, stage, root)
    has_labels = _has_labels(root, manifest)
    if stage == "finetune" and not has_labels:
        raise ConfigError(f"{key}: {root} has no 'label' column; stage finetune needs a labeled set")
    order = GlobalOrder(
        manifest.record_counts(), seed=cfg.seed, shuffle=stage != "eval", window=cfg.data.shuffle_buffer
    )
    spec = StreamSpec(
        root=str(root),
        manifest=manifest,
        order=order,
        rank=rank,
        world_size=world_size,
        micro_batch=micro_batch,
        img_size=cfg.img_size,
        train=stage != "eval",
        crop_scale=tuple(cfg.data.crop_scale),
        hflip=cfg.data.hflip,
        vocab=vocab,
        want_targets=stage == "wsp",
        want_labels=has_labels,
        verify_checksums=cfg.data.verify_checksums,
        pad=stage != "eval",
        text=_caption_encoder(cfg, root) if stage == "clip" or captions else None,
        encoding=image_encoding(manifest),
        eval_crop=eval_crop,
    )
    if cfg.data.decode == "gpu":
        device, jpeg_decoder = _device_decoder(spec, device, jpeg_decoder)
    return StreamLoader(
        spec, num_workers=cfg.data.num_workers, infinite=infinite, device=device, jpeg_decoder=jpeg_decoder
    )


def _device_decoder(
    spec: StreamSpec, device: str | torch.device | None, jpeg_decoder: JpegDecoder | None
) -> tuple[str | torch.device, JpegDecoder]:
    """The device and decoder of ``data.decode=gpu`` (ConfigError when this process cannot decode on a GPU)."""
    if spec.encoding == "raw":
        raise ConfigError(
            f"data.decode: gpu, but {spec.root} holds raw pixels (nothing to decode); use data.decode=cpu"
        )
    spec.decode = "gpu"
    if device is None:
        if not torch.cuda.is_available():
            raise ConfigError("data.decode: gpu needs a CUDA device in this process; use data.decode=cpu")
        device = torch.device("cuda", torch.cuda.current_device())
    decoder = jpeg_decoder or torchvision_decoder()
    if decoder is None:
        raise ConfigError("data.decode: gpu needs torchvision (pip install 'maws-scale[gpu-decode]'); torchvision "
                          "does not import here")  # fmt: skip
    return device, decoder


def _vocab(cfg: RunConfig, stage: str, root: str) -> Vocabulary | None:
    """The WSP vocabulary: required for "wsp"; used for eval's clean multi-hot labels when it exists."""
    train_root = cfg.data.path or root
    vocab_path = Path(cfg.wsp.vocab) if cfg.wsp.vocab else Path(train_root) / VOCAB
    if stage == "wsp":
        try:
            return load_vocab(vocab_path)
        except DatasetError as err:
            raise ConfigError(f"wsp.vocab: {err}") from None
    if stage == "eval" and vocab_path.is_file():
        return load_vocab(vocab_path)
    return None


def _caption_encoder(cfg: RunConfig, root: str):
    """The tokenizer of the training set (``data.path``; the eval set's own when that is unset)."""
    from maws_scale.data.text import CaptionEncoder, TextInfo

    train_root = cfg.data.path or root
    try:
        info = TextInfo.of(train_root)
    except DatasetError as err:
        raise ConfigError(f"data.path: {err}") from None
    return CaptionEncoder(info.path, info.context_length)


def _has_labels(root: str, manifest: Any) -> bool:
    """True when the first readable shard has a ``label`` column with at least one value."""
    for shard in manifest.shards:
        try:
            table = open_shard(Path(root) / shard.file)
        except DatasetError:
            continue
        return "label" in table.column_names and table["label"].null_count < table.num_rows
    return False


class SyntheticLoaderState:
    """The loader interface of a synthetic stream: its state is the number of samples (or batches) handed out."""

    consumed: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "synthetic": True}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state.get("consumed", 0))

    def error_counts(self) -> dict[str, int]:
        return {}


class SyntheticLoader(SyntheticLoaderState):
    """``data.synthetic=true``: deterministic random uint8 images (and targets) with the real loader's interface,
    for throughput benchmarks that must not depend on storage or decoding."""

    def __init__(self, cfg: RunConfig, stage: str, rank: int, micro_batch: int):
        self.img_size, self.micro_batch, self.stage = cfg.img_size, micro_batch, stage
        self.seed = cfg.seed * 1_000_003 + rank
        self.num_classes = (cfg.wsp.num_classes or 1000) if stage == "wsp" else None
        self.label_classes = (cfg.finetune.num_classes or 1000) if stage == "finetune" else None
        self.text_shape = None
        if stage == "clip":
            from maws_scale.clip_checks import text_shape

            self.text_shape = text_shape(cfg)  # (vocab, context): random ids between the special tokens and vocab
        self.epoch_size = 1 << 30
        self.consumed = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        gen = torch.Generator().manual_seed(self.seed)
        b, s = self.micro_batch, self.img_size
        while True:
            batch: dict[str, Any] = {
                "images": torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=gen),
                "keys": [f"synthetic-{self.consumed + i}" for i in range(b)],
            }
            if self.num_classes:
                labels = torch.randint(0, self.num_classes, (b,), generator=gen)
                batch["targets"] = torch.nn.functional.one_hot(labels, self.num_classes).float()
            if self.label_classes:
                batch["labels"] = torch.randint(0, self.label_classes, (b,), generator=gen)
            if self.text_shape is not None:
                vocab, context = self.text_shape
                batch["tokens"] = torch.randint(3, vocab, (b, context), generator=gen)
            self.consumed += b
            yield batch
