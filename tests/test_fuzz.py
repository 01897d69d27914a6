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
        choices = typing.get_args(kind)
        other = [repr(max(choices) + 1)] if all(type(c) is int for c in choices) else []  # in_chans=4
        return ["not-a-choice", "[1]", "{a: 1}", *other]
    if origin is tuple:
        return ["[.nan, .95]", "[1.5, .95]", "[1]", "abc", "[.inf, .5]"]
    if origin is dict:
        return ["5", "[1]", "abc"]
    if origin is list:
        (item,) = typing.get_args(kind)
        bounded = any(isinstance(b, at.Gt) for b in getattr(item, "__metadata__", ()))
        return ["abc", "[a]", "{a: 1}", *(["[0]", "[-1, 5]", "[true]"] if bounded else [])]  # eval.few_shot
    values = {
        bool: ["maybe", "[1]", "{a: 1}"],
        int: [".inf", ".nan", "1.5", "abc", "[1]", "true", "false"],  # true would become 1
        float: [".inf", "-.inf", ".nan", "abc", "[1]", "{a: 1}", "true"],
        str: ["[1, 2]", "{a: 1}", "bad-\udcff"],  # a non-UTF-8 byte from the command line
    }.get(kind, [])
    for bound in metadata:
        if isinstance(bound, at.Gt):
            values.append(repr(bound.gt))
        elif isinstance(bound, at.Ge):
            values.append(repr(bound.ge - 1))
        elif isinstance(bound, at.Lt):
            values.append(repr(bound.lt))
        elif isinstance(bound, at.Le):
            values.append(repr(bound.le + 1))
        elif isinstance(bound, at.MinLen) and bound.min_length > 0:
            values += ["", "' '"]  # empty or blank text: an empty experiment name, output_dir=''
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
    cases += ["seed=18446744073709551616", "model.img_size=1000000", "model.width=1000000000", "eval.few_shot=[5, 5]"]
    cases += ["no_equals_sign", "=5", "optim.lr.deeper=1", "stage=both"]
    return cases


def _config_files(rng: random.Random) -> list[bytes]:
    files = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))) for _ in range(20)]
    files = [f for f in files if _refused_yaml(f)]  # keep only the ones that are not a (valid) YAML mapping
    files += [b"- a\n- b\n", b"42\n", b"model: [\n", b"\xff\xfe\x00\x01", b"train:\n  steps: 5 \xe9\n"]
    files += [b"optim:\n  betas: [.nan, .95]\n", b"stages:\n  mae: 5\n", b"train: {epochs: .inf}\n"]
    files += [b"train:\n  steps: 5\n  steps: 6\n", b"train: {steps: 5}\nseed: 1\ntrain: {micro_batch: 4}\n"]
    files += [b"stages:\n  mae: {train.steps: 3, train.steps: 4}\n", b"seed: true\n", b"output_dir: ''\n"]
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
    assert outcomes["refused"] >= 420


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


# ----- manifest numbers and shard tables ----------------------------------------------------------------------------
def test_manifest_numbers_and_escaping_shard_tables_are_refused(tmp_path):
    from maws_scale.data.shard_table import SHARD_TABLE, write_shard_table

    rng = random.Random(SEED + 2)
    root = tmp_path / "set"
    root.mkdir()
    stats = write_shard(root / shard_name(0), [{"key": "a", "image": _png(rng), "tags": []}])
    info = ShardInfo(shard_name(0), stats["records"], stats["bytes"], stats["sha256"])
    Manifest([info]).save(root)
    good_json, good_table = (root / "manifest.json").read_text(), (root / SHARD_TABLE).read_bytes()
    numbers = ["1e999", "-1e999", "1.5", "true", "-1", "4611686018427387904", "1e3", '"7"', "null"]
    names = [[shard_name(0)] * 2, ["../x.arrow"], ["/etc/passwd"], ["a/../../x.arrow"], [""], ["./" + shard_name(0)]]
    problems = []
    for case in range(80):
        (root / "manifest.json").write_text(good_json)
        (root / SHARD_TABLE).write_bytes(good_table)
        if rng.random() < 0.6:
            raw = json.loads(good_json) if rng.random() < 0.5 else inline_manifest_json(Manifest([info]))
            fields = [f for f in ("schema_version", "shard_count") if f in raw]
            field = rng.choice(fields + (["records", "bytes"] if "shards" in raw else []))
            (raw["shards"][0] if field in ("records", "bytes") else raw)[field] = "@@"
            value = rng.choice(numbers)
            (root / "manifest.json").write_text(json.dumps(raw).replace('"@@"', value))
            what = f"{field}={value}"
        else:
            listed = rng.choice(names)
            write_shard_table(root / SHARD_TABLE, [ShardInfo(n, 1, stats["bytes"], stats["sha256"]) for n in listed])
            raw = json.loads(good_json)
            (root / "manifest.json").write_text(json.dumps({**raw, "shard_count": len(listed)}))
            what = f"shard table {listed}"
        try:
            load_manifest(root)
            problems.append(f"case {case}: {what} accepted")
        except DatasetError:
            pass
        except Exception as err:
            problems.append(f"case {case}: {what}: {type(err).__name__}: {err}")
    assert problems == []


# ----- deep nesting and lone surrogates in caption files -------------------------------------------------------------
def test_hostile_caption_files_are_counted_never_fatal(tmp_path):
    from maws_scale.data.sources import FolderSource

    rng = random.Random(SEED + 3)
    deep = "[" * 50_000 + "]" * 50_000
    captions = ['{"caption": "\\ud800"}', '{"captions": ' + deep + "}", '{"caption": "a cat"}', "not json", "\xff"]
    tracebacks, lost = [], []
    for case in range(12):
        root = tmp_path / f"in{case}" / "cls"
        root.mkdir(parents=True)
        n = rng.randint(1, 5)
        for i in range(n):
            (root / f"{i}.png").write_bytes(_png(rng))
            text = rng.choice(captions)
            (root / f"{i}.json").write_bytes(text.encode("utf-8", "surrogatepass") if text != "\xff" else b"\xff")
        out = tmp_path / f"o{case}"
        try:
            manifest = build_dataset(FolderSource(str(root.parent), captions=True), out, progress=False)
            uncaptioned = manifest.build["skipped"].get("no_caption", 0)  # an image left without a usable caption
            if manifest.records + uncaptioned != n or not verify_dataset(out)["ok"]:
                lost.append(f"case {case}: {manifest.records} records + {uncaptioned} without a caption != {n}")
        except DatasetError:
            pass  # no image with a usable caption: refused, never an empty data set
        except Exception as err:
            tracebacks.append(f"case {case}: {type(err).__name__}: {err}")
    assert tracebacks == [] and lost == []


# ----- FIFOs in place of files ---------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_fifos_in_place_of_inputs_are_refused_never_waited_on(tmp_path):
    import os

    from maws_scale.models.state import load_state_dict_file

    rng = random.Random(SEED + 4)
    problems = []
    for case in range(6):
        where = tmp_path / f"f{case}"
        where.mkdir()
        kind = ["config", "shard", "listed_image", "checkpoint", "manifest", "config"][case]
        fifo = where / {"config": "c.yaml", "shard": shard_name(0), "listed_image": "b.png"}.get(kind, "w.pt")
        if kind == "manifest":
            fifo = where / "manifest.json"
        os.mkfifo(fifo)
        try:
            if kind == "config":
                load_config(fifo)
            elif kind == "shard":
                from maws_scale.data.shards import open_shard

                open_shard(fifo)
            elif kind == "checkpoint":
                load_state_dict_file(fifo)
            elif kind == "manifest":
                load_manifest(where)
            else:
                (where / "a.png").write_bytes(_png(rng))
                (where / "in.jsonl").write_text('{"path": "a.png"}\n{"path": "b.png"}\n')
                built = build_dataset(JsonlSource(str(where / "in.jsonl")), where / "out", progress=False)
                if built.build["skipped"] != {"unreadable_file": 1}:
                    problems.append(f"{kind}: not counted ({built.build['skipped']})")
                continue
            problems.append(f"{kind}: accepted")
        except (ConfigError, DatasetError, OSError, ValueError) as err:
            if str(fifo) not in str(err) and kind != "manifest":
                problems.append(f"{kind}: the error does not name the FIFO: {err}")
    assert problems == []


# ----- export and eval inputs ---------------------------------------------------------------------------------------
def test_damaged_weight_files_and_bad_sizes_never_traceback_in_export_or_eval(tmp_path, capsys):
    import torch

    from maws_scale.cli import main
    from maws_scale.eval.checkpoint import CheckpointError, load_encoder
    from maws_scale.models import build_encoder

    rng = random.Random(SEED + 5)
    torch.manual_seed(0)
    good = tmp_path / "good.pt"
    torch.save(build_encoder("vit_micro_p4").state_dict(), good)
    original = good.read_bytes()
    cfg = load_config(None, ["model.name=vit_micro_p4"])
    tracebacks, silent = [], []
    for case in range(40):
        src = tmp_path / f"w{case}.pt"
        damaged = _mutate(original, rng)
        src.write_bytes(damaged)
        size = rng.choice([None, None, 16, 24, 30, -28, 0, 1 << 20])
        out = tmp_path / f"o{case}.safetensors"
        args = ["export", str(src), "--out", str(out), "--model", "vit_micro_p4"]
        args += ["--img-size", str(size)] if size is not None else []
        try:
            code = main(args)
            bad_size = size is not None and (size <= 0 or size % 4 or size > 8192)
            if code == 0 and (bad_size or not out.is_file()):
                silent.append(f"case {case}: export accepted --img-size {size}")
            if code != 0 and out.exists():
                silent.append(f"case {case}: a failed export left {out}")
        except Exception as err:
            tracebacks.append(f"case {case} export: {type(err).__name__}: {err}")
        try:
            load_encoder(cfg, src)
        except CheckpointError:
            pass
        except Exception as err:
            tracebacks.append(f"case {case} eval: {type(err).__name__}: {err}")
    capsys.readouterr()
    assert tracebacks == [] and silent == []
