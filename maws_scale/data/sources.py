"""Sources for the shard builder: image folders, JSONL manifests, webdataset tar shards.

Image bytes are stored exactly as found unless the source is given an :class:`ImageFormat` (``--resize``,
``--encoding raw``: see data/transcode.py); the header is parsed to record width/height and to reject files that
are not images. Anything skipped is counted by reason and logged with its file or line: one bad
input (a name that is not UTF-8, a non-integer or out-of-range label, tags that are not a list of strings, an
undecodable line, a key seen before) never stops a build. EXIF orientation is not applied (pixels as stored).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maws_scale.config import is_utf8
from maws_scale.data.build import group_by_size
from maws_scale.data.decode import open_image
from maws_scale.data.text import captions_from_json, captions_from_text, clean_captions, decode_caption_bytes
from maws_scale.data.transcode import ImageFormat
from maws_scale.files import read_regular

if TYPE_CHECKING:
    from maws_scale.data.partition import Partition

log = logging.getLogger("maws_scale.data")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
INT64 = (-(1 << 63), (1 << 63) - 1)


def printable(text: str) -> str:
    """``text`` safe to print and log (undecodable bytes and lone surrogates as escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def metadata_problem(key: Any, tags: Any, label: Any) -> str | None:
    """Why a record's key, tags or label cannot be stored, or None."""
    if not isinstance(key, str) or not key or not is_utf8(key):
        return f"key {printable(str(key))!r} is not a non-empty UTF-8 string"
    if not isinstance(tags, list) or not all(isinstance(t, str) and is_utf8(t) for t in tags):
        return f"tags must be a list of UTF-8 strings, got {printable(repr(tags))[:80]}"
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
        return f"label must be an integer, got {printable(repr(label))[:40]}"
    if label is not None and not INT64[0] <= label <= INT64[1]:
        return f"label {label} does not fit in 64 bits"
    return None


def image_record(
    key: str,
    data: bytes,
    tags: list[str],
    label: int | None,
    where: str,
    skipped: Counter,
    captions: list[Any] | None = None,
    image_format: ImageFormat | None = None,
):
    """A record for encoded image bytes, or None (counted, logged) when the metadata cannot be stored
    (``bad_record``), the bytes are not a readable image (with a non-default ``image_format``: not decodable, as
    the image is resized or converted here), or — when ``captions`` is given (an image-text source) — none of its
    captions is usable (``no_caption``)."""
    if (problem := metadata_problem(key, tags, label)) is not None:
        skipped["bad_record"] += 1
        log.warning("skipping %s: %s", printable(where), problem)
        return None
    if captions is not None:
        captions = clean_captions(captions, where, skipped)
        if not captions:
            skipped["no_caption"] += 1
            log.warning("skipping %s: no usable caption", printable(where))
            return None
    try:
        opened = open_image(data)
        width, height = opened.size
        if image_format is not None and not image_format.is_default:
            data, (new_w, new_h), applied = image_format.apply(data, opened)
    except Exception as err:  # PIL raises several types on non-images
        skipped["unreadable_image"] += 1
        log.warning("skipping %s: not a readable image (%s)", printable(where), err)
        return None
    record = {"key": key, "image": data, "tags": tags, "label": label, "width": width, "height": height}
    if image_format is not None and not image_format.is_default:
        record.update(width=new_w, height=new_h, orig_width=width, orig_height=height, resize=applied)
    if captions is not None:
        record["captions"] = captions
    return record


def _image_options(image_format: ImageFormat) -> dict[str, Any]:
    """The source description's ``image`` entry; absent for the default (so plans of older builds still match)."""
    return {} if image_format.is_default else {"image": image_format.describe()}


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
            except (ValueError, RecursionError) as err:  # RecursionError: a deeply nested value
                skipped["bad_caption_json"] += 1
                log.warning("%s: not valid JSON (%s)", side, err)
    return found


def _read(path: Path, skipped: Counter) -> bytes | None:
    try:
        return read_regular(path)
    except OSError as err:
        skipped["unreadable_file"] += 1
        log.warning("skipping %s: %s", printable(str(path)), err.strerror)
        return None


def _unique_keys(items: Iterable[tuple], key_of, where_of, skipped: Counter) -> Iterator[tuple]:
    """Drop (count as ``duplicate_key``, log) items whose key an earlier item already has: keys are unique.
    Streams; holds the keys seen (of one part, in a partitioned build: parts are split by key)."""
    seen: set[str] = set()
    for item in items:
        key = key_of(item)
        if key in seen:
            skipped["duplicate_key"] += 1
            log.warning("skipping %s: key %r already used by another input", printable(where_of(item)), printable(key))
            continue
        seen.add(key)
        yield item


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text) of a text file, streamed; text is None for a line that is not valid UTF-8."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield number, None


def _walk(folder: Path) -> Iterator[Path]:
    """Every file under ``folder`` in a stable order (sorted per directory), listing one directory at a time."""
    for current, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(current) / name


def _folder_key(rel: str) -> str:
    """A folder source's record key: the image path without its suffix (``x.jpg`` and ``x.png`` collide)."""
    return str(Path(rel).with_suffix(""))


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
    """``root/<class>/**/*.jpg`` (tags = [class], label = class index in sorted order, or in ``classes``, the global
    label map of a partitioned build), or any image tree with a tags file: one line per image,
    ``relative/path<TAB>tag1,tag2`` (no label)."""

    root: str
    tags_file: str | None = None
    captions: bool = False
    name: str = "folder"
    classes: tuple[str, ...] | None = None  # the global label map (partitioned builds); default: sorted class folders
    image: ImageFormat = field(default_factory=ImageFormat)

    def describe(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "tags_file": self.tags_file,
            **({"captions": True} if self.captions else {}),
            **_image_options(self.image),
        }

    def class_names(self) -> list[str]:
        """The class folders in sorted order (label = position); ValueError when there are none."""
        root = Path(self.root)
        if not root.is_dir():
            raise ValueError(f"--input {root}: not a directory")
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not classes:
            raise ValueError(f"--input {root}: no class subfolders (or pass --tags FILE)")
        return classes

    def plan(self, shard_size: int, part: Partition | None = None) -> tuple[list[Any], Counter]:
        skipped: Counter = Counter()
        root = Path(self.root)
        if not self.tags_file and root.is_dir():
            self._count_loose_images(root, skipped, part)
        owned = (item for item in self.iter_items(skipped) if part is None or part.owns(_folder_key(item[0])))
        items = list(_unique_keys(owned, lambda it: _folder_key(it[0]), lambda it: str(root / it[0]), skipped))
        return _file_tasks(items, root, shard_size), skipped

    @staticmethod
    def _count_loose_images(root: Path, skipped: Counter, part: Partition | None) -> None:
        """Images at the root of a class-folder input belong to no class: counted (``image_outside_class``) and
        logged, never dropped silently (each counted by the one part that owns its key)."""
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            loose = entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS
            if loose and (part is None or part.owns(_folder_key(entry.name))):
                skipped["image_outside_class"] += 1
                log.warning("skipping %s: an image outside any class folder", printable(entry.path))

    def iter_items(self, skipped: Counter) -> Iterator[tuple[str, tuple[str, ...], int | None]]:
        """(relative path, tags, label) per image, streamed (one directory listing held at a time)."""
        root = Path(self.root)
        if not root.is_dir():
            raise ValueError(f"--input {root}: not a directory")
        if self.tags_file:
            for number, line in _lines(Path(self.tags_file)):
                if line is not None and (not line.strip() or line.startswith("#")):
                    continue
                rel, sep, tags = (line or "").partition("\t")
                if line is None or not sep or not rel.strip():
                    skipped["bad_tags_line"] += 1
                    log.warning("%s:%d: expected 'path<TAB>tag1,tag2', skipped", self.tags_file, number)
                    continue
                yield rel.strip(), tuple(t.strip() for t in tags.split(",") if t.strip()), None
            return
        found = self.class_names()
        classes = list(self.classes) if self.classes is not None else found
        index = {name: label for label, name in enumerate(classes)}
        for name in found:
            if name not in index:
                raise ValueError(f"--input {root / name}: class folder '{name}' is not in the global label map")
            for path in _walk(root / name):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    yield str(path.relative_to(root)), (name,), index[name]

    def records(self, task: list[tuple], skipped: Counter) -> Iterator[dict[str, Any]]:
        root = Path(self.root)
        for rel, tags, label in task:
            data = _read(root / rel, skipped)
            if data is not None:
                caps = sidecar_captions(root / rel, skipped) if self.captions else None
                record = image_record(
                    _folder_key(rel), data, list(tags), label, str(root / rel), skipped, caps, self.image
                )
                if record:
                    yield record


@dataclass
class JsonlSource:
    """One JSON object per line: ``{"path": "...", "tags": [...], "label": 3?, "key": "..."?}``; relative paths
    are resolved against the JSONL file's folder. ``manifest`` may be a folder of ``*.jsonl`` files (read in name
    order); a partitioned build then gives each part a slice of the files, so no task reads all of them. With
    ``captions``: ``"caption": "..."`` and/or ``"captions": [...]`` per line (image-text data)."""

    manifest: str
    captions: bool = False
    name: str = "jsonl"
    image: ImageFormat = field(default_factory=ImageFormat)

    def describe(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            **({"captions": True} if self.captions else {}),
            **_image_options(self.image),
        }

    def _base(self) -> Path:
        path = Path(self.manifest)
        return path if path.is_dir() else path.parent

    def plan(self, shard_size: int, part: Partition | None = None) -> tuple[list[Any], Counter]:
        skipped: Counter = Counter()
        by_file = part is not None and Path(self.manifest).is_dir()
        owned = (
            item
            for item in self.iter_items(skipped, part if by_file else None)
            if part is None or by_file or part.owns(item[3])
        )
        where = lambda it: f"{it[5]}:{it[6]}"  # noqa: E731
        items = [it[:5] for it in _unique_keys(owned, lambda it: it[3], where, skipped)]
        return _file_tasks(items, self._base(), shard_size), skipped

    def iter_items(
        self, skipped: Counter, part: Partition | None = None
    ) -> Iterator[tuple[str, tuple[str, ...], int | None, str, tuple[str, ...] | None, Path, int]]:
        """(image path, tags, label, key, captions, file, line number) per good line, streamed (one line held at a
        time); with ``part``, only the lines of the JSONL files (of a folder) that the part owns."""
        source = Path(self.manifest)
        if source.is_dir():
            files = sorted(source.glob("*.jsonl"))
            if not files:
                raise ValueError(f"--input {source}: no .jsonl files")
        elif source.is_file():
            files = [source]
        else:
            raise ValueError(f"--input {source}: no such JSONL file")
        for path in files:
            if part is None or part.owns(path.name):
                yield from self._file_items(path, skipped)

    def _file_items(
        self, path: Path, skipped: Counter
    ) -> Iterator[tuple[str, tuple[str, ...], int | None, str, tuple[str, ...] | None, Path, int]]:
        for number, line in _lines(path):
            if line is not None and not line.strip():
                continue
            try:
                if line is None:
                    raise ValueError("the line is not valid UTF-8")
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise TypeError("expected a JSON object")
                image = obj["path"]
                if not isinstance(image, str) or not image or not is_utf8(image):
                    raise TypeError("'path' must be a non-empty UTF-8 string")
                tags, label = obj.get("tags", []), obj.get("label")
                key = obj.get("key") or str(Path(image).with_suffix(""))
                if (problem := metadata_problem(key, tags, label)) is not None:
                    raise TypeError(problem)
                caps = tuple(captions_from_json(obj)) if self.captions else None
            except (ValueError, KeyError, TypeError, RecursionError) as err:  # RecursionError: deep nesting
                skipped["bad_jsonl_line"] += 1
                log.warning("%s:%d: skipped (%s: %s)", path, number, type(err).__name__, printable(str(err)))
                continue
            yield image, tuple(tags), label, key, caps, path, number

    def records(self, task: list[tuple], skipped: Counter) -> Iterator[dict[str, Any]]:
        base = self._base()
        for image, tags, label, key, caps in task:
            data = _read(base / image, skipped)
            if data is not None:
                caps = list(caps) if caps is not None else None
                record = image_record(key, data, list(tags), label, str(base / image), skipped, caps, self.image)
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
    image: ImageFormat = field(default_factory=ImageFormat)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, **({"captions": True} if self.captions else {}), **_image_options(self.image)}

    def plan(self, shard_size: int, part: Partition | None = None) -> tuple[list[Any], Counter]:
        root = Path(self.path)
        tars = sorted(root.glob("*.tar")) if root.is_dir() else [root]
        if not tars or not all(t.is_file() for t in tars):
            raise ValueError(f"--input {root}: no .tar files")
        tars = [t for t in tars if part is None or part.owns(t.name)]  # a part is a slice of the tar files
        items = [str(t) for t in tars]
        return group_by_size(items, [t.stat().st_size for t in tars], shard_size), Counter()

    def records(self, task: list[str], skipped: Counter) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()  # keys are unique within a task (one output shard)
        for tar_path in task:
            try:
                with tarfile.open(tar_path, "r|*") as tar:
                    for record in self._samples(tar, tar_path, skipped, self.image):
                        if record["key"] in seen:
                            skipped["duplicate_key"] += 1
                            log.warning("%s: key %r seen before, skipped", tar_path, printable(record["key"]))
                            continue
                        seen.add(record["key"])
                        yield record
            except (tarfile.TarError, OSError, EOFError, ValueError) as err:  # not a tar, or truncated
                skipped["unreadable_tar"] += 1
                log.warning("%s: unreadable tar after some records (%s)", tar_path, err)

    def _samples(
        self, tar: tarfile.TarFile, tar_path: str, skipped: Counter, image_format: ImageFormat
    ) -> Iterator[dict[str, Any]]:
        current: str | None = None
        parts: dict[str, bytes] = {}
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            ext = ext.lower()
            if key != current or (dot and ext in parts):  # a repeated member starts a new sample (a duplicate key)
                if current is not None:
                    record = self._record(current, parts, tar_path, skipped, self.captions, image_format)
                    if record:
                        yield record
                current, parts = key, {}
            handle = tar.extractfile(member)
            if handle is not None and dot:
                parts[ext] = handle.read()
        if current is not None:
            record = self._record(current, parts, tar_path, skipped, self.captions, image_format)
            if record:
                yield record

    @staticmethod
    def _record(
        key: str,
        parts: dict[str, bytes],
        tar_path: str,
        skipped: Counter,
        want_captions: bool = False,
        image_format: ImageFormat | None = None,
    ) -> dict[str, Any] | None:
        image = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
        if image is None:
            skipped["no_image"] += 1
            log.warning("%s: sample %s has no image, skipped", tar_path, key)
            return None
        tags: Any = []
        label: Any = None
        caps: list[Any] | None = [] if want_captions else None
        where = f"{tar_path}:{key}"
        if caps is not None and "txt" in parts:
            text = decode_caption_bytes(parts["txt"], where, skipped)
            caps += captions_from_text(text) if text is not None else []
        try:
            if "json" in parts:
                meta = json.loads(parts["json"])
                if not isinstance(meta, dict):
                    raise ValueError(f"json must be an object, got {type(meta).__name__}")
                tags, label = meta.get("tags", []), meta.get("label")
                if not isinstance(tags, list):  # a string would be split into letters, a dict give its keys
                    raise ValueError(f"'tags' must be a list, got {type(tags).__name__}")
                if caps is not None:
                    caps += captions_from_json(meta)
            elif "txt" in parts and caps is None:
                tags = [t.strip() for t in parts["txt"].decode().split(",") if t.strip()]
            if "cls" in parts:
                label = int(parts["cls"].decode().strip())
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            skipped["bad_metadata"] += 1
            log.warning("%s: sample %s has unreadable metadata (%s), skipped", tar_path, printable(key), err)
            return None
        return image_record(key, image, tags, label, where, skipped, caps, image_format)
