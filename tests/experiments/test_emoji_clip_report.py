"""The emoji CLIP experiment's report: runs.csv, the mean ± std table and the MAE-CLIP − CLIP differences."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from maws_scale.experiments import emoji_clip_report as report


def _run(root: Path, arm: str, pool: str, seed: int, zero_shot: float, losses: list[float]) -> None:
    folder = root / f"{arm}-{pool}-s{seed}"
    (folder / arm).mkdir(parents=True)
    metrics = {"eval/zero_shot_top1": zero_shot, "eval/linear_top1": 60.0 + seed, "eval/knn_top1": 50.0}
    metrics.update({"eval/i2t_r1": 0.1, "eval/i2t_r5": 0.5, "eval/t2i_r5": 0.4})
    (folder / "eval.json").write_text(json.dumps(metrics))
    rows = [
        {"step": i + 1, "loss": v, **({"clip_loss": v - 1} if arm == "mae_clip" else {})} for i, v in enumerate(losses)
    ]
    (folder / arm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_tables_the_runs_and_the_differences(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "clip", "cls", 0, 10.0, [5.0, 4.0])
    _run(runs, "clip", "cls", 1, 14.0, [5.0, 4.5])
    _run(runs, "mae_clip", "cls", 0, 13.0, [6.0, 5.0])
    _run(runs, "mae_clip", "cls", 1, 15.0, [6.0, 5.5])
    (runs / "notes").mkdir()  # a folder that is not a run is ignored
    out = tmp_path / "out"
    assert report.main([str(runs), "--out", str(out)]) == 0
    table = pd.read_csv(out / "runs.csv")
    assert list(table.run) == ["clip-cls-s0", "clip-cls-s1", "mae_clip-cls-s0", "mae_clip-cls-s1"]
    assert table.train_loss.tolist() == [4.5, 4.75, 5.5, 5.75]  # mean of the last (up to) 10 logged losses
    assert table.clip_loss.isna().tolist() == [True, True, False, False] and table.clip_loss.iloc[3] == 4.5
    text = (out / "summary.md").read_text()
    assert "| clip | cls | 2 | 12.00 ± 2.83 |" in text  # zero-shot mean ± std (ddof 1) of 10 and 14
    assert "| cls | +2.00 (2.83) |" in text  # MAE-CLIP − CLIP zero-shot: 14 − 12, larger std 2.83
    assert (out / "loss_curves.png").stat().st_size > 0


def test_a_run_without_its_training_log_is_refused(tmp_path):
    _run(tmp_path, "clip", "gap", 0, 10.0, [5.0])
    (tmp_path / "clip-gap-s0" / "clip" / "metrics.jsonl").unlink()
    with pytest.raises(SystemExit, match="has no training log"):
        report.read_runs(tmp_path)
