"""Seeded fuzz of the inputs a user hands the toolkit: invalid configs, damaged shards, hostile builder inputs.

Every case must end in the documented way: a config is refused with ConfigError (no other exception = no traceback,
no acceptance); a damaged shard is skipped and counted by the loader and failed by ``data verify``; a builder input
is built with every bad record counted, or refused with DatasetError. Runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import typing

import annotated_types as at
import numpy as np
import pytest
from PIL import Image

from maws_scale.config import SECTIONS, ConfigError, RunConfig, load_config
from maws_scale.data import build_loader
from maws_scale.data.build import build_dataset
from maws_scale.data.shards import (
    DatasetError,
    Manifest,
    ShardInfo,
    inline_manifest_json,
    load_manifest,
    shard_name,
    write_shard,
)
from maws_scale.data.sources import JsonlSource, WebDatasetSource
from maws_scale.data.verify import verify_dataset

SEED = 20
VALID = ["model.name=vit_micro_p4", "train.steps=5", "seed=3", "data.num_workers=0", "optim.lr=0.01"]


# ----- configs ------------------------------------------------------------------------------------------------------
def _bad_values(annotation: typing.Any, metadata: list) -> list[str]:
    """YAML texts that must be refused for a field of this type and constraints."""
    args = typing.get_args(annotation)
    base = {a for a in args if a is not type(None)} if typing.get_origin(annotation) in (typing.Union, None) else set()
    kind = next(iter(base)) if len(base) == 1 else annotation
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        return ["not-a-choice", "[1]", "{a: 1}"]
    if origin is tuple:
        return ["[.nan, .95]", "[1.5, .95]", "[1]", "abc", "[.inf, .5]"]
    if origin is dict:
        return ["5", "[1]", "abc"]
    if origin is list:
        return ["abc", "[a]", "{a: 1}"]
    values = {
        bool: ["maybe", "[1]", "{a: 1}"],
        int: [".inf", ".nan", "1.5", "abc", "[1]"],
        float: [".inf", "-.inf", ".nan", "abc", "[1]", "{a: 1}"],
        str: ["[1, 2]", "{a: 1}"],
    }.get(kind, [])
    for bound in metadata:
        if isinstance(bound, at.Gt):
            values.append(repr(bound.gt))
        elif isinstance(bound, at.Ge):
            values.append(repr(bound.ge - 1))
        elif isinstance(bound, at.Lt):
            values.append(repr(bound.lt))
    return values


def _invalid_overrides() -> list[str]:
    cases = []
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            cases += [f"{section}.{name}={v}" for v in _bad_values(field.annotation, field.metadata)]
        cases += [f"{section}=5", f"{section}=[1]", f"{section}.bogus_key=1"]
    for name in ("seed", "output_dir", "stage"):
        field = RunConfig.model_fields[name]
        cases += [f"{name}={v}" for v in _bad_values(field.annotation, field.metadata)]
    cases += ["stages.mae=5", "stages.wsp=[1]", "stages.bogus=1", "stages.mae.bogus=1", "stages.wsp.optim.lr=.inf"]
    cases += ["no_equals_sign", "=5", "optim.lr.deeper=1", "stage=both"]
    return cases


def _config_files(rng: random.Random) -> list[bytes]:
    files = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))) for _ in range(20)]
    files = [f for f in files if _refused_yaml(f)]  # keep only the ones that are not a (valid) YAML mapping
    files += [b"- a\n- b\n", b"42\n", b"model: [\n", b"\xff\xfe\x00\x01", b"train:\n  steps: 5 \xe9\n"]
    files += [b"optim:\n  betas: [.nan, .95]\n", b"stages:\n  mae: 5\n", b"train: {epochs: .inf}\n"]
    return files


def _refused_yaml(data: bytes) -> bool:
    import yaml

    try:
        return not isinstance(yaml.safe_load(data.decode("utf-8")), dict)
    except (UnicodeDecodeError, yaml.YAMLError):
        return True


def _overlaps(key: str, other: str) -> bool:
    """Whether setting ``other`` could overwrite ``key`` (or the reverse): such a valid override is not added."""
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def test_invalid_configs_are_all_refused_with_config_error(tmp_path):
    rng = random.Random(SEED)
    cases = _invalid_overrides()
    assert len(cases) > 250
    outcomes = {"refused": 0, "accepted": [], "traceback": []}
    for case in cases:
        key = case.partition("=")[0]
        others = [v for v in VALID if not _overlaps(key, v.partition("=")[0])]
        overrides = rng.sample(others, rng.randint(0, 3))
        overrides.insert(rng.randint(0, len(overrides)), case)
        try:
            load_config(None, overrides)
            outcomes["accepted"].append(case)
        except ConfigError:
            outcomes["refused"] += 1
        except Exception as err:  # anything else would be a traceback at the command line
            outcomes["traceback"].append(f"{case}: {type(err).__name__}: {err}")
    for i, data in enumerate(_config_files(rng)):
        path = tmp_path / f"c{i}.yaml"
        path.write_bytes(data)
        try:
            load_config(path)
            outcomes["accepted"].append(repr(data))
        except ConfigError:
            outcomes["refused"] += 1
        except Exception as err:
            outcomes["traceback"].append(f"{data!r}: {type(err).__name__}: {err}")
    assert outcomes["traceback"] == [] and outcomes["accepted"] == [], outcomes
    assert outcomes["refused"] >= 280


# ----- damaged shards -----------------------------------------------------------------------------------------------
def _png(rng: random.Random) -> bytes:
    buffer = io.BytesIO()
    pixels = np.asarray([rng.randrange(256) for _ in range(8 * 8 * 3)], dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.choice(["flip", "xor_run", "truncate", "zero_run", "append"])
    start = rng.randrange(len(data))
    if kind == "flip":
        data[start] ^= 1 << rng.randrange(8)
    elif kind == "xor_run":
        for i in range(start, min(len(data), start + 64)):
            data[i] ^= rng.randrange(1, 256)
    elif kind == "truncate":
        del data[start:]
    elif kind == "zero_run":
        data[start : start + rng.randint(1, 256)] = bytes(len(data[start : start + 256]))
    else:
        data += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 32)))
    return bytes(data)


def test_damaged_shards_are_counted_by_the_loader_and_failed_by_verify(tmp_path):
    rng = random.Random(SEED)
    records = [{"key": f"k{i}", "image": _png(rng), "tags": ["a", "b"][: i % 3], "label": i} for i in range(12)]
    clean = tmp_path / "clean"
    clean.mkdir()
    stats = write_shard(clean / shard_name(0), records)
    original = (clean / shard_name(0)).read_bytes()
    cfg = load_config(None, ["model.name=vit_micro_p4", "data.num_workers=0", "train.micro_batch=4"])
    tracebacks, silent = [], []
    for case in range(150):
        root = tmp_path / f"s{case}"
        root.mkdir()
        damaged = _mutate(original, rng)
        (root / shard_name(0)).write_bytes(damaged)
        Manifest([ShardInfo(shard_name(0), stats["records"], stats["bytes"], stats["sha256"])]).save(root)
        try:
            loader = build_loader(cfg, "eval", path=str(root), infinite=False)
            keys = [k for batch in loader for k in batch["keys"]]
            if len(keys) + sum(loader.error_counts().values()) != len(records):
                silent.append(f"case {case}: {len(keys)} keys + {loader.error_counts()} != {len(records)}")
            if damaged != original and verify_dataset(root)["ok"]:
                silent.append(f"case {case}: verify passed a damaged shard")
        except (ConfigError, DatasetError):
            pass
        except Exception as err:
            tracebacks.append(f"case {case}: {type(err).__name__}: {err}")
    assert tracebacks == [] and silent == []


def test_damaged_manifests_are_refused_or_agree_with_verify(tmp_path):
    rng = random.Random(SEED + 1)
    root = tmp_path / "clean"
    root.mkdir()
    stats = write_shard(root / shard_name(0), [{"key": "a", "image": _png(rng), "tags": []}])
    good = inline_manifest_json(Manifest([ShardInfo(shard_name(0), stats["records"], stats["bytes"], stats["sha256"])]))
    tracebacks = []
    for case in range(60):
        raw = json.loads(json.dumps(good))
        field = rng.choice(["records", "bytes", "file", "sha256", "shards", "schema_version"])
        value = rng.choice([0, -5, 1 << 70, "x", None, [], {}, 1.5, "../x", ""])
        if field in ("shards", "schema_version"):
            raw[field] = value
        else:
            raw["shards"][0][field] = value
        (root / "manifest.json").write_text(json.dumps(raw))
        try:
            manifest = load_manifest(root)
            if verify_dataset(root)["ok"] and manifest.shards[0].records != 1:
                tracebacks.append(f"case {case}: verify passed records={manifest.shards[0].records}")
        except DatasetError:
            pass
        except Exception as err:
            tracebacks.append(f"case {case} ({field}={value!r}): {type(err).__name__}: {err}")
    assert tracebacks == []


# ----- builder inputs -----------------------------------------------------------------------------------------------
def _hostile_value(rng: random.Random) -> typing.Any:
    return rng.choice([True, 2**70, -1, 1.5, None, "s", "\ud800", ["ok"], ["\udfff"], {"a": 1}, [1], 5, "notalist"])


def _jsonl_line(rng: random.Random, image: str, i: int) -> bytes:
    obj: dict = {"path": image, "key": f"k{i}"}
    for field in ("tags", "label", "key", "path"):
        if rng.random() < 0.3:
            obj[field] = _hostile_value(rng)
    text = json.dumps(obj).encode("utf-8", "surrogatepass")
    roll = rng.random()
    if roll < 0.1:
        return text[: rng.randrange(len(text))]
    if roll < 0.2:
        return text.replace(b"k", b"\xe9", 1)
    return text


@pytest.mark.parametrize("kind", ["jsonl", "webdataset"])
def test_hostile_builder_inputs_are_counted_or_refused(tmp_path, kind):
    rng = random.Random(SEED + (kind == "webdataset"))
    (tmp_path / "img.png").write_bytes(_png(rng))
    tracebacks, lost = [], []
    for case in range(75):
        out = tmp_path / f"out{case}"
        n = rng.randint(1, 8)
        if kind == "jsonl":
            source = tmp_path / f"in{case}.jsonl"
            source.write_bytes(b"\n".join(_jsonl_line(rng, "img.png", i) for i in range(n)) + b"\n")
            built_source = JsonlSource(str(source))
        else:
            source = tmp_path / f"in{case}.tar"
            with tarfile.open(source, "w", format=tarfile.GNU_FORMAT) as tar:
                for i in range(n):
                    meta = {"tags": _hostile_value(rng), "label": _hostile_value(rng)}
                    members = [(f"s{i}.png", _png(rng) if rng.random() < 0.8 else b"junk")]
                    members.append((f"s{i}.json", json.dumps(meta).encode("utf-8", "surrogatepass")))
                    for name, data in members:
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            built_source = WebDatasetSource(str(source))
        try:
            manifest = build_dataset(built_source, out, progress=False)
            if manifest.records + sum(manifest.build["skipped"].values()) != n:
                lost.append(f"case {case}: {manifest.records} records + {manifest.build['skipped']} != {n} inputs")
            if not verify_dataset(out)["ok"]:
                lost.append(f"case {case}: the built data set fails verify")
        except DatasetError:
            pass  # nothing usable: refused, never an empty data set
        except Exception as err:
            tracebacks.append(f"case {case}: {type(err).__name__}: {err}")
    assert tracebacks == [] and lost == []
