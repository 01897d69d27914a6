"""The demo's figures in README.md and docs/training.md are generated from a run's files, and describe the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from maws_scale.config import load_config
from maws_scale.experiments import demo_figures
from maws_scale.train.pipeline import stage_configs

ROOT = Path(__file__).resolve().parents[2]


def test_docs_hold_the_generated_block():
    """README.md and docs/training.md carry exactly what `render` makes of docs/demo_figures.json (if this fails,
    regenerate: `python -m maws_scale.experiments.demo_figures runs/demo` after `make demo`)."""
    figures = json.loads(demo_figures.FIGURES.read_text())
    assert demo_figures.stale_docs(figures) == []
    assert demo_figures.main(["--check"]) == 0


def test_the_figures_describe_the_shipped_demo_config():
    figures = json.loads(demo_figures.FIGURES.read_text())
    mae, wsp = stage_configs(load_config(ROOT / "configs" / "demo.yaml"))
    for cfg in (mae, wsp):
        got = figures[cfg.stage]
        assert (got["model"], got["img_size"]) == (cfg.model.name, cfg.model.img_size)
        assert (got["steps"], got["global_batch"]) == (cfg.train.steps, cfg.train.global_batch)


def _fake_run(tmp: Path) -> Path:
    for stage, losses in (("mae", [2.5, 1.0, 0.75]), ("wsp", [2.4, float("nan"), 2.2])):
        folder = tmp / stage
        folder.mkdir(parents=True)
        config = {"model": {"name": "vit_tiny_p4", "img_size": 28}, "train": {"steps": 30, "global_batch": 64}}
        folder.joinpath("config.yaml").write_text(yaml.safe_dump(config))
        rows = [{"step": 10 * i + 10, "loss": loss, "images_per_s": 100.0 * (i + 1)} for i, loss in enumerate(losses)]
        folder.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "eval").mkdir()
    metrics = {"eval/linear_top1": 66.25, "eval/knn_top1": 50.0, "eval/fewshot_10_top1": 41.96}
    (tmp / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return tmp


def test_collect_reads_losses_rates_and_eval_from_the_run_files(tmp_path):
    figures = demo_figures.collect(_fake_run(tmp_path))
    assert figures["mae"]["first_loss"] == 2.5 and figures["mae"]["last_loss"] == 0.75
    assert figures["wsp"]["last_loss"] == 2.2  # non-finite losses are not figures
    assert figures["mae"]["images_per_s"] == 200.0  # the median of the logged rates
    text = " ".join(demo_figures.render(figures).split())  # wrapped at 118 columns
    assert "MAE loss 2.50 → 0.75 at 200 img/s" in text and "linear probe 66.2 %" in text
    assert "kNN 50.0 %" in text and "10-shot 42.0 %" in text and "`vit_tiny_p4` at `model.img_size=28`" in text


def test_update_and_check_round_trip(tmp_path):
    figures = demo_figures.collect(_fake_run(tmp_path / "run"))
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{demo_figures.BEGIN}\nold figures\n{demo_figures.END}\noutro\n")
    assert demo_figures.stale_docs(figures, (doc,)) == [doc]
    assert demo_figures.update_docs(figures, (doc,)) == [doc]
    assert demo_figures.stale_docs(figures, (doc,)) == []
    assert doc.read_text().startswith("intro\n") and doc.read_text().endswith("outro\n")
    bare = tmp_path / "bare.md"
    bare.write_text("no markers")
    with pytest.raises(ValueError, match=r"bare\.md: no demo-figures block"):
        demo_figures.stale_docs(figures, (bare,))
