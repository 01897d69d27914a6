"""Emoji artwork as a small real image-text set: the npm packages ``emoji-datasource-{apple,google,twitter,facebook}``.

Fetch them once at data-preparation time (``npm pack emoji-datasource-google@16.0.0`` writes a ``.tgz``); the
builder reads the tarball (or an unpacked ``package/`` folder) directly, nothing is downloaded at run time. Each
record is one 64×64 PNG of ``img/<vendor>/64/``; its captions come from ``emoji.json``: the name, the short names,
and a sentence with subcategory and category (skin-tone variants add their tone). ``label`` is the index of the
category in :data:`CATEGORIES` (for probes and zero-shot classification), ``tags`` = [category].
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

from maws_scale.data.sources import image_record

log = logging.getLogger("maws_scale.data")

VENDORS = ("apple", "google", "twitter", "facebook")
CATEGORIES = (
    "Activities",
    "Animals & Nature",
    "Component",
    "Flags",
    "Food & Drink",
    "Objects",
    "People & Body",
    "Smileys & Emotion",
    "Symbols",
    "Travel & Places",
)
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


def emoji_captions(entry: dict[str, Any], tone: str | None = None) -> list[str]:
    """Captions of one emoji (``emoji.json`` entry), e.g. ["grinning face", "grinning", "a grinning face emoji
    (face-smiling, smileys & emotion)"]; ``tone`` adds a skin tone to each."""
    name = str(entry.get("name") or entry.get("short_name") or "").lower()
    suffix = f", {tone}" if tone else ""
    captions = [f"{name}{suffix}"] if name else []
    captions += [f"{s.replace('_', ' ')}{suffix}" for s in entry.get("short_names", []) if s]
    where = ", ".join(x for x in (entry.get("subcategory"), str(entry.get("category", "")).lower()) if x)
    if name:
        captions.append(f"a {name} emoji{suffix} ({where})")
    return list(dict.fromkeys(captions))


def emoji_index(entries: list[dict[str, Any]], vendor: str) -> dict[str, tuple[str, list[str], int]]:
    """image file name → (key, captions, category label) for every image ``vendor`` has."""
    index: dict[str, tuple[str, list[str], int]] = {}
    flag = f"has_img_{vendor}"
    for entry in entries:
        label = CATEGORIES.index(entry["category"]) if entry.get("category") in CATEGORIES else None
        if label is None:
            continue
        if entry.get(flag) and entry.get("image"):
            index[entry["image"]] = (entry["unified"].lower(), emoji_captions(entry), label)
        for tones, variant in (entry.get("skin_variations") or {}).items():
            if variant.get(flag) and variant.get("image"):
                tone = " and ".join(SKIN_TONES.get(t, t) for t in tones.split("-"))
                index[variant["image"]] = (variant["unified"].lower(), emoji_captions(entry, tone), label)
    return index


@dataclass
class EmojiSource:
    """One vendor's emoji images from an npm ``emoji-datasource-<vendor>`` tarball or unpacked package folder."""

    package: str
    vendor: str
    name: str = "emoji"

    def __post_init__(self) -> None:
        if self.vendor not in VENDORS:
            raise ValueError(f"--vendor {self.vendor}: unknown (known: {', '.join(VENDORS)})")

    def describe(self) -> dict[str, Any]:
        return {"package": self.package, "vendor": self.vendor, "categories": list(CATEGORIES)}

    def plan(self, shard_size: int) -> tuple[list[Any], Counter]:
        path = Path(self.package)
        if not path.exists():
            raise ValueError(f"--input {path}: no such npm tarball or package folder")
        return [0], Counter()  # ~4k small PNGs: one shard

    def _files(self) -> Iterator[tuple[str, bytes]]:
        """(member path inside the package, bytes) of emoji.json and the vendor's 64 px images."""
        wanted = f"img/{self.vendor}/64/"
        path = Path(self.package)
        if path.is_dir():
            root = path / "package" if (path / "package").is_dir() else path
            yield "emoji.json", (root / "emoji.json").read_bytes()
            for file in sorted((root / wanted).glob("*.png")):
                yield wanted + file.name, file.read_bytes()
            return
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                inner = member.name.removeprefix("package/")
                if member.isfile() and (inner == "emoji.json" or inner.startswith(wanted)):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield inner, handle.read()

    def records(self, task: Any, skipped: Counter) -> Iterator[dict[str, Any]]:
        index: dict[str, tuple[str, list[str], int]] | None = None
        images: dict[str, bytes] = {}
        for inner, data in self._files():
            if inner == "emoji.json":
                index = emoji_index(json.loads(data), self.vendor)
            else:
                images[inner.rpartition("/")[2]] = data
        if index is None:
            raise ValueError(f"--input {self.package}: no emoji.json in the package")
        for file in sorted(images):
            if file not in index:
                skipped["not_in_emoji_json"] += 1
                continue
            key, captions, label = index[file]
            record = image_record(
                f"{self.vendor}/{key}", images[file], [CATEGORIES[label]], label, file, skipped, captions
            )
            if record:
                yield record
