"""Sources for the shard builder: image folders, JSONL manifests, webdataset tar shards.

Image bytes are stored exactly as found (never re-encoded); the header is parsed to record width/height and to
reject files that are not images. Anything skipped is counted by reason and logged with its file or line.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maws_scale.data.build import group_by_size
from maws_scale.data.decode import open_image
from maws_scale.data.text import captions_from_json, captions_from_text, clean_captions, decode_caption_bytes

log = logging.getLogger("maws_scale.data")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def image_record(
    key: str,
    data: bytes,
    tags: list[str],
    label: int | None,
    where: str,
    skipped: Counter,
    captions: list[Any] | None = None,
):
    """A record for encoded image bytes, or None (counted, logged) when the bytes are not a readable image or — when
    ``captions`` is given (an image-text source) — none of its captions is usable (``no_caption``)."""
    if captions is not None:
        captions = clean_captions(captions, where, skipped)
        if not captions:
            skipped["no_caption"] += 1
            log.warning("skipping %s: no usable caption", where)
            return None
    try:
        width, height = open_image(data).size
    except Exception as err:  # PIL raises several types on non-images
        skipped["unreadable_image"] += 1
        log.warning("skipping %s: not a readable image (%s)", where, err)
        return None
    record = {"key": key, "image": data, "tags": tags, "label": label, "width": width, "height": height}
    if captions is not None:
        record["captions"] = captions
    return record


def sidecar_captions(image: Path, skipped: Counter) -> list[Any]:
    """Captions of an image file from ``<stem>.txt`` (one per line) or ``<stem>.json`` (caption/captions)."""
    found: list[Any] = []
    for suffix in (".txt", ".json"):
        side = image.with_suffix(suffix)
        if not side.is_file():
            continue
        text = decode_caption_bytes(side.read_bytes(), str(side), skipped)
        if text is None:
            continue
        if suffix == ".txt":
            found += captions_from_text(text)
        else:
            try:
                found += captions_from_json(json.loads(text))
            except ValueError as err:
                skipped["bad_caption_json"] += 1
                log.warning("%s: not valid JSON (%s)", side, err)
    return found


def _read(path: Path, skipped: Counter) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as err:
        skipped["unreadable_file"] += 1
        log.warning("skipping %s: %s", path, err.strerror)
        return None


def _file_tasks(items: list[tuple], root: Path, shard_size: int) -> list[list[tuple]]:
    sizes = []
    for item in items:
        try:
            sizes.append((root / item[0]).stat().st_size)
        except OSError:
            sizes.append(0)  # counted when the task reads it
    return group_by_size(items, sizes, shard_size)


@dataclass
class FolderSource:
    """``root/<class>/**/*.jpg`` (tags = [class], label = class index in sorted order), or any image tree with a
    tags file: one line per image, ``relative/path<TAB>tag1,tag2`` (no label)."""

    root: str
    tags_file: str | None = None
    captions: bool = False
    name: str = "folder"

    def describe(self) -> dict[str, Any]:
        return {"root": self.root, "tags_file": self.tags_file, **({"captions": True} if self.captions else {})}

    def plan(self, shard_size: int) -> tuple[list[Any], Counter]:
        root = Path(self.root)
        if not root.is_dir():
            raise ValueError(f"--input {root}: not a directory")
        skipped: Counter = Counter()
        items: list[tuple[str, tuple[str, ...], int | None]] = []
        if self.tags_file:
            lines = Path(self.tags_file).read_text().splitlines()
            for number, line in enumerate(lines, 1):
                if not line.strip() or line.startswith("#"):
                    continue
                rel, sep, tags = line.partition("\t")
                if not sep or not rel.strip():
                    skipped["bad_tags_line"] += 1
                    log.warning("%s:%d: expected 'path<TAB>tag1,tag2', skipped", self.tags_file, number)
                    continue
                items.append((rel.strip(), tuple(t.strip() for t in tags.split(",") if t.strip()), None))
        else:
            classes = sorted(p.name for p in root.iterdir() if p.is_dir())
            if not classes:
                raise ValueError(f"--input {root}: no class subfolders (or pass --tags FILE)")
            for label, name in enumerate(classes):
                for path in sorted((root / name).rglob("*")):
                    if path.suffix.lower() in IMAGE_EXTENSIONS:
                        items.append((str(path.relative_to(root)), (name,), label))
        return _file_tasks(items, root, shard_size), skipped

    def records(self, task: list[tuple], skipped: Counter) -> Iterator[dict[str, Any]]:
        root = Path(self.root)
        for rel, tags, label in task:
            data = _read(root / rel, skipped)
            if data is not None:
                key = str(Path(rel).with_suffix(""))
                caps = sidecar_captions(root / rel, skipped) if self.captions else None
                record = image_record(key, data, list(tags), label, str(root / rel), skipped, caps)
                if record:
                    yield record


@dataclass
class JsonlSource:
    """One JSON object per line: ``{"path": "...", "tags": [...], "label": 3?, "key": "..."?}``; relative paths
    are resolved against the JSONL file's folder. With ``captions``: ``"caption": "..."`` and/or
    ``"captions": [...]`` per line (image-text data)."""

    manifest: str
    captions: bool = False
    name: str = "jsonl"

    def describe(self) -> dict[str, Any]:
        return {"manifest": self.manifest, **({"captions": True} if self.captions else {})}

    def plan(self, shard_size: int) -> tuple[list[Any], Counter]:
        path = Path(self.manifest)
        if not path.is_file():
            raise ValueError(f"--input {path}: no such JSONL file")
        skipped: Counter = Counter()
        items = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                image = str(obj["path"])
                tags = obj.get("tags", [])
                if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                    raise TypeError("'tags' must be a list of strings")
                label = obj.get("label")
                if label is not None and not isinstance(label, int):
                    raise TypeError("'label' must be an integer")
                key = str(obj.get("key") or Path(image).with_suffix(""))
                caps = tuple(captions_from_json(obj)) if self.captions else None
            except (ValueError, KeyError, TypeError) as err:
                skipped["bad_jsonl_line"] += 1
                log.warning("%s:%d: skipped (%s: %s)", path, number, type(err).__name__, err)
                continue
            items.append((image, tuple(tags), label, key, caps))
        return _file_tasks(items, path.parent, shard_size), skipped

    def records(self, task: list[tuple], skipped: Counter) -> Iterator[dict[str, Any]]:
        base = Path(self.manifest).parent
        for image, tags, label, key, caps in task:
            data = _read(base / image, skipped)
            if data is not None:
                caps = list(caps) if caps is not None else None
                record = image_record(key, data, list(tags), label, str(base / image), skipped, caps)
                if record:
                    yield record


@dataclass
class WebDatasetSource:
    """webdataset tar shards (a .tar file or a folder of them): samples grouped by key; the image from
    jpg/jpeg/png/webp, tags from ``json`` ({"tags": [...], "label": n}) or ``txt`` (comma separated), label
    from ``cls``. With ``captions`` (image-text data, img2dataset's convention): ``txt`` is the caption (one per
    line) and ``json`` may add ``caption`` / ``captions``; tags then come from ``json`` only."""

    path: str
    captions: bool = False
    name: str = "webdataset"

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, **({"captions": True} if self.captions else {})}

    def plan(self, shard_size: int) -> tuple[list[Any], Counter]:
        root = Path(self.path)
        tars = sorted(root.glob("*.tar")) if root.is_dir() else [root]
        if not tars or not all(t.is_file() for t in tars):
            raise ValueError(f"--input {root}: no .tar files")
        items = [str(t) for t in tars]
        return group_by_size(items, [t.stat().st_size for t in tars], shard_size), Counter()

    def records(self, task: list[str], skipped: Counter) -> Iterator[dict[str, Any]]:
        for tar_path in task:
            try:
                with tarfile.open(tar_path, "r|*") as tar:
                    yield from self._samples(tar, tar_path, skipped)
            except (tarfile.TarError, OSError) as err:
                skipped["unreadable_tar"] += 1
                log.warning("%s: unreadable tar after some records (%s)", tar_path, err)

    def _samples(self, tar: tarfile.TarFile, tar_path: str, skipped: Counter) -> Iterator[dict[str, Any]]:
        current: str | None = None
        parts: dict[str, bytes] = {}
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            if key != current:
                if current is not None:
                    record = self._record(current, parts, tar_path, skipped, self.captions)
                    if record:
                        yield record
                current, parts = key, {}
            handle = tar.extractfile(member)
            if handle is not None and dot:
                parts[ext.lower()] = handle.read()
        if current is not None:
            record = self._record(current, parts, tar_path, skipped, self.captions)
            if record:
                yield record

    @staticmethod
    def _record(
        key: str, parts: dict[str, bytes], tar_path: str, skipped: Counter, want_captions: bool = False
    ) -> dict[str, Any] | None:
        image = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
        if image is None:
            skipped["no_image"] += 1
            log.warning("%s: sample %s has no image, skipped", tar_path, key)
            return None
        tags: list[str] = []
        label: int | None = None
        caps: list[Any] | None = [] if want_captions else None
        where = f"{tar_path}:{key}"
        if caps is not None and "txt" in parts:
            text = decode_caption_bytes(parts["txt"], where, skipped)
            caps += captions_from_text(text) if text is not None else []
        try:
            if "json" in parts:
                meta = json.loads(parts["json"])
                tags = [str(t) for t in meta.get("tags", [])] if isinstance(meta, dict) else []
                label = meta.get("label") if isinstance(meta, dict) else None
                if caps is not None:
                    caps += captions_from_json(meta)
            elif "txt" in parts and caps is None:
                tags = [t.strip() for t in parts["txt"].decode().split(",") if t.strip()]
            if "cls" in parts:
                label = int(parts["cls"].decode().strip())
        except (ValueError, UnicodeDecodeError) as err:
            skipped["bad_metadata"] += 1
            log.warning("%s: sample %s has unreadable metadata (%s), skipped", tar_path, key, err)
            return None
        if label is not None and not isinstance(label, int):
            label = None
        return image_record(key, image, tags, label, where, skipped, caps)
