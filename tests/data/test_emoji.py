"""The emoji source: sprite-sheet cells cut per emoji of the vendor, captions and category labels from emoji.json,
several vendors in one set, a missing package named."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maws_scale.data.build import build_dataset
from maws_scale.data.emoji import CATEGORIES, EmojiSource, emoji_captions
from maws_scale.data.shards import open_shard

ENTRIES = [
    {
        "name": "GRINNING FACE",
        "unified": "1F600",
        "image": "1f600.png",
        "short_names": ["grinning"],
        "category": "Smileys & Emotion",
        "subcategory": "face-smiling",
        "sheet_x": 0,
        "sheet_y": 0,
        "has_img_google": True,
        "has_img_apple": True,
    },
    {
        "name": "WAVING HAND SIGN",
        "unified": "1F44B",
        "image": "1f44b.png",
        "short_names": ["wave"],
        "category": "People & Body",
        "subcategory": "hand-fingers-open",
        "sheet_x": 1,
        "sheet_y": 0,
        "has_img_google": True,
        "has_img_apple": False,
        "skin_variations": {
            "1F3FB": {
                "unified": "1F44B-1F3FB",
                "image": "1f44b-1f3fb.png",
                "sheet_x": 2,
                "sheet_y": 0,
                "has_img_google": True,
            }
        },
    },
    {"name": "NOT DRAWN", "unified": "1F601", "image": "1f601.png", "category": "Objects", "sheet_x": 0, "sheet_y": 1},
]
COLORS = {(0, 0): (255, 0, 0), (1, 0): (0, 255, 0), (2, 0): (0, 0, 255), (0, 1): (9, 9, 9)}


def sheet_png() -> bytes:
    sheet = Image.new("RGBA", (3 * 66, 2 * 66), (0, 0, 0, 0))
    for (x, y), color in COLORS.items():
        sheet.paste(Image.new("RGBA", (32, 32), (*color, 255)), (x * 66 + 1, y * 66 + 1))  # top-left quarter opaque
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def write_package(root: Path, vendor: str) -> Path:
    files = {
        "package/emoji.json": json.dumps(ENTRIES).encode(),
        f"package/img/{vendor}/sheets-clean/64.png": sheet_png(),
    }
    path = root / f"emoji-datasource-{vendor}-16.0.0.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_captions_come_from_name_short_names_and_categories():
    assert emoji_captions(ENTRIES[0]) == [
        "grinning face",
        "grinning",
        "a grinning face emoji (face-smiling, smileys & emotion)",
    ]
    assert emoji_captions(ENTRIES[1], "light skin tone")[0] == "waving hand sign, light skin tone"


def test_google_cells_are_cut_labelled_and_captioned(tmp_path):
    write_package(tmp_path, "google")
    manifest = build_dataset(EmojiSource(str(tmp_path), "google"), tmp_path / "out", progress=False)
    assert manifest.records == 3  # two emoji + one skin tone; NOT DRAWN has no google image
    table = open_shard(tmp_path / "out" / manifest.shards[0].file).to_pylist()
    rows = {r["key"]: r for r in table}
    assert set(rows) == {"google/1f600", "google/1f44b", "google/1f44b-1f3fb"}
    assert rows["google/1f600"]["label"] == CATEGORIES.index("Smileys & Emotion")
    assert rows["google/1f44b"]["tags"] == ["People & Body"]
    assert rows["google/1f44b-1f3fb"]["captions"][0] == "waving hand sign, light skin tone"
    pixels = np.asarray(Image.open(io.BytesIO(rows["google/1f44b-1f3fb"]["image"])))
    assert pixels.shape == (64, 64, 3)
    assert tuple(pixels[5, 5]) == (0, 0, 255) and tuple(pixels[60, 60]) == (255, 255, 255)  # transparent → white


def test_several_vendors_make_one_set_and_a_missing_vendor_is_named(tmp_path):
    write_package(tmp_path, "google")
    write_package(tmp_path, "apple")
    manifest = build_dataset(EmojiSource(str(tmp_path), "apple,google"), tmp_path / "out", progress=False)
    keys = [r["key"] for r in open_shard(tmp_path / "out" / manifest.shards[0].file).to_pylist()]
    assert keys[0] == "apple/1f600" and len(keys) == 4  # apple drew only the grinning face
    with pytest.raises(ValueError, match="emoji-datasource-twitter"):
        EmojiSource(str(tmp_path), "twitter").plan(1 << 20)
    with pytest.raises(ValueError, match="--vendor klingon"):
        EmojiSource(str(tmp_path), "klingon")
