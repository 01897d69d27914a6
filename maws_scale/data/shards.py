"""Arrow IPC shards and the per-dataset manifest.

A dataset is a directory holding ``shard-NNNNN.arrow`` files (Arrow IPC *file* format, memory-mappable, record
batches of a few hundred rows) and ``manifest.json`` (shard list, record counts, byte sizes, sha256, schema
version, how it was built). Images are stored as the encoded bytes they came in (JPEG/PNG), unless the build was
given a ``--resize`` (resized images re-encoded as JPEG) or ``--encoding raw`` (uint8 HWC pixels, ``width`` ×
``height`` × 3 bytes); ``build.options.image`` in the manifest says which (see data/transcode.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from maws_scale.data.shard_table import SHARD_TABLE, ShardTable, write_shard_table
from maws_scale.errors import RunError, write_atomic
from maws_scale.files import check_regular, open_regular, read_regular

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 1: shard list inline in manifest.json; 2: in shards.arrow
FORMAT = "arrow-ipc-file"
ROWS_PER_BATCH = 256
MAX_COUNT = 1 << 62  # bound on the manifest's counts and sizes (they go into int64 arrays)

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
        # sets built with a --resize / --encoding (data/transcode.py): the size before, and the rule applied
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
        pa.field("resize", pa.string()),
    ],
    metadata={"maws_scale.schema_version": str(SCHEMA_VERSION)},
)
REQUIRED = ("key", "image", "tags")


class DatasetError(RunError):
    """A dataset directory or shard that cannot be used; the message names the file."""


def image_encoding(manifest: Manifest) -> str:
    """How the manifest's images are stored: "encoded" (JPEG/PNG/... bytes) or "raw" (uint8 HWC pixels)."""
    return str(manifest.build.get("options", {}).get("image", {}).get("encoding", "encoded"))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as handle:  # a FIFO would block a plain open
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    text = json.dumps(payload, indent=1, sort_keys=False) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def records_to_batch(records: list[Mapping[str, Any]]) -> pa.RecordBatch:
    """Build one record batch with the dataset schema; missing optional fields become nulls."""
    columns = {name: [rec.get(name) for rec in records] for name in SCHEMA.names}
    return pa.RecordBatch.from_pydict(columns, schema=SCHEMA)


def write_shard(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Write records to an Arrow IPC file at ``path`` (atomically); return {records, bytes, sha256}."""
    stats: dict[str, Any] = {}

    def write(tmp: Path) -> None:
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
        stats.update(records=count, bytes=tmp.stat().st_size, sha256=sha256_file(tmp))

    write_atomic(path, write, "shard")
    return stats


def open_shard(path: str | os.PathLike) -> pa.Table:
    """Memory-map an Arrow IPC shard and return it as a zero-copy table (raises DatasetError).

    The table is fully validated (offsets within bounds, valid UTF-8): corrupted buffers would otherwise crash the
    reader later (e.g. ``SystemError`` from a negative string length). Image bytes are not read by this check."""
    try:
        check_regular(path)
        source = pa.memory_map(str(path), "r")
        table = ipc.open_file(source).read_all()
        table.validate(full=True)
        return table
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
    """The dataset's table of contents: ``manifest.json`` plus the shard list in ``shards.arrow`` (a memory-mapped
    :class:`~maws_scale.data.shard_table.ShardTable` once loaded; a plain list while building)."""

    shards: Sequence[ShardInfo]
    build: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT
    columns: list[str] = field(default_factory=lambda: list(SCHEMA.names))
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _fingerprint: str | None = field(default=None, repr=False, compare=False)
    text: dict[str, Any] = field(default_factory=dict)  # tokenizer file, vocab size, context length (data/text.py)

    @property
    def records(self) -> int:
        if isinstance(self.shards, ShardTable):
            return int(self.shards.record_counts().sum())
        return sum(s.records for s in self.shards)

    @property
    def bytes(self) -> int:
        if isinstance(self.shards, ShardTable):
            return int(self.shards.byte_sizes().sum())
        return sum(s.bytes for s in self.shards)

    def record_counts(self) -> np.ndarray:
        """int64 records per shard (zero-copy from a loaded shard table)."""
        if isinstance(self.shards, ShardTable):
            return self.shards.record_counts()
        return np.fromiter((s.records for s in self.shards), dtype=np.int64, count=len(self.shards))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "manifest_version": MANIFEST_VERSION,
            "format": self.format,
            "created": self.created,
            "records": self.records,
            "bytes": self.bytes,
            "columns": self.columns,
            "shard_count": len(self.shards),
            "shard_table": SHARD_TABLE,
            "fingerprint": _fingerprint(s.sha256 for s in self.shards),
            "build": self.build,
            **({"text": self.text} if self.text else {}),
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``shards.arrow``, then ``manifest.json`` (last: a directory with a manifest is complete); refuse a
        shard list the loader could not use."""
        if (problem := _shard_list_problem(list(self.shards), allow_empty=True)) is not None:
            raise DatasetError(f"{directory}: refusing to save a manifest: {problem}")
        table = Path(directory) / SHARD_TABLE
        write_shard_table(table, self.shards)
        path = Path(directory) / MANIFEST
        # the table's digest: a table changed after this point (by hand) is caught at load without reading its names
        write_json_atomic(path, {**self.to_json(), "shard_table_sha256": sha256_file(table)})
        return path

    def fingerprint(self) -> str:
        """A short id of the shard contents (changes when any shard changes); computed once for a loaded manifest."""
        if self._fingerprint is not None:
            return self._fingerprint
        value = _fingerprint(s.sha256 for s in self.shards)
        if isinstance(self.shards, ShardTable):  # read-only: safe to cache (a list may still be edited)
            self._fingerprint = value
        return value


def _fingerprint(checksums: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for checksum in checksums:
        digest.update(checksum.encode())
    return digest.hexdigest()[:16]


def inline_manifest_json(manifest: Manifest) -> dict[str, Any]:
    """``manifest`` in the inline form of manifest version 1 (the shard list inside manifest.json); still loads."""
    raw = {k: v for k, v in manifest.to_json().items() if k not in ("manifest_version", "shard_table", "shard_count")}
    raw.pop("fingerprint", None)
    return {**raw, "shards": [dataclasses.asdict(s) for s in manifest.shards]}


def _shard_list_problem(
    shards: Sequence[ShardInfo], allow_empty: bool = False, names_checked: bool = False
) -> str | None:
    """What makes a manifest's shard list unusable (the loader would silently lose records), or None. A loaded
    shard table is checked by its mapped columns (counts and sizes; its names were checked when it was saved)."""
    if not shards:
        return None if allow_empty else "no shards: the data set is empty"
    if isinstance(shards, ShardTable):
        if shards.record_counts().min() <= 0 or shards.byte_sizes().min() <= 0:
            index = int(np.argmin(np.minimum(shards.record_counts(), shards.byte_sizes())))
            info = shards[index]
            return f"shard '{info.file}' has records={info.records}, bytes={info.bytes}; both must be positive"
        return None if names_checked else _shard_names_problem(shards.files)
    seen: set[str] = set()
    for info in shards:
        if _UNSAFE_NAME.search(info.file):
            return f"shard file '{info.file}' must be a relative path inside the data set directory"
        if info.file in seen:
            return f"shard '{info.file}' is listed twice"
        seen.add(info.file)
        if info.records <= 0:
            return f"shard '{info.file}' has records={info.records}; every listed shard must hold at least one record"
        if info.bytes <= 0:
            return f"shard '{info.file}' has bytes={info.bytes}"
    return None


_UNSAFE_NAME = re.compile(r"^$|^/|\\|(^|/)\.{1,2}(/|$)")  # empty, absolute, a backslash, a . or .. component


def _shard_names_problem(files: pa.ChunkedArray) -> str | None:
    """A shard name listed twice or pointing outside the data set, checked over the whole column at once."""
    unsafe = pc.match_substring_regex(files, _UNSAFE_NAME.pattern)
    if pc.any(unsafe).as_py():
        name = pc.filter(files, unsafe)[0].as_py()
        return f"shard file '{name}' must be a relative path inside the data set directory"
    if len(pc.unique(files)) != len(files):  # (pc.unique is about twice as fast as pc.count_distinct here)
        counts = pc.value_counts(files)
        name = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))[0].as_py()
        return f"shard '{name}' is listed twice"
    return None


def _table_unchanged(table: Path, recorded: Any) -> bool:
    """Whether ``shards.arrow`` is the one ``manifest.json`` was saved with (whose names were checked then): its
    sha256, read with plain reads (the mapped name column is never touched: 600k names would add ~25 MB to every
    rank's RSS). Raises ValueError when it differs; False for a manifest saved before digests were recorded (its
    names are then checked column-wise)."""
    if recorded is None:
        return False
    try:
        digest = sha256_file(table)
    except OSError as err:
        raise ValueError(f"{table.name}: {err.strerror}") from None
    if digest != recorded:
        raise ValueError(
            f"{table.name} was changed after manifest.json was written (sha256 differs); rebuild or re-merge the set"
        )
    return True


def _whole(value: Any, what: str) -> int:
    """A manifest number: a JSON integer in [0, 2**62) (``1e999`` parses as inf, ``1.5`` would truncate)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_COUNT:
        raise ValueError(f"{what} must be a whole number in [0, 2**62), not {value!r}")
    return value


def load_manifest(directory: str | os.PathLike) -> Manifest:
    """Read ``<directory>/manifest.json`` (and map its ``shards.arrow``); raise DatasetError naming the file."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{path}: no manifest; build the dataset with `maws-scale data build ... --output {directory}`"
        )
    fingerprint, names_checked = None, False
    try:
        raw = json.loads(read_regular(path).decode("utf-8"))
        version = _whole(raw["schema_version"], "schema_version")
        if "shard_table" in raw:
            if _UNSAFE_NAME.search(str(raw["shard_table"])):
                raise ValueError(f"shard_table '{raw['shard_table']}' must name a file inside the data set directory")
            table = Path(directory) / str(raw["shard_table"])
            shards: Sequence[ShardInfo] = ShardTable(table)
            names_checked = _table_unchanged(table, raw.get("shard_table_sha256"))
            if len(shards) != _whole(raw["shard_count"], "shard_count"):
                raise ValueError(f"shard_count {raw['shard_count']} but {raw['shard_table']} lists {len(shards)}")
            fingerprint = raw.get("fingerprint")
        else:  # manifest_version 1: the shard list inline
            shards = [
                ShardInfo(
                    file=str(s["file"]),
                    records=_whole(s["records"], f"shard {s['file']!r} records"),
                    bytes=_whole(s["bytes"], f"shard {s['file']!r} bytes"),
                    sha256=str(s["sha256"]),
                    skipped=dict(s.get("skipped", {})),
                )
                for s in raw["shards"]
            ]
        part = bool(raw.get("build", {}).get("options", {}).get("partition"))  # a part may own no input
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise DatasetError(f"{path}: malformed manifest ({type(err).__name__}: {err})") from None
    if version > SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema_version {version} is newer than this maws-scale ({SCHEMA_VERSION})")
    if (problem := _shard_list_problem(shards, allow_empty=part, names_checked=names_checked)) is not None:
        raise DatasetError(f"{path}: malformed manifest ({problem})")
    return Manifest(
        shards=shards,
        build=raw.get("build", {}),
        schema_version=version,
        format=raw.get("format", FORMAT),
        columns=list(raw.get("columns", SCHEMA.names)),
        created=raw.get("created", ""),
        _fingerprint=fingerprint,
        text=dict(raw.get("text", {})),
    )
