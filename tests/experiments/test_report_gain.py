"""The MAWS plots of `sweep report` (report.gain) on a tiny hand-made runs table: gains paired by seed, the numbers
drawn on the plots, the arms' curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maws_scale.experiments.report_gain import arm_curves, curves_plot, gain_plot, gain_report, gain_table
from maws_scale.experiments.sweep import GainSpec

SPEC = GainSpec(
    x="budget",
    arm="label",
    lines=["width"],
    pairs=[("maws", "wsp"), ("maws", "eqflops")],
    metrics=["top1"],
    curve="wsp/loss",
)


def runs_table() -> pd.DataFrame:
    """2 widths × 2 budgets (tags: text) × 3 arms × seeds 0-2; width 144, budget 180, arm maws lacks seed 2."""
    rows = []
    for width in ("96", "144"):
        for budget in ("20", "180"):
            for seed in (0, 1, 2):
                base = 50.0 + seed + (10 if budget == "180" else 0) + (5 if width == "144" else 0)
                rows.append({"label": "wsp", "width": width, "budget": budget, "seed": seed, "top1": base})
                rows.append({"label": "eqflops", "width": width, "budget": budget, "seed": seed, "top1": base + 1})
                if (width, budget, seed) == ("144", "180", 2):
                    continue
                gain = {("96", "20"): [2.0, 4.0, 6.0], ("96", "180"): [1.0, 1.0, 1.0]}.get((width, budget))
                gain = gain or ([3.0, 5.0, 0.0] if budget == "20" else [-1.0, 1.0, 0.0])
                row = {"label": "maws", "width": width, "budget": budget, "seed": seed}
                rows.append({**row, "top1": base + gain[seed]})
    rows.append({"label": "mae", "width": "96", "budget": None, "seed": 0, "top1": float("nan")})  # no budget
    return pd.DataFrame(rows)


def test_gain_is_paired_by_seed_and_leaves_unpaired_rows_out() -> None:
    table = gain_table(runs_table(), SPEC).set_index(["pair", "width", "budget"])
    row = table.loc[("maws − wsp", "96", 20)]  # gains 2, 4, 6
    assert row["gain mean"] == pytest.approx(4.0) and row["gain std"] == pytest.approx(2.0) and row["n"] == 3
    assert row["treated mean"] == pytest.approx(55.0) and row["base mean"] == pytest.approx(51.0)
    assert table.loc[("maws − wsp", "96", 180)]["gain std"] == 0.0
    lone = table.loc[("maws − wsp", "144", 180)]  # seeds 0, 1 only: gains -1, +1; seed 2's wsp row is unpaired
    assert lone["n"] == 2 and lone["gain mean"] == pytest.approx(0.0) and lone["unpaired"] == 1
    assert lone["gain std"] == pytest.approx(np.sqrt(2.0))
    assert table.loc[("maws − eqflops", "96", 20)]["gain mean"] == pytest.approx(3.0)  # eqflops = wsp + 1
    assert list(table.reset_index()["budget"].unique()) == [20, 180]  # text tags compared as numbers


def test_gain_plot_draws_the_tabulated_means_and_error_bars(tmp_path: Path) -> None:
    table = gain_table(runs_table(), SPEC)
    path, figure = gain_plot(table, SPEC, "top1", tmp_path)
    assert path.read_bytes()[:4] == b"\x89PNG" and len(figure.axes) == 2  # one panel per pair
    first = figure.axes[0]
    assert first.get_title() == "maws − wsp"
    drawn = {c.get_label(): c for c in first.containers}  # one errorbar per width: (line, caps, bars)
    assert set(drawn) == {"width=96", "width=144"}
    assert list(drawn["width=96"].lines[0].get_xdata()) == [20, 180]
    assert list(drawn["width=96"].lines[0].get_ydata()) == pytest.approx([4.0, 1.0])
    assert list(drawn["width=144"].lines[0].get_ydata()) == pytest.approx([8.0 / 3.0, 0.0])
    segments = drawn["width=96"].lines[2][0].get_segments()  # the error bars: mean ± std
    assert [v for s in segments for v in (s[0][1], s[1][1])] == pytest.approx([2.0, 6.0, 1.0, 1.0])


def test_arm_curves_average_seeds_step_by_step(tmp_path: Path) -> None:
    runs = runs_table()
    series = []
    for _, row in runs.iterrows():  # loss = 2.3 - 0.01 · step · (1 + seed), maws 0.1 lower
        offset = 0.1 if row["label"] == "maws" else 0.0
        series.append(pd.Series({s: 2.3 - offset - 0.01 * s * (1 + row["seed"]) for s in (2, 4, 6)}))
    curves = arm_curves(runs, series, SPEC)
    one = curves[(curves["width"] == "96") & (curves["budget"] == 20) & (curves["label"] == "wsp")]
    assert list(one["step"]) == [2, 4, 6] and list(one["n"]) == [3, 3, 3]
    assert list(one["mean"]) == pytest.approx([2.3 - 0.01 * s * 2 for s in (2, 4, 6)])  # mean of (1+seed) = 2
    assert list(one["std"]) == pytest.approx([0.01 * s for s in (2, 4, 6)])  # std of (1, 2, 3) = 1
    maws = curves[(curves["width"] == "144") & (curves["budget"] == 180) & (curves["label"] == "maws")]
    assert list(maws["n"]) == [2, 2, 2] and maws["mean"].iloc[0] == pytest.approx(2.2 - 0.01 * 2 * 1.5)
    path, figure = curves_plot(curves, SPEC, tmp_path)
    assert path.name == "curves_wsp_loss_by_arm.png" and len(figure.axes) == 4  # 2 widths × 2 budgets
    drawn = {line.get_label(): line.get_ydata() for line in figure.axes[0].get_lines()}
    assert set(drawn) == {"maws (n=3)", "wsp (n=3)", "eqflops (n=3)"}


def test_gain_report_writes_its_files_and_refuses_what_it_cannot_pair(tmp_path: Path) -> None:
    files = gain_report(runs_table(), None, SPEC, tmp_path)
    assert [f.name for f in files] == ["gain.csv", "gain.md", "gain_top1.png"]
    md = (tmp_path / "gain.md").read_text()
    assert "| maws − wsp | 96 | 20 | 3 | 55.00 | 51.00 | +4.00 ± 2.00 |" in md
    with pytest.raises(ValueError, match="no column 'size'"):
        gain_table(runs_table(), SPEC.model_copy(update={"lines": ["size"]}))
    with pytest.raises(ValueError, match="no seed has both arms"):
        gain_report(runs_table(), None, SPEC.model_copy(update={"pairs": [("maws", "nothing")]}), tmp_path)
