"""Emoji artwork as a small real image-text set: the npm packages ``emoji-datasource-{apple,google,twitter,facebook}``.

Fetch them once at data-preparation time (``npm pack emoji-datasource-google@16.0.0`` writes a ``.tgz``); the
builder reads the tarball (or an unpacked ``package/`` folder, or a folder holding several vendors' tarballs)
directly, nothing is downloaded at run time. ``vendor`` may list several (``apple,google,twitter``): one set, keys
``<vendor>/<code point>``. Each record is one 64×64 emoji cut from the vendor's sprite sheet
``img/<vendor>/sheets-clean/64.png`` (66-px grid, 1-px border; the package ships no single files), flattened onto
white and stored as PNG; only emoji the vendor drew itself (``has_img_<vendor>``). Captions come from ``emoji.json``:
the name, the short names, and a sentence with subcategory and category (skin-tone variants add their tone).
``label`` is the index of the category in :data:`CATEGORIES` (for probes and zero-shot classification), ``tags`` =
[category].
"""

from __future__ import annotations

import io
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


SHEET = "sheets-clean/64.png"
CELL, SIDE = 66, 64


def emoji_index(entries: list[dict[str, Any]], vendor: str) -> dict[str, tuple[str, list[str], int, int, int]]:
    """image file name → (key, captions, category label, sheet_x, sheet_y) for every image ``vendor`` has."""
    index: dict[str, tuple[str, list[str], int, int, int]] = {}
    flag = f"has_img_{vendor}"
    for entry in entries:
        label = CATEGORIES.index(entry["category"]) if entry.get("category") in CATEGORIES else None
        if label is None:
            continue
        if entry.get(flag) and entry.get("image"):
            cell = (entry["sheet_x"], entry["sheet_y"])
            index[entry["image"]] = (entry["unified"].lower(), emoji_captions(entry), label, *cell)
        for tones, variant in (entry.get("skin_variations") or {}).items():
            if variant.get(flag) and variant.get("image"):
                tone = " and ".join(SKIN_TONES.get(t, t) for t in tones.split("-"))
                cell = (variant["sheet_x"], variant["sheet_y"])
                index[variant["image"]] = (variant["unified"].lower(), emoji_captions(entry, tone), label, *cell)
    return index


def cut(sheet: Any, x: int, y: int) -> bytes:
    """The emoji at sheet cell (x, y) as an RGB PNG on white."""
    from PIL import Image

    tile = sheet.crop((x * CELL + 1, y * CELL + 1, x * CELL + 1 + SIDE, y * CELL + 1 + SIDE))
    flat = Image.new("RGB", tile.size, (255, 255, 255))
    flat.paste(tile, mask=tile.getchannel("A") if tile.mode == "RGBA" else None)
    buffer = io.BytesIO()
    flat.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class EmojiSource:
    """Emoji images of one or more vendors (``vendor="apple,google"``) from npm ``emoji-datasource-<vendor>``
    tarballs, unpacked package folders, or a folder holding ``emoji-datasource-<vendor>-*.tgz`` files."""

    package: str
    vendor: str
    name: str = "emoji"

    def __post_init__(self) -> None:
        for vendor in self.vendors:
            if vendor not in VENDORS:
                raise ValueError(f"--vendor {vendor}: unknown (known: {', '.join(VENDORS)})")

    @property
    def vendors(self) -> list[str]:
        return [v.strip() for v in self.vendor.split(",") if v.strip()]

    def describe(self) -> dict[str, Any]:
        return {"package": self.package, "vendors": self.vendors, "categories": list(CATEGORIES)}

    def plan(self, shard_size: int) -> tuple[list[Any], Counter]:
        for vendor in self.vendors:
            self._package(vendor)
        return [tuple(self.vendors)], Counter()  # ~4k small PNGs per vendor: one shard

    def _package(self, vendor: str) -> Path:
        """The tarball or package folder of ``vendor`` (ValueError naming --input when there is none)."""
        path = Path(self.package)
        if path.is_dir() and not (path / "emoji.json").is_file() and not (path / "package").is_dir():
            found = sorted(path.glob(f"emoji-datasource-{vendor}-*.tgz")) + sorted(
                p for p in path.glob(f"emoji-datasource-{vendor}") if p.is_dir()
            )
            if not found:
                raise ValueError(f"--input {path}: no emoji-datasource-{vendor}-*.tgz (npm pack it first)")
            return found[-1]
        if not path.exists():
            raise ValueError(f"--input {path}: no such npm tarball or package folder")
        return path

    def _files(self, vendor: str) -> dict[str, bytes]:
        """``emoji.json`` and the vendor's 64-px sprite sheet (bytes) from the tarball or package folder."""
        wanted = {"emoji.json", f"img/{vendor}/{SHEET}"}
        path = self._package(vendor)
        if path.is_dir():
            root = path / "package" if (path / "package").is_dir() else path
            return {name: (root / name).read_bytes() for name in wanted if (root / name).is_file()}
        found: dict[str, bytes] = {}
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                inner = member.name.removeprefix("package/")
                if member.isfile() and inner in wanted and (handle := tar.extractfile(member)) is not None:
                    found[inner] = handle.read()
        return found

    def records(self, task: tuple[str, ...], skipped: Counter) -> Iterator[dict[str, Any]]:
        for vendor in task:
            yield from self._vendor_records(vendor, skipped)

    def _vendor_records(self, vendor: str, skipped: Counter) -> Iterator[dict[str, Any]]:
        from PIL import Image

        files = self._files(vendor)
        missing = sorted({"emoji.json", f"img/{vendor}/{SHEET}"} - set(files))
        if missing:
            raise ValueError(f"--input {self.package}: the {vendor} package lacks {', '.join(missing)}")
        index = emoji_index(json.loads(files["emoji.json"]), vendor)
        sheet = Image.open(io.BytesIO(files[f"img/{vendor}/{SHEET}"]))
        sheet.load()
        for file, (key, captions, label, x, y) in sorted(index.items()):
            where = f"{vendor}:{file}"
            image = cut(sheet, x, y)
            record = image_record(f"{vendor}/{key}", image, [CATEGORIES[label]], label, where, skipped, captions)
            if record:
                yield record
