"""The loop never branches on TP or ZeRO: ``maws_scale/train/`` names none of DeepSpeed's or megatron's layout knobs,
private objects or file formats (comments included), and imports run one way (parallel/ and data/ never import
train/). parallel/ owns all of it (``parallel/plan.py`` and the modules it calls)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import maws_scale

PACKAGE = Path(maws_scale.__file__).parent

# what train/ must not say, and lines each pattern has to catch (so that a pattern that matches nothing fails here)
FORBIDDEN = {
    "zero_stage": (r"zero_stage", ["if info.zero_stage >= 1:", 'meta["zero_stage"]']),
    "tp": (
        r"\btp\b|tp_size|\.tp\b|\btp_",
        ["cfg.parallel.tp > 1", "self.tp_size", "plan.tp_rank", "# TP ranks", "tp_layout.json"],
    ),
    "_config": (r"\b_config\b", ["self.engine._config.load_universal_checkpoint = True", "getattr(e, '_config')"]),
    "ds_": (r"\bds_|\bds\b", ["self.ds_config = build_ds_config(", "ds = fill(cfg)", '"ds_config.json"']),
    "universal": (r"universal", ["make_universal(info)", "# a Universal checkpoint"]),
    "deepspeed/megatron import": (
        r"^\s*(from|import)\s+(deepspeed|megatron)\b",
        ["    from deepspeed.checkpoint import ds_to_universal", "import megatron.core"],
    ),
}


def _sources(folder: str) -> list[Path]:
    files = sorted((PACKAGE / folder).rglob("*.py"))
    assert files, f"no Python files under maws_scale/{folder}: the test would pass vacuously"
    return files


def _hits(pattern: str, files: list[Path]) -> list[str]:
    regex = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    found = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if regex.search(line):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    return found


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_each_pattern_catches_what_it_is_for(name):
    pattern, examples = FORBIDDEN[name]
    regex = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    assert all(regex.search(line) for line in examples), [line for line in examples if not regex.search(line)]
    assert not regex.search("self.plan.load_checkpoint(self.engine, self.guard, info)  # model_config, stops")


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_the_training_loop_knows_no_parallel_layout(name):
    hits = _hits(FORBIDDEN[name][0], _sources("train"))
    assert not hits, f"maws_scale/train/ mentions {name} (parallel/ owns it):\n" + "\n".join(hits)


@pytest.mark.parametrize(("folder", "target"), [("parallel", "train"), ("data", "train"), ("models", "parallel")])
def test_imports_run_one_way(folder, target):
    hits = _hits(rf"^\s*(from|import)\s+maws_scale\.{target}\b|from maws_scale import {target}\b", _sources(folder))
    assert not hits, f"maws_scale/{folder}/ imports maws_scale/{target}/:\n" + "\n".join(hits)


def test_tensor_parallel_does_not_re_export_the_checkpoint_names():
    """parallel/tensor_parallel.py builds the sharded model; its checkpoints are parallel/tp_checkpoint.py's."""
    hits = _hits(r"tp_checkpoint", [PACKAGE / "parallel" / "tensor_parallel.py"])
    assert not hits, "\n".join(hits)
