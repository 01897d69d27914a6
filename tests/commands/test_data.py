"""`maws-scale data build|verify|vocab` end to end (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maws_scale.cli import main
from maws_scale.data.fashion_mnist import DEFAULT_DIR
from maws_scale.data.shards import load_manifest

pytestmark = pytest.mark.skipif(
    not Path(DEFAULT_DIR, "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)


def test_build_verify_vocab_and_detect_a_checksum_mismatch(tmp_path, capsys):
    out = tmp_path / "fm"
    argv = ["data", "build", "--source", "fashion-mnist", "--input", DEFAULT_DIR, "--output", str(out)]
    assert main([*argv, "--split", "test", "--noise", "0.2", "--limit", "120", "--shard-size", "60KB", "--quiet"]) == 0
    manifest = load_manifest(out)
    assert manifest.records == 120 and len(manifest.shards) >= 3
    assert manifest.build["options"]["split"] == "test" and manifest.build["options"]["noise"] == 0.2

    assert main(["data", "vocab", str(out), "--top", "5"]) == 0
    assert len(json.loads((out / "vocab.json").read_text())["tags"]) == 5

    capsys.readouterr()
    assert main(["data", "verify", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["records"] == 120 and report["bad_records"] == {}

    shard = out / manifest.shards[1].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["data", "verify", str(out), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == {manifest.shards[1].file: "checksum_mismatch"}
    assert main(["data", "verify", str(out)]) == 1  # the table output fails the same way
    assert "FAILED" in capsys.readouterr().out


def test_single_variant_and_limit_from_the_cli(tmp_path):
    out = tmp_path / "single"
    argv = ["data", "build", "--source", "fashion-mnist", "--input", DEFAULT_DIR, "--output", str(out)]
    assert main([*argv, "--variant", "single", "--limit", "7", "--seed", "4", "--quiet"]) == 0
    assert load_manifest(out).records == 7


def test_errors_are_reported_with_exit_code(tmp_path, capsys):
    assert main(["data", "verify", str(tmp_path)]) == 1
    assert "manifest" in capsys.readouterr().err
    argv = ["data", "build", "--source", "folder", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
    assert main([*argv, "--quiet"]) == 1
    assert "not a directory" in capsys.readouterr().err
    assert main(["data", "vocab", str(tmp_path)]) == 1
