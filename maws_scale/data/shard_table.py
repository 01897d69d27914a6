"""The shard list of a data set as a memory-mapped Arrow file (``shards.arrow`` next to ``manifest.json``).

At 600k shards a Python list of per-shard objects costs ~700 B per shard in every rank and DataLoader worker.
:class:`ShardTable` instead maps one Arrow IPC file (columns file, records, bytes, sha256, skipped) read-only: its
pages live in the OS page cache, shared by every process on the node, and are touched only for the shards a process
opens. It behaves as a read-only sequence of :class:`~maws_scale.data.shards.ShardInfo`, built on access; it pickles
as its path (a spawned worker re-maps the file), and ``record_counts()`` is a zero-copy int64 view.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from maws_scale.errors import write_atomic

if TYPE_CHECKING:
    from maws_scale.data.shards import ShardInfo

SHARD_TABLE = "shards.arrow"
TABLE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("records", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("skipped", pa.string(), nullable=False),  # JSON object, "{}" when nothing was skipped
    ]
)


def write_shard_table(path: str | os.PathLike, shards: Sequence[ShardInfo]) -> None:
    """Write ``shards`` as one record batch (so columns map to contiguous arrays), atomically."""
    path = Path(path)
    columns = {
        "file": [s.file for s in shards],
        "records": [s.records for s in shards],
        "bytes": [s.bytes for s in shards],
        "sha256": [s.sha256 for s in shards],
        "skipped": [json.dumps(s.skipped, sort_keys=True) if s.skipped else "{}" for s in shards],
    }
    batch = pa.RecordBatch.from_pydict(columns, schema=TABLE_SCHEMA)

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, TABLE_SCHEMA) as writer:
            writer.write_batch(batch)

    write_atomic(path, write, "shard table")


class ShardTable(Sequence["ShardInfo"]):
    """Read-only, memory-mapped shard list; ``table[i]`` is a fresh ShardInfo."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._open()

    def _open(self) -> None:
        from maws_scale.data.shards import DatasetError

        try:
            table = ipc.open_file(pa.memory_map(self.path, "r")).read_all()
        except (OSError, pa.ArrowInvalid) as err:
            raise DatasetError(f"{self.path}: unreadable shard table ({err})") from None
        if not table.schema.equals(TABLE_SCHEMA, check_metadata=False):
            raise DatasetError(f"{self.path}: shard table schema {table.schema.names} is not {TABLE_SCHEMA.names}")
        table = table.combine_chunks() if table.num_columns and table[0].num_chunks > 1 else table
        self.files = table["file"]  # the file column, for whole-column checks (data/shards.py)
        self._file, self._sha, self._skipped = (_Strings(table[name]) for name in ("file", "sha256", "skipped"))
        self._records = _int_view(table["records"])
        self._bytes = _int_view(table["bytes"])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._open()

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, index: int) -> ShardInfo: ...

    @overload
    def __getitem__(self, index: slice) -> list[ShardInfo]: ...

    def __getitem__(self, index: int | slice) -> ShardInfo | list[ShardInfo]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        from maws_scale.data.shards import ShardInfo

        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"shard {index} out of range ({len(self)} shards)")
        skipped = self._skipped.get(index)
        return ShardInfo(
            file=self._file.get(index),
            records=int(self._records[index]),
            bytes=int(self._bytes[index]),
            sha256=self._sha.get(index),
            skipped=json.loads(skipped) if skipped != "{}" else {},
        )

    def __iter__(self) -> Iterator[ShardInfo]:
        for i in range(len(self)):
            yield self[i]

    def record_counts(self) -> np.ndarray:
        """int64 records per shard (a read-only view of the mapped file)."""
        return self._records

    def byte_sizes(self) -> np.ndarray:
        return self._bytes

    def sha256_all(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self._sha.get(i)


class _Strings:
    """O(1) access to one mapped string column through its offsets (pyarrow scalars cost ~10 µs each)."""

    def __init__(self, column: pa.ChunkedArray):
        if column.num_chunks == 0:
            self.offsets, self.data = np.zeros(1, dtype=np.int32), memoryview(b"")
            return
        chunk = column.chunk(0)
        _, offsets, data = chunk.buffers()
        self.offsets = np.frombuffer(offsets, dtype=np.int32, count=len(chunk) + 1, offset=chunk.offset * 4)
        self.data = memoryview(data) if data is not None else memoryview(b"")

    def get(self, index: int) -> str:
        return str(self.data[self.offsets[index] : self.offsets[index + 1]], "utf-8")


def _int_view(column: pa.ChunkedArray) -> np.ndarray:
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int64)
    return column.chunk(0).to_numpy(zero_copy_only=True)
