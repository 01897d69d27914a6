"""`maws-scale plan` on the shipped cluster configs as documented (issue 25): the WSP class count when the vocabulary
is a cluster path, the world size of the config's launch spec, every stage of a pipeline config, and progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maws_scale.cli import main
from maws_scale.perf.planner import DEFAULT_WSP_CLASSES

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    rc = main(["plan", *argv, "--json"])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out), captured.err


def test_a_wsp_config_whose_vocabulary_is_a_cluster_path_plans_a_stated_default(capsys) -> None:
    # the documented command (docs/bench.md): wsp.vocab is /datasets/ig3b/vocab.json, absent here
    rc, data, _ = plan_json(capsys, str(CONFIGS / "vit_6.5b14_wsp_tp4.yaml"), "--gpus", "512", "--gpu-mem", "80GiB")
    assert rc in (0, 1) and [s["plan"]["stage"] for s in data["stages"]] == ["wsp"]
    plan = data["plan"]
    assert plan["layout"]["tp"] == 4 and plan["dp"] == 128
    assert any(
        f"{DEFAULT_WSP_CLASSES:,} classes" in note and "/datasets/ig3b/vocab.json" in note for note in plan["notes"]
    )
    head = -(-DEFAULT_WSP_CLASSES // 4) * (4096 + 1)  # vit_6.5b14: width 4096, the head's classes split over tp 4
    assert plan["parameters"]["head_per_gpu"] == head


def test_the_class_count_comes_from_the_config_or_the_vocabulary_when_there_is_one(capsys, tmp_path: Path) -> None:
    config = str(CONFIGS / "vit_6.5b14_wsp_tp4.yaml")
    _, given, _ = plan_json(capsys, config, "--gpus", "512", "wsp.num_classes=1000")
    assert given["plan"]["parameters"]["head_per_gpu"] == 250 * 4097 and not given["plan"]["notes"]
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"tags": [f"t{i}" for i in range(64)], "counts": [1] * 64}))
    _, read, _ = plan_json(capsys, config, "--gpus", "512", f"wsp.vocab={vocab}")
    assert read["plan"]["parameters"]["head_per_gpu"] == 16 * 4097 and not read["plan"]["notes"]


def test_search_on_a_cluster_config_plans_its_launch_world_size_and_every_stage(capsys) -> None:
    # configs/vit_2b14_maws.yaml sets no world size; jobs/vit_2b14_maws_8x8.yaml launches it on 8 x 8 GPUs
    rc, data, err = plan_json(capsys, str(CONFIGS / "vit_2b14_maws.yaml"), "--search")
    assert data["hardware"]["gpus"] == 64
    assert any("64 GPUs" in n and "vit_2b14_maws_8x8.yaml" in n for n in data["notes"])
    assert [s["plan"]["stage"] for s in data["stages"]] == ["mae", "wsp"]
    wsp = data["stages"][1]
    flops = wsp["plan"]["flops"]
    assert flops["per_step"] == 8192 * flops["per_sample"] and wsp["plan"]["layout"]["micro_batch"] == 32  # stages.wsp
    assert all(s["search"] and s["hardware"]["gpus"] == 64 for s in data["stages"])
    assert rc == (0 if all(s["plan"]["verdict"]["fits"] for s in data["stages"]) else 1)
    # progress on stderr (plain lines: not a terminal), i/N for each stage
    n = len(data["stages"][0]["search"])
    assert f"plan --search mae: {n}/{n} layouts" in err and f"plan --search wsp: {n}/{n} layouts" in err


def test_an_explicit_stage_plans_that_stage_and_gpus_override_the_launch_spec(capsys) -> None:
    _, data, _ = plan_json(capsys, str(CONFIGS / "vit_2b14_maws.yaml"), "stage=wsp", "--gpus", "16")
    assert [s["plan"]["stage"] for s in data["stages"]] == ["wsp"] and data["hardware"]["gpus"] == 16
    assert not data["notes"]


def test_a_config_without_a_world_size_says_it_plans_one_gpu(capsys, tmp_path: Path) -> None:
    config = tmp_path / "alone.yaml"
    config.write_text("model: {name: vit_b16}\nstage: mae\ntrain: {global_batch: 64, micro_batch: 8}\n")
    _, data, _ = plan_json(capsys, str(config))
    assert data["hardware"]["gpus"] == 1 and any("planning 1 GPU" in n and "--gpus" in n for n in data["notes"])


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_log() -> None:
    import io

    from rich.console import Console

    from maws_scale.commands.plan import search_progress

    for terminal in (True, False):
        out = io.StringIO()
        with search_progress(Console(file=out, force_terminal=terminal, width=100), "plan --search mae") as progress:
            for i in range(1, 21):
                progress(i, 20)
        text = out.getvalue()
        assert "20/20" in text and ("\x1b[" in text) == terminal
        if not terminal:  # one plain line per tenth, each with i/N and an ETA
            lines = text.strip().splitlines()
            assert len(lines) == 10 and all("layouts" in line and "ETA" in line for line in lines)


def test_a_pipeline_config_with_a_lit_stage_says_lit_is_not_planned(capsys) -> None:
    _, data, _ = plan_json(capsys, str(CONFIGS / "demo_lit.yaml"), "--gpus", "1")
    assert [s["plan"]["stage"] for s in data["stages"]] == ["mae", "wsp"]
    assert any("stage lit: not planned" in n for n in data["notes"])
