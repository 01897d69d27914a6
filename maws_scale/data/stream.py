"""Streaming, resumable, elastic loader over Arrow shards.

Work split: positions come from :class:`~maws_scale.data.order.GlobalOrder`. Starting at the resume offset ``o``,
rank ``r`` of ``W`` owns positions ``o + r + W·q`` (q = 0, 1, …); its micro-batch ``i`` is q ∈ [iB, (i+1)B), and
DataLoader worker ``j`` of ``J`` builds micro-batches i ≡ j (mod J), which the DataLoader hands out round-robin,
i.e. in order. After every rank has consumed micro-batch ``i`` the trainer has consumed ``o + (i+1)·W·B`` global
positions: that single number is the loader state, so a run resumes exactly — on any number of ranks or workers.

Bad data never stops the stream: an unreadable, checksum-mismatched or wrongly typed shard, a corrupt image, an
empty key, or (for WSP) a record without a known tag is dropped, counted by reason and logged with shard and key.
Training batches keep their shape by repeating valid samples of the same batch; eval batches just shrink. Counts
travel back from worker processes with every batch. A shard is fully validated when opened (Arrow offsets, UTF-8),
so a shard with corrupted buffers is skipped as ``unreadable_shard`` too. Only an endless (training) stream with no
usable record stops: after :func:`unusable_limit` records in a row were dropped, iteration raises
:class:`DataStallError` naming the data path and the reason counts (every shard missing, a vocabulary none of whose
tags occur, ...). A one-pass (eval) stream just ends, with everything counted.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from maws_scale.data.decode import decode_batch
from maws_scale.data.gpu_decode import JpegDecoder, decode_on_device, pack_jobs, plan_device_batch
from maws_scale.data.labels import Vocabulary
from maws_scale.data.order import GlobalOrder
from maws_scale.data.shards import BinaryColumn, DatasetError, Manifest, check_schema, open_shard, sha256_file
from maws_scale.data.text import CaptionEncoder, pick_captions

log = logging.getLogger("maws_scale.data")
STATE_VERSION = 1
SMALL_ARRAY = 1 << 16
MAX_UNUSABLE = 100_000  # consecutive dropped records (at most an epoch) before a stream is declared dead


class DataStallError(DatasetError):
    """Not one usable record in a long run of records: training could never make progress on this data."""


def unusable_limit(spec: StreamSpec) -> int:
    """Records in a row that may be dropped before :class:`DataStallError`: ``MAX_UNUSABLE`` or the records of
    the shards the order interleaves, whichever is larger, but never more than one epoch."""
    largest = max((s.records for s in spec.manifest.shards), default=0)
    return min(spec.order.size, max(MAX_UNUSABLE, spec.order.mix * largest))


@dataclass
class StreamSpec:
    """Everything a worker needs to produce its batches (picklable)."""

    root: str
    manifest: Manifest
    order: GlobalOrder
    rank: int
    world_size: int
    micro_batch: int
    img_size: int
    train: bool
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    vocab: Vocabulary | None = None
    want_targets: bool = False
    want_labels: bool = False
    verify_checksums: bool = False
    pad: bool = True
    text: CaptionEncoder | None = None  # image-text stages: one caption per record → ``tokens`` (B, context)
    encoding: str = "encoded"  # "raw": uint8 HWC pixel records (data/transcode.py), cropped without a decode
    decode: str = "cpu"  # "gpu": JPEGs are decoded on the device by the main process (data/gpu_decode.py)
    eval_crop: float = 1.0  # train=False: centre crop / shorter side (0 = square resize of the whole image)


class _Shards:
    """Per-process cache of opened (memory-mapped) shards; a bad shard is remembered with its reason."""

    def __init__(self, spec: StreamSpec, keep: int = 16):
        self.spec = spec
        self.keep = keep
        self.tables: dict[int, _Shard | str] = {}
        self.warned_untagged = False

    def get(self, index: int) -> _Shard | str:
        if index in self.tables:
            return self.tables[index]
        info = self.spec.manifest.shards[index]
        path = Path(self.spec.root) / info.file
        result: _Shard | str
        try:
            size = path.stat().st_size
            if size != info.bytes:
                raise _ShardProblem("size_mismatch", f"size {size} != manifest {info.bytes}")
            if self.spec.verify_checksums and sha256_file(path) != info.sha256:
                raise _ShardProblem("checksum_mismatch", "sha256 differs from the manifest")
            table = open_shard(path)
            if table.num_rows != info.records:
                raise _ShardProblem("unreadable_shard", f"{table.num_rows} rows, manifest says {info.records}")
            table = check_schema(table, str(path))
            result = _Shard(table.drop_columns(["image"]), BinaryColumn(table["image"]))
        except _ShardProblem as problem:
            log.error("skipping shard %s: %s (%s)", path, problem.detail, problem.reason)
            result = problem.reason
        except FileNotFoundError:
            log.error("skipping shard %s: file missing (unreadable_shard)", path)
            result = "unreadable_shard"
        except DatasetError as err:
            reason = "bad_schema" if "column" in str(err) else "unreadable_shard"
            log.error("skipping shard %s: %s (%s)", path, err, reason)
            result = reason
        if len(self.tables) >= self.keep:
            self.tables.pop(next(iter(self.tables)))
        self.tables[index] = result
        return result


@dataclass
class _Shard:
    table: pa.Table  # every column but the images
    images: BinaryColumn


class _ShardProblem(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class ShardStream(IterableDataset):
    """Yields ready micro-batches (dicts) for one rank from global position ``start`` to ``end`` (None: endless)."""

    def __init__(self, spec: StreamSpec, start: int = 0, end: int | None = None):
        super().__init__()
        self.spec, self.start, self.end = spec, start, end

    def num_batches(self) -> int | None:
        """Micro-batches this rank gets before ``end`` (None when endless)."""
        if self.end is None:
            return None
        spec = self.spec
        mine = max(0, -(-(self.end - self.start - spec.rank) // spec.world_size))
        return -(-mine // spec.micro_batch)

    def positions(self, batch: int) -> np.ndarray:
        spec = self.spec
        q = np.arange(batch * spec.micro_batch, (batch + 1) * spec.micro_batch, dtype=np.int64)
        positions = self.start + spec.rank + spec.world_size * q
        return positions if self.end is None else positions[positions < self.end]

    def consumed_after(self, batch: int) -> int:
        done = self.start + (batch + 1) * self.spec.world_size * self.spec.micro_batch
        return done if self.end is None else min(done, self.end)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        shards = _Shards(self.spec)
        total = self.num_batches()
        batch = worker
        while total is None or batch < total:
            yield self.make_batch(batch, shards)
            batch += workers

    def make_batch(self, batch: int, shards: _Shards) -> dict[str, Any]:
        """Read, check, decode and collate rank micro-batch ``batch``."""
        spec = self.spec
        positions = self.positions(batch)
        errors: Counter = Counter()
        rows = _gather(spec, shards, positions, want_captions=spec.text is not None)
        n = len(positions)
        keys = rows["key"]
        # in a worker process, decode straight into shared memory: the DataLoader then sends it without a copy
        shape = (n, spec.img_size, spec.img_size, 3)
        buffer = torch.empty(shape, dtype=torch.uint8)
        if get_worker_info() is not None:
            buffer.share_memory_()
        device_jobs, fallbacks = {}, 0
        # the device path crops with crop_plan's default centre crop: an eval stream with another one decodes here
        if spec.decode == "gpu" and (spec.train or spec.eval_crop == 1.0):
            ok, reasons, device_jobs, fallbacks = plan_device_batch(
                rows["image"], positions, spec.order.seed, spec.img_size, spec.train, spec.crop_scale, spec.hflip,
                buffer.numpy(), rows["size"],
            )  # fmt: skip
        else:
            _, ok, reasons = decode_batch(
                rows["image"],
                positions,
                spec.order.seed,
                spec.img_size,
                spec.train,
                spec.crop_scale,
                spec.hflip,
                out=buffer.numpy(),
                sizes=rows["size"],
                encoding=spec.encoding,
                eval_crop=spec.eval_crop,
            )
        ok &= rows["ok"]
        for i in np.flatnonzero(~ok):
            reason = rows["reason"][i] or reasons[i] or "bad_record"
            errors[reason] += 1
            if rows["reason"][i] is None:  # shard-level problems are logged once, by _Shards
                log.warning("skipping record %r of %s: %s", keys[i], rows["shard"][i], reason)
        out: dict[str, Any] = {}
        if spec.want_targets and spec.vocab is not None:
            targets, known = spec.vocab.soft_targets(rows["tags"])
            if (untagged := int((ok & ~known).sum())) > 0:
                errors["no_known_tag"] += untagged
                level = logging.DEBUG if shards.warned_untagged else logging.WARNING
                shards.warned_untagged = True
                log.log(level, "%d records without a tag of the vocabulary skipped for WSP (no_known_tag)", untagged)
            ok &= known
            out["targets"] = targets
        if spec.text is not None:
            picked = pick_captions(rows["captions"], positions, spec.order.seed, spec.train)
            has = np.array([c is not None for c in picked], dtype=bool)
            if (uncaptioned := int((ok & ~has).sum())) > 0:
                errors["no_caption"] += uncaptioned
                log.debug("%d records without a caption skipped", uncaptioned)
            ok &= has
            out["tokens"] = spec.text([c or "" for c in picked])
        if spec.want_labels:
            out["labels"] = rows["label"]
        if rows.get("clean_tags") is not None and spec.vocab is not None:
            out["clean_targets"] = spec.vocab.multi_hot(rows["clean_tags"])
        # global stream positions: a DP-layout-independent id per sample (and per epoch), e.g. for MAE masks
        out["sample_ids"] = positions
        keep = _keep_index(ok, n, spec.pad)
        result: dict[str, Any] = {"_end": self.consumed_after(batch), "_errors": dict(errors), "_batch": batch}
        if fallbacks:
            result["_cpu_fallback"] = fallbacks
        if device_jobs and keep.size and (jobs := pack_jobs(device_jobs, keep)) is not None:
            result["_device_jpeg"] = jobs
        if keep.size == 0:
            result["_empty"] = True
            return result
        images = buffer if keep.size == n and (keep == np.arange(n)).all() else buffer[torch.from_numpy(keep)]
        result["images"] = images.permute(0, 3, 1, 2)  # (B, 3, H, W), channels_last memory layout
        result["keys"] = [keys[i] for i in keep]
        for name, value in out.items():
            # small arrays travel pickled by value: cheaper than passing another shared-memory file descriptor
            kept = np.ascontiguousarray(value[keep])
            result[name] = kept if kept.nbytes <= SMALL_ARRAY else torch.from_numpy(kept)
        return result


def _keep_index(ok: np.ndarray, n: int, pad: bool) -> np.ndarray:
    """Indices of the samples to emit: the valid ones, cycled to fill ``n`` slots when padding."""
    valid = np.flatnonzero(ok)
    if not pad or valid.size in (0, n):
        return valid
    return np.concatenate([valid, valid[np.arange(n - valid.size) % valid.size]])


def _gather(spec: StreamSpec, shards: _Shards, positions: np.ndarray, want_captions: bool = False) -> dict[str, Any]:
    """Fetch the records at ``positions`` (one ``take`` per shard, image bytes by offset); mark what cannot be used."""
    n = len(positions)
    shard_ids, row_ids = spec.order.locate(positions)
    out: dict[str, Any] = {
        "key": [f"<position {p}>" for p in positions.tolist()],
        "image": [None] * n,
        "ok": np.zeros(n, dtype=bool),
        "reason": [None] * n,
        "shard": [spec.manifest.shards[s].file for s in shard_ids.tolist()],
        "label": np.full(n, -1, dtype=np.int64),
        "size": np.full((n, 2), -1, dtype=np.int64),
    }
    tag_type = pa.list_(pa.string())
    tag_parts: list[tuple[np.ndarray, pa.Array]] = []
    clean_parts: list[tuple[np.ndarray, pa.Array]] = []
    caption_parts: list[tuple[np.ndarray, pa.Array]] = []
    for shard in np.unique(shard_ids):
        where = np.flatnonzero(shard_ids == shard)
        opened = shards.get(int(shard))
        if isinstance(opened, str):
            for i in where:
                out["reason"][i] = opened
            continue
        try:
            taken = opened.table.take(pa.array(row_ids[where]))
            keys = taken["key"].to_pylist()
            images = opened.images.get(row_ids[where])
        except Exception as err:  # corrupt buffers that passed validation: the shard is unusable, never the run
            log.error("skipping shard %s: %s (unreadable_shard)", out["shard"][where[0]], err)
            shards.tables[int(shard)] = "unreadable_shard"
            for i in where:
                out["reason"][i] = "unreadable_shard"
            continue
        for i, key, image in zip(where, keys, images):
            if key:
                out["key"][i] = key
            out["image"][i] = image
            out["ok"][i] = bool(key) and bool(image)
            if not key:
                out["reason"][i] = "bad_record"
                log.warning("skipping record without key at row %d of %s", row_ids[i], out["shard"][i])
        if "label" in taken.column_names:
            out["label"][where] = taken["label"].fill_null(-1).to_numpy()
        if "width" in taken.column_names and "height" in taken.column_names:
            out["size"][where, 0] = taken["width"].fill_null(-1).to_numpy()
            out["size"][where, 1] = taken["height"].fill_null(-1).to_numpy()
        tag_parts.append((where, taken["tags"].combine_chunks()))
        if "clean_tags" in taken.column_names:
            clean_parts.append((where, taken["clean_tags"].combine_chunks()))
        if want_captions and "captions" in taken.column_names:
            caption_parts.append((where, taken["captions"].combine_chunks()))
    out["tags"] = _reassemble(tag_parts, n, tag_type)
    out["clean_tags"] = _reassemble(clean_parts, n, tag_type) if clean_parts else None
    if want_captions:
        out["captions"] = _reassemble(caption_parts, n, tag_type).to_pylist()
    return out


def _reassemble(parts: list[tuple[np.ndarray, pa.Array]], n: int, type_: pa.DataType) -> pa.Array:
    """Put per-shard list arrays back in batch order; rows of unusable shards become empty lists."""
    covered = np.concatenate([w for w, _ in parts]) if parts else np.zeros(0, dtype=np.int64)
    missing = np.setdiff1d(np.arange(n), covered)
    arrays = [a.cast(type_) for _, a in parts]
    if missing.size:
        arrays.append(pa.array([[]] * missing.size, type=type_))
    order = np.concatenate([covered, missing])
    merged = pa.concat_arrays(arrays) if arrays else pa.array([], type=type_)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return merged.take(pa.array(inverse))


class StreamLoader:
    """The trainer-facing loader: iterate for batches; state_dict()/load_state_dict() for exact, elastic resume."""

    def __init__(
        self,
        spec: StreamSpec,
        num_workers: int = 0,
        infinite: bool = True,
        prefetch_factor: int = 2,
        pin_memory: bool | None = None,
        device: str | torch.device | None = None,
        jpeg_decoder: JpegDecoder | None = None,
    ):
        """``device``/``jpeg_decoder``: where and with what the JPEGs of a ``decode="gpu"`` spec are decoded."""
        self.spec = spec
        self.device, self.jpeg_decoder = device, jpeg_decoder
        self.cpu_fallbacks = 0  # decode="gpu": records decoded on the CPU instead (not JPEG, or refused)
        self.num_workers = num_workers
        # page-locked batches make the trainer's non_blocking copies asynchronous; default: where CUDA is
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.infinite = infinite
        self.prefetch_factor = prefetch_factor
        self.consumed = 0
        self._errors: Counter = Counter()

    # ----- the interface the trainer uses -------------------------------------------------------------------
    @property
    def epoch_size(self) -> int:
        return self.spec.order.size

    @property
    def num_classes(self) -> int | None:
        return len(self.spec.vocab) if self.spec.want_targets and self.spec.vocab is not None else None

    @property
    def epoch(self) -> int:
        return self.consumed // self.epoch_size

    def error_counts(self) -> dict[str, int]:
        return dict(self._errors)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "consumed": self.consumed,
            "epoch": self.epoch,
            "seed": self.spec.order.seed,
            "epoch_size": self.epoch_size,
            "order": self.spec.order.describe(),
            "dataset": self.spec.manifest.fingerprint(),
            "world_size": self.spec.world_size,
            "micro_batch": self.spec.micro_batch,
            "num_workers": self.num_workers,
            "errors": dict(self._errors),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state["consumed"]`` global samples (any world size, micro-batch or worker count)."""
        mine = self.state_dict()
        for key in ("seed", "epoch_size", "order", "dataset"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"loader state: '{key}' is {state[key]!r} in the saved state but {mine[key]!r} now; resuming "
                    "would not continue the same sample order"
                )
        self.consumed = int(state["consumed"])
        self._errors = Counter(state.get("errors", {}))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start = self.consumed
        end = None if self.infinite else (start // self.epoch_size + 1) * self.epoch_size
        if end is not None and start >= end:
            return
        stream = ShardStream(self.spec, start=start, end=end)
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs = {"prefetch_factor": self.prefetch_factor, "worker_init_fn": _worker_init}
        loader = DataLoader(
            stream,
            batch_size=None,
            collate_fn=_as_tensors,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            **kwargs,
        )
        limit, streak = unusable_limit(self.spec) if self.infinite else None, Counter()
        for item in loader:
            errors = item.pop("_errors")
            self._errors.update(errors)
            self.consumed = int(item.pop("_end"))
            item.pop("_batch")
            self.cpu_fallbacks += item.pop("_cpu_fallback", 0)
            if (jobs := item.pop("_device_jpeg", None)) is not None and not item.get("_empty"):
                item = self._decode_on_device(item, jobs)
            if item.pop("_empty", False):
                streak.update(errors)
                if limit is not None and streak.total() >= limit:
                    raise self._stalled(streak)
                continue
            streak.clear()
            yield item  # arrays are tensors already (_as_tensors), pinned by the DataLoader's pin thread

    def _decode_on_device(self, item: dict[str, Any], jobs: dict[str, Any]) -> dict[str, Any]:
        """Decode a batch's JPEGs on ``self.device``; a sample neither decoder can read is dropped, or (training)
        replaced by another sample of the batch, and counted."""
        spec = self.spec
        assert self.device is not None and self.jpeg_decoder is not None, "decode=gpu needs a device and decoder"
        images, failed, fallbacks, reasons = decode_on_device(
            item["images"], jobs, self.device, self.jpeg_decoder, spec.order.seed, spec.train, spec.crop_scale,
            spec.hflip,
        )  # fmt: skip
        item["images"] = images
        self.cpu_fallbacks += fallbacks
        if not failed:
            return item
        self._errors.update(reasons)
        for slot, reason in zip(failed, reasons):
            log.warning("skipping record %r: %s", item["keys"][slot], reason)
        n = len(item["keys"])
        ok = np.ones(n, dtype=bool)
        ok[failed] = False
        keep = _keep_index(ok, n, spec.pad)
        if keep.size == 0:
            return {"_empty": True}
        for name, value in item.items():
            if isinstance(value, list):
                item[name] = [value[i] for i in keep]
            elif isinstance(value, torch.Tensor):
                item[name] = value[torch.from_numpy(keep).to(value.device)]
            elif isinstance(value, np.ndarray):
                item[name] = value[keep]
        return item

    def _stalled(self, streak: Counter) -> DataStallError:
        reasons = ", ".join(f"{reason} {count}" for reason, count in streak.most_common())
        return DataStallError(
            f"{self.spec.root}: no usable record in the last {streak.total()} records read ({reasons}); training "
            f"cannot make progress on this data. Check it with `maws-scale data verify {self.spec.root}`"
            + (" and that the WSP vocabulary's tags occur in it" if "no_known_tag" in streak else "")
        )

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite loader has no length")
        stream = ShardStream(self.spec, start=self.consumed, end=(self.epoch + 1) * self.epoch_size)
        return int(stream.num_batches() or 0)


def _as_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """No collation (batches are built whole): the arrays become tensors (zero-copy) in the worker, so that the
    DataLoader's pin thread page-locks them (``pin_memory``) off the training thread; a copy in the main loop would be
    synchronous, about 38 MB per ViT-2B micro-batch. Other values (counts, offsets) stay as they are."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
