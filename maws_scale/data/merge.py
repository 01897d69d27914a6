"""``maws-scale data merge``: one manifest over the parts of one or more partitioned builds.

Every part must be complete (have its manifest), each build's parts ``0 … K-1`` must all be present exactly once, and
all parts must agree on schema, label map (``labels.json`` must still be the map they were built with) and image format
(``--resize``/``--encoding``); otherwise the merge refuses and names the part. Shards are not moved: the merged manifest
lists them by their path relative to the output (``part-00002-of-00004/shard-00007.arrow``). To add data later, build
the new input as another partitioned build (with the same ``--label-map``) and merge both.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from maws_scale import __version__
from maws_scale.data.partition import LABELS, label_map_id, load_label_map, parse_part_dirname, part_dirname
from maws_scale.data.shards import MANIFEST, DatasetError, Manifest, ShardInfo, load_manifest
from maws_scale.data.transcode import ImageFormat

DEFAULT_IMAGE = ImageFormat().describe()


def find_parts(build: Path) -> list[Path]:
    """The ``part-*-of-*`` directories of one partitioned build, sorted."""
    if not build.is_dir():
        raise DatasetError(f"{build}: no such build directory")
    return sorted(p for p in build.iterdir() if p.is_dir() and parse_part_dirname(p.name))


def _base_options(manifest: Manifest) -> dict[str, Any]:
    options = dict(manifest.build.get("options", {}))
    options.pop("partition", None)
    return options


def _load_part(part: Path) -> Manifest:
    if not (part / MANIFEST).is_file():
        state = "half-built (no manifest yet)" if (part / ".build").is_dir() else "not built"
        raise DatasetError(f"{part}: part is {state}; (re)run its build, then merge")
    manifest = load_manifest(part)
    partition = manifest.build.get("options", {}).get("partition")
    if partition != dict(zip(("index", "count"), parse_part_dirname(part.name) or (None, None))):
        raise DatasetError(f"{part}: its manifest says partition {partition}, which does not match the folder name")
    return manifest


def collect_parts(paths: list[Path]) -> dict[Path, list[Path]]:
    """{build directory: its part directories}; each path is a build (holding parts) or a single part."""
    groups: dict[Path, list[Path]] = {}
    seen: dict[Path, Path] = {}
    for path in paths:
        parts = [path] if parse_part_dirname(path.name) else find_parts(path)
        if not parts:
            raise DatasetError(f"{path}: no part-IIIII-of-KKKKK directories to merge")
        for part in parts:
            if part.resolve() in seen:
                raise DatasetError(f"{part}: part listed twice (also as {seen[part.resolve()]})")
            seen[part.resolve()] = part
            groups.setdefault(part.parent, []).append(part)
    return groups


def merge_parts(output: str | os.PathLike, builds: list[str | os.PathLike] | None = None) -> Manifest:
    """Check the parts of ``builds`` (build directories or part directories; default: ``output`` itself) and write
    ``<output>/manifest.json`` over them."""
    output = Path(output)
    groups = collect_parts([Path(b) for b in (builds or [output])])
    shards: list[ShardInfo] = []
    parts_info: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    first: tuple[Path, Manifest] | None = None
    labels: tuple[Path, list[str] | None] | None = None
    for build, parts in groups.items():
        counts = {parse_part_dirname(p.name)[1] for p in parts}  # type: ignore[index]
        if len(counts) > 1:
            raise DatasetError(f"{build}: parts of different partition counts {sorted(counts)}; one build, one K")
        (count,) = counts
        present = {parse_part_dirname(p.name)[0] for p in parts}  # type: ignore[index]
        for index in range(count):
            if index not in present:
                raise DatasetError(f"{build / part_dirname(index, count)}: part missing (build it, then merge)")
        label_path = build / LABELS
        build_labels = load_label_map(label_path) if label_path.is_file() else None
        if labels is None:
            labels = (label_path, build_labels)
        elif build_labels != labels[1]:
            raise DatasetError(f"{label_path}: label map differs from {labels[0]}")
        build_options: tuple[Path, dict[str, Any]] | None = None
        for part in sorted(parts):
            manifest = _load_part(part)
            if first is None:
                first = (part, manifest)
            _same_schema(part, manifest, *first)
            options = _base_options(manifest)
            image, first_image = (
                options.get("image", DEFAULT_IMAGE),
                _base_options(first[1]).get("image", DEFAULT_IMAGE),
            )
            if image != first_image:
                raise DatasetError(
                    f"{part}: built with image format {image} but {first[0]} with {first_image}; one data set, one "
                    "--resize/--jpeg-quality/--encoding (rebuild the odd parts)"
                )
            if build_options is None:
                build_options = (part, options)
            elif options != build_options[1]:
                raise DatasetError(f"{part}: built from other input or options than {build_options[0]}")
            if options.get("label_map") != _base_options(first[1]).get("label_map"):
                raise DatasetError(f"{part}: label map {options.get('label_map')} differs from {first[0]}'s")
            if options.get("label_map") != label_map_id(build_labels):  # labels.json edited after the build
                raise DatasetError(
                    f"{label_path}: not the label map {part.name} was built with (id {options.get('label_map')}, the "
                    f"file's is {label_map_id(build_labels)}); restore it or rebuild the parts"
                )
            prefix = os.path.relpath(part, output)
            shards += [
                ShardInfo(f"{prefix}/{s.file}", s.records, s.bytes, s.sha256, dict(s.skipped)) for s in manifest.shards
            ]
            skipped.update(manifest.build.get("skipped", {}))
            parts_info.append({"part": prefix, "records": manifest.records, "dataset": manifest.fingerprint()})
    assert first is not None and labels is not None  # collect_parts found at least one part
    merged = Manifest(
        shards=shards,
        build={
            "source": first[1].build.get("source"),
            "options": _base_options(first[1]),
            "shard_size": first[1].build.get("shard_size"),
            "merged": parts_info,
            "label_map": os.path.relpath(labels[0], output) if labels and labels[1] is not None else None,
            "skipped": dict(skipped),
            "tool": f"maws-scale {__version__}",
        },
        schema_version=first[1].schema_version,
        format=first[1].format,
        columns=list(first[1].columns),
    )
    merged.save(output)
    return merged


def _same_schema(part: Path, manifest: Manifest, ref_part: Path, ref: Manifest) -> None:
    for name in ("schema_version", "format", "columns"):
        if getattr(manifest, name) != getattr(ref, name):
            raise DatasetError(
                f"{part}: {name} {getattr(manifest, name)!r} differs from {ref_part}'s {getattr(ref, name)!r}"
            )
