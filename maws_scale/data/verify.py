"""Re-read a data set completely: checksums, schema, row counts, and every image decoded."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maws_scale.data.decode import error_reason, open_image
from maws_scale.data.shards import (
    DatasetError,
    ShardInfo,
    check_schema,
    image_encoding,
    load_manifest,
    open_shard,
    sha256_file,
)


@dataclass
class ShardReport:
    file: str
    records: int = 0
    bytes: int = 0
    problem: str | None = None  # shard-level: missing, unreadable, checksum mismatch, bad schema
    bad: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # "key: reason" for the first few bad records


def check_image(data: bytes | None, raw_size: tuple[int | None, int | None] | None = None) -> str | None:
    """None when the bytes decode fully, else the reason (JPEGs decode at 1/8 scale: every byte is still read).
    ``raw_size`` (width, height): the record holds raw uint8 pixels, which must be exactly width × height × 3."""
    if not data:
        return "empty_image"
    if raw_size is not None:
        width, height = raw_size
        ok = width is not None and height is not None and width > 0 and height > 0 and len(data) == width * height * 3
        return None if ok else "corrupt_image"
    try:
        image = open_image(data)
        if image.format == "JPEG":
            image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except Exception as err:  # hostile bytes raise many exception types; each becomes a counted reason
        return error_reason(err)
    return None


def verify_shard(root: str, info: ShardInfo, decode: bool = True, encoding: str = "encoded") -> ShardReport:
    """Check one shard against its manifest entry; record-level problems are counted, shard-level ones named."""
    path = Path(root) / info.file
    report = ShardReport(info.file)
    if not path.is_file():
        report.problem = "missing"
        return report
    report.bytes = path.stat().st_size
    if report.bytes != info.bytes:  # the loader skips such a shard (size_mismatch): verify must not pass it
        report.problem = f"size_mismatch: {report.bytes} bytes, manifest says {info.bytes}"
        return report
    if sha256_file(path) != info.sha256:
        report.problem = "checksum_mismatch"
        return report
    try:
        table = check_schema(open_shard(path), str(path))
    except DatasetError as err:
        report.problem = f"unreadable: {err}"
        return report
    report.records = table.num_rows
    if table.num_rows != info.records:
        report.problem = f"row count {table.num_rows} != manifest {info.records}"
    bad: Counter = Counter()
    for batch in table.to_batches():
        keys = batch.column("key").to_pylist()
        images = batch.column("image").to_pylist() if decode else [b"x"] * batch.num_rows
        raw = encoding == "raw" and "width" in batch.schema.names and "height" in batch.schema.names
        sizes = zip(batch.column("width").to_pylist(), batch.column("height").to_pylist()) if raw else None
        for key, image in zip(keys, images):
            raw_size = next(sizes) if sizes is not None else (None, None) if encoding == "raw" else None
            reason = "bad_record" if not key else check_image(image, raw_size) if decode else None
            if reason:
                bad[reason] += 1
                if len(report.examples) < 5:
                    report.examples.append(f"{key}: {reason}")
    report.bad = dict(bad)
    return report


def verify_dataset(root: str | os.PathLike, workers: int = 1, decode: bool = True) -> dict[str, Any]:
    """Verify every shard of a data set; return a JSON-able summary. ``ok`` is False on any shard-level problem, on
    an empty data set, and when no record decodes (nothing could be trained on)."""
    manifest = load_manifest(root)
    encoding = [image_encoding(manifest)] * len(manifest.shards)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            reports = list(
                pool.map(
                    verify_shard,
                    [str(root)] * len(manifest.shards),
                    manifest.shards,
                    [decode] * len(manifest.shards),
                    encoding,
                )
            )
    else:
        reports = [verify_shard(str(root), s, decode, encoding[0]) for s in manifest.shards]
    bad: Counter = Counter()
    for report in reports:
        bad.update(report.bad)
    records = sum(r.records for r in reports)
    problems = {r.file: r.problem for r in reports if r.problem}
    if not problems and records == 0:  # e.g. the empty part of a partitioned build: nothing to train on
        problems["manifest.json"] = "no records: the data set is empty"
    elif not problems and decode and sum(bad.values()) >= records:
        problems["manifest.json"] = f"no decodable record: all {records} records are bad"
    return {
        "path": str(root),
        "ok": not problems,
        "shards": len(reports),
        "records": records,
        "manifest_records": manifest.records,
        "bytes": sum(r.bytes for r in reports),
        "bad_records": dict(bad),
        "problems": problems,
        "examples": [e for r in reports for e in r.examples][:20],
        "per_shard": [vars(r) for r in reports],
    }
