"""Partitioned builds: part ``i`` of ``K`` builds the slice of the input whose paths hash to ``i``.

A part is a complete dataset directory ``<output>/part-0000i-of-0000K`` (shards, receipts, its own manifest), built
and resumed exactly like a whole build; ``maws-scale data merge`` then writes one manifest over the parts. No task
lists the whole input into memory: each streams the listing and keeps only the entries it owns (the hash of a file's
path for folder and JSONL sources, of a tar file's name for webdataset). Class indices of a folder source come from
one global label map, ``<output>/labels.json``, written once before any part builds. ``submit_parts`` runs all K
parts through submitit (a SLURM job array, or the local executor).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from maws_scale.data.build import DEFAULT_SHARD_SIZE, build_dataset
from maws_scale.data.shards import MANIFEST, DatasetError, write_json_atomic

LABELS = "labels.json"
PART_PATTERN = re.compile(r"part-(\d{5})-of-(\d{5})")


@dataclass(frozen=True)
class Partition:
    """Part ``index`` of ``count``; an input entry belongs to the part its stable path hash selects."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--partition {self.index} --partitions {self.count}: need 0 <= partition < partitions")

    def owns(self, path: str) -> bool:
        return self.count == 1 or bucket(path, self.count) == self.index

    @property
    def dirname(self) -> str:
        return part_dirname(self.index, self.count)


def bucket(path: str, count: int) -> int:
    """A stable hash of ``path`` (independent of the Python process and platform) modulo ``count``."""
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "little") % count


def part_dirname(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}"


def parse_part_dirname(name: str) -> tuple[int, int] | None:
    """(index, count) of a ``part-IIIII-of-KKKKK`` directory name, or None."""
    match = PART_PATTERN.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


# ----- the global label map ----------------------------------------------------------------------------------------
def label_map_id(classes: list[str] | tuple[str, ...] | None) -> str | None:
    """A short id of a label map (None when the source has none)."""
    if classes is None:
        return None
    return hashlib.sha256(json.dumps(list(classes)).encode()).hexdigest()[:16]


def load_label_map(path: str | os.PathLike) -> list[str]:
    """Read a labels.json (``{"classes": [...]}``: label = position); DatasetError naming the file when bad."""
    path = Path(path)
    try:
        classes = json.loads(path.read_text())["classes"]
    except FileNotFoundError:
        raise DatasetError(f"{path}: no label map") from None
    except (ValueError, KeyError, TypeError, RecursionError) as err:  # RecursionError: a deeply nested value
        raise DatasetError(f"{path}: malformed label map ({type(err).__name__}: {err})") from None
    if (
        not isinstance(classes, list)
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise DatasetError(f"{path}: 'classes' must be a list of distinct strings")
    return classes


def fix_label_map(source: Any, output: str | os.PathLike, given: str | os.PathLike | None = None) -> Any:
    """The source with its global label map set: read from ``given``, else from ``<output>/labels.json``, else
    listed from the input's class folders and written there (atomically; parts that start together write the same
    list), after which every part reads the file. Sources without class folders are returned unchanged."""
    from maws_scale.data.sources import FolderSource

    if not isinstance(source, FolderSource) or source.tags_file:
        return source
    path = Path(output) / LABELS
    if given is not None:
        classes = load_label_map(given)
        if path.is_file() and load_label_map(path) != classes:
            raise DatasetError(f"{path}: differs from --label-map {given}; one output holds one label map")
    else:
        classes = None if path.is_file() else source.class_names()
    if classes is not None and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"classes": classes, "input": source.root})
    return replace(source, classes=tuple(load_label_map(path)))


# ----- one part ---------------------------------------------------------------------------------------------------
@dataclass
class PartSource:
    """A source restricted to one partition of its input (what ``build_dataset`` builds for a part)."""

    inner: Any
    part: Partition

    @property
    def name(self) -> str:
        return self.inner.name

    def describe(self) -> dict[str, Any]:
        classes = getattr(self.inner, "classes", None)
        return {
            **self.inner.describe(),
            "partition": {"index": self.part.index, "count": self.part.count},
            "label_map": label_map_id(classes),
        }

    def plan(self, shard_size: int) -> tuple[list[Any], Counter]:
        return self.inner.plan(shard_size, part=self.part)

    def records(self, task: Any, skipped: Counter):
        return self.inner.records(task, skipped)


def check_partitionable(source: Any) -> None:
    from maws_scale.data.sources import FolderSource, JsonlSource, WebDatasetSource

    if not isinstance(source, FolderSource | JsonlSource | WebDatasetSource):
        raise ValueError(f"--partitions: the {source.name} source cannot be partitioned (build it whole)")


def build_part(
    source: Any,
    output: str | os.PathLike,
    part: Partition,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    progress: bool = False,
    label_map: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Build (or resume) part ``part`` of ``source`` into ``<output>/part-…``; return a small summary."""
    check_partitionable(source)
    source = fix_label_map(source, output, label_map)
    directory = Path(output) / part.dirname
    manifest = build_dataset(PartSource(source, part), directory, shard_size, workers, progress, allow_empty=True)
    return {"part": part.dirname, "records": manifest.records, "shards": len(manifest.shards)}


def part_is_built(output: str | os.PathLike, part: Partition) -> bool:
    return (Path(output) / part.dirname / MANIFEST).is_file()


# ----- all parts through submitit -----------------------------------------------------------------------------------
@dataclass
class ClusterOptions:
    """submitit options of a partitioned build (``--slurm``: one SLURM job array task per part)."""

    cluster: str = "local"  # "local" or "slurm"
    folder: str | None = None  # submitit logs and pickles; default <output>/.submitit/%j
    partition: str | None = None
    time_min: int = 24 * 60
    cpus_per_task: int = 1
    mem_gb: float | None = None
    array_parallelism: int = 256


def make_executor(options: ClusterOptions, output: str | os.PathLike, offline: bool = False) -> Any:
    """A submitit executor for the parts; ``offline``: a SLURM executor usable without SLURM (to render sbatch)."""
    import submitit

    folder = options.folder or str((Path(output) / ".submitit" / "%j").absolute())
    if options.cluster == "local":
        executor: Any = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options.time_min)
        return executor
    if options.cluster != "slurm":
        raise ValueError(f"cluster: unknown '{options.cluster}' (local or slurm)")

    class _Offline(submitit.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 2

    executor = (_Offline if offline else submitit.SlurmExecutor)(folder=folder)
    params: dict[str, Any] = {
        "job_name": "maws-data-build",
        "time": options.time_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": options.cpus_per_task,
        "array_parallelism": options.array_parallelism,
    }
    if options.partition:
        params["partition"] = options.partition
    if options.mem_gb:
        params["mem"] = f"{options.mem_gb:g}GB"
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor: Any, count: int) -> str:
    """The sbatch file of the ``count``-task job array ``submit_parts`` would submit through ``executor``."""
    executor.parameters["map_count"] = count
    try:
        return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
    finally:
        executor.parameters.pop("map_count")


def submit_parts(
    source: Any,
    output: str | os.PathLike,
    count: int,
    executor: Any,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    label_map: str | os.PathLike | None = None,
) -> list[tuple[Partition, Any]]:
    """Fix the label map, then submit every part that has no manifest yet as one job array; [(part, job)].

    Re-running after a failure resubmits only the unfinished parts, and each resumes from its receipts."""
    check_partitionable(source)
    Path(output).mkdir(parents=True, exist_ok=True)
    source = fix_label_map(source, output, label_map)
    todo = [p for p in (Partition(i, count) for i in range(count)) if not part_is_built(output, p)]
    if not todo:
        return []
    jobs = executor.map_array(
        build_part,
        [source] * len(todo),
        [str(output)] * len(todo),
        todo,
        [shard_size] * len(todo),
        [workers] * len(todo),
    )
    return list(zip(todo, jobs))


def wait_parts(jobs: list[tuple[Partition, Any]]) -> dict[str, str]:
    """Wait for submitted parts; {part directory: error} for those that failed (empty when all succeeded)."""
    failed: dict[str, str] = {}
    for part, job in jobs:
        try:
            job.result()
        except Exception as err:  # submitit raises FailedJobError/UncompletedJobError with the task's traceback
            lines = str(err).strip().splitlines()
            failed[part.dirname] = f"{type(err).__name__}: {lines[-1] if lines else err} (logs: {job.paths.folder})"
    return failed
