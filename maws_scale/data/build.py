"""Build a sharded dataset from a source: planned up front, written in parallel processes, resumable.

A source turns its input into a list of *tasks* (one task = one output shard, grouped to about ``shard_size``
bytes). Each finished shard leaves a small receipt in ``<output>/.build/``; a re-run with the same plan skips
shards whose receipt and file are intact, so an interrupted build resumes where it stopped. ``manifest.json`` is
written last: a directory with a manifest is a complete dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from maws_scale import __version__
from maws_scale.data.shards import (
    MANIFEST,
    DatasetError,
    Manifest,
    ShardInfo,
    shard_name,
    write_json_atomic,
    write_shard,
)

log = logging.getLogger("maws_scale.data")

DEFAULT_SHARD_SIZE = 512 * 1024**2
BUILD_DIR = ".build"


class Source(Protocol):
    """What the builder needs from a source. Sources must be picklable (they travel to worker processes)."""

    name: str

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description of the input and options (stored in the manifest)."""
        ...

    def plan(self, shard_size: int) -> tuple[list[Any], Counter]:
        """Tasks (one per output shard, picklable) and records skipped while planning, by reason."""
        ...

    def records(self, task: Any, skipped: Counter) -> Iterator[dict[str, Any]]:
        """The records of one task; count (and log) what is skipped in ``skipped``."""
        ...


def group_by_size(items: list[Any], sizes: list[int], shard_size: int) -> list[list[Any]]:
    """Split ``items`` (in order) into consecutive groups of about ``shard_size`` bytes (at least one item each)."""
    groups: list[list[Any]] = []
    current: list[Any] = []
    total = 0
    for item, size in zip(items, sizes):
        if current and total + size > shard_size:
            groups.append(current)
            current, total = [], 0
        current.append(item)
        total += size
    if current:
        groups.append(current)
    return groups


def parse_size(text: str | int) -> int:
    """'512MB', '1GiB', '64k' or a plain integer → bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not match:
        raise ValueError(f"not a size: '{text}' (e.g. 512MB, 1GiB, 65536)")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _run_task(source: Source, index: int, task: Any, output: str) -> dict[str, Any]:
    skipped: Counter = Counter()
    path = Path(output) / shard_name(index)
    info = write_shard(path, source.records(task, skipped))
    receipt = {"file": path.name, **info, "skipped": dict(skipped)}
    write_json_atomic(Path(output) / BUILD_DIR / f"{path.name}.json", receipt)
    return receipt


def _finished(output: Path, index: int) -> dict[str, Any] | None:
    name = shard_name(index)
    receipt_path = output / BUILD_DIR / f"{name}.json"
    if not receipt_path.is_file() or not (output / name).is_file():
        return None
    try:
        receipt = json.loads(receipt_path.read_text())
    except ValueError:
        return None
    if (output / name).stat().st_size != receipt.get("bytes"):
        return None
    return receipt


def build_dataset(
    source: Source,
    output: str | os.PathLike,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    progress: bool = True,
    allow_empty: bool = False,
) -> Manifest:
    """Build (or resume building) ``output`` from ``source``; return the manifest written there. ``allow_empty``:
    an input without records gives an empty manifest (a part of a partitioned build may own nothing)."""
    output = Path(output)
    (output / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    tasks, plan_skipped = source.plan(shard_size)
    if not tasks and not allow_empty:
        raise DatasetError(f"{source.name}: the input holds no usable records ({dict(plan_skipped) or 'empty'})")
    plan_id = hashlib.sha256(repr((source.describe(), shard_size, tasks)).encode()).hexdigest()[:16]
    plan_path = output / BUILD_DIR / "plan.json"
    if plan_path.is_file():
        previous = json.loads(plan_path.read_text()).get("plan")
        if previous != plan_id:
            raise DatasetError(
                f"{output}: already holds a build of different input or options (plan {previous}, now {plan_id}); "
                "choose another --output or delete that directory"
            )
    else:
        write_json_atomic(plan_path, {"plan": plan_id, "source": source.describe(), "shards": len(tasks)})
    (output / MANIFEST).unlink(missing_ok=True)
    for stale in output.glob(".shard-*.tmp"):  # half-written shards of an interrupted build
        stale.unlink()

    receipts: dict[int, dict[str, Any]] = {}
    for index in range(len(tasks)):
        if (done := _finished(output, index)) is not None:
            receipts[index] = done
    todo = [i for i in range(len(tasks)) if i not in receipts]
    if receipts:
        log.info("%s: resuming, %d of %d shards already built", output, len(receipts), len(tasks))

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards · {task.fields[records]} records"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        records_done = sum(r["records"] for r in receipts.values())
        job = bar.add_task(f"build {output.name}", total=len(tasks), completed=len(receipts), records=records_done)

        def finish(index: int, receipt: dict[str, Any]) -> None:
            nonlocal records_done
            receipts[index] = receipt
            records_done += receipt["records"]
            bar.update(job, advance=1, records=records_done)

        if workers <= 1:
            for index in todo:
                finish(index, _run_task(source, index, tasks[index], str(output)))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                pending = {pool.submit(_run_task, source, i, tasks[i], str(output)): i for i in todo}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        finish(pending.pop(future), future.result())

    skipped = Counter(plan_skipped)
    for receipt in receipts.values():
        skipped.update(receipt.get("skipped", {}))
    shards = [
        ShardInfo(r["file"], r["records"], r["bytes"], r["sha256"], dict(r.get("skipped", {})))
        for _, r in sorted(receipts.items())
        if r["records"] > 0  # a shard whose every input was bad holds nothing (its skips are counted above)
    ]
    if not shards and not allow_empty:
        raise DatasetError(f"{source.name}: the input holds no usable records ({dict(skipped) or 'empty'})")
    manifest = Manifest(
        shards=shards,
        build={
            "source": source.name,
            "options": source.describe(),
            "shard_size": shard_size,
            "plan": plan_id,
            "skipped": dict(skipped),
            "tool": f"maws-scale {__version__}",
        },
    )
    manifest.save(output)
    if skipped:
        log.warning("%s: skipped %d input records: %s", output, sum(skipped.values()), dict(skipped))
    return manifest
