"""Arrow IPC shards and the per-dataset manifest.

A dataset is a directory holding ``shard-NNNNN.arrow`` files (Arrow IPC *file* format, memory-mappable, record
batches of a few hundred rows) and ``manifest.json`` (shard list, record counts, byte sizes, sha256, schema
version, how it was built). Images are stored as the encoded bytes they came in (JPEG/PNG); nothing is re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FORMAT = "arrow-ipc-file"
ROWS_PER_BATCH = 256

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("label", pa.int64()),
        pa.field("clean_tags", pa.list_(pa.string())),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("captions", pa.list_(pa.string())),  # image-text sets only (see data/text.py)
    ],
    metadata={"maws_scale.schema_version": str(SCHEMA_VERSION)},
)
REQUIRED = ("key", "image", "tags")


class DatasetError(RuntimeError):
    """A dataset directory or shard that cannot be used; the message names the file."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def records_to_batch(records: list[Mapping[str, Any]]) -> pa.RecordBatch:
    """Build one record batch with the dataset schema; missing optional fields become nulls."""
    columns = {name: [rec.get(name) for rec in records] for name in SCHEMA.names}
    return pa.RecordBatch.from_pydict(columns, schema=SCHEMA)


def write_shard(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Write records to an Arrow IPC file at ``path`` (atomically); return {records, bytes, sha256}."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, SCHEMA) as writer:
        pending: list[Mapping[str, Any]] = []
        for record in records:
            pending.append(record)
            if len(pending) >= ROWS_PER_BATCH:
                writer.write_batch(records_to_batch(pending))
                count += len(pending)
                pending = []
        if pending:
            writer.write_batch(records_to_batch(pending))
            count += len(pending)
    digest = sha256_file(tmp)
    size = tmp.stat().st_size
    os.replace(tmp, path)
    return {"records": count, "bytes": size, "sha256": digest}


def open_shard(path: str | os.PathLike) -> pa.Table:
    """Memory-map an Arrow IPC shard and return it as a zero-copy table (raises DatasetError)."""
    try:
        source = pa.memory_map(str(path), "r")
        return ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as err:
        raise DatasetError(f"{path}: unreadable Arrow shard ({err})") from None


def check_schema(table: pa.Table, where: str) -> pa.Table:
    """Return ``table`` with the dataset schema's column types, or raise DatasetError naming the bad column."""
    for name in REQUIRED:
        if name not in table.column_names:
            raise DatasetError(f"{where}: missing column '{name}'")
    for name in table.column_names:
        if name not in SCHEMA.names:
            continue
        want = SCHEMA.field(name).type
        have = table.schema.field(name).type
        if have == want:
            continue
        try:
            table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(want))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DatasetError(f"{where}: column '{name}' has type {have}, expected {want}") from None
    return table


class BinaryColumn:
    """Row access to a memory-mapped binary column through its offsets: one copy per image, no ``take`` (which
    copies large values slowly)."""

    def __init__(self, column: pa.ChunkedArray):
        self.starts = np.cumsum([0] + [len(chunk) for chunk in column.chunks])
        self.chunks: list[tuple[np.ndarray, memoryview | None, np.ndarray | None]] = []
        for chunk in column.chunks:
            _, offsets, data = chunk.buffers()
            offs = np.frombuffer(offsets, dtype=np.int32, count=len(chunk) + 1, offset=chunk.offset * 4)
            valid = chunk.is_valid().to_numpy(zero_copy_only=False) if chunk.null_count else None
            self.chunks.append((offs, memoryview(data) if data is not None else None, valid))

    def get(self, rows: np.ndarray) -> list[bytes | None]:
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out: list[bytes | None] = []
        for k, row in zip(which.tolist(), (rows - self.starts[which]).tolist()):
            offsets, data, valid = self.chunks[k]
            if data is None or (valid is not None and not valid[row]):
                out.append(None)
            else:
                out.append(bytes(data[offsets[row] : offsets[row + 1]]))
        return out


@dataclass
class ShardInfo:
    file: str
    records: int
    bytes: int
    sha256: str
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    """The dataset's table of contents (``manifest.json``)."""

    shards: list[ShardInfo]
    build: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT
    columns: list[str] = field(default_factory=lambda: list(SCHEMA.names))
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    text: dict[str, Any] = field(default_factory=dict)  # tokenizer file, vocab size, context length (data/text.py)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "format": self.format,
            "created": self.created,
            "records": self.records,
            "bytes": self.bytes,
            "columns": self.columns,
            "shards": [vars(s) for s in self.shards],
            "build": self.build,
            **({"text": self.text} if self.text else {}),
        }

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / MANIFEST
        write_json_atomic(path, self.to_json())
        return path

    def fingerprint(self) -> str:
        """A short id of the shard contents (changes when any shard changes)."""
        digest = hashlib.sha256("".join(s.sha256 for s in self.shards).encode())
        return digest.hexdigest()[:16]


def load_manifest(directory: str | os.PathLike) -> Manifest:
    """Read ``<directory>/manifest.json``; raise DatasetError naming the file and the problem."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{path}: no manifest; build the dataset with `maws-scale data build ... --output {directory}`"
        )
    try:
        raw = json.loads(path.read_text())
        version = int(raw["schema_version"])
        shards = [
            ShardInfo(
                file=str(s["file"]),
                records=int(s["records"]),
                bytes=int(s["bytes"]),
                sha256=str(s["sha256"]),
                skipped=dict(s.get("skipped", {})),
            )
            for s in raw["shards"]
        ]
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path}: malformed manifest ({type(err).__name__}: {err})") from None
    if version > SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema_version {version} is newer than this maws-scale ({SCHEMA_VERSION})")
    return Manifest(
        shards=shards,
        build=raw.get("build", {}),
        schema_version=version,
        format=raw.get("format", FORMAT),
        columns=list(raw.get("columns", SCHEMA.names)),
        created=raw.get("created", ""),
        text=dict(raw.get("text", {})),
    )
