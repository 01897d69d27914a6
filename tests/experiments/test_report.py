"""Power-law fits (pure math) and `sweep report` on a small fake MLflow store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from maws_scale.cli import main
from maws_scale.experiments.powerlaw import fit_power_law
from maws_scale.experiments.report import build_report, encoder_params, markdown, summarize, training_flops
from maws_scale.experiments.sweep import load_sweep
from maws_scale.models.flops import step_flops


def test_fit_recovers_a_known_exponent_exactly() -> None:
    x = np.geomspace(1e15, 1e19, 7)
    law = fit_power_law(x, 42.0 * x**-0.076)
    assert law.b == pytest.approx(-0.076, abs=1e-9) and law.a == pytest.approx(42.0, rel=1e-6)
    assert law.r2 == pytest.approx(1.0) and law.n == 7
    assert "^-0.0760" in law.describe("C", "L")


def test_fit_recovers_the_exponent_under_noise() -> None:
    rng = np.random.default_rng(0)
    x = np.geomspace(1e6, 1e9, 40)
    y = 3.0 * x**0.34 * np.exp(rng.normal(0, 0.05, x.size))
    law = fit_power_law(x, y)
    assert law.b == pytest.approx(0.34, abs=0.02) and 0.95 < law.r2 < 1.0


def test_fit_refuses_what_has_no_log() -> None:
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2, 3], [1, -1, 2])
    with pytest.raises(ValueError, match="2 distinct"):
        fit_power_law([5, 5, 5], [1, 2, 3])


SIZES = ["vit_micro_p4", "vit_tiny_p4", "vit_tiny_p8", "vit_small_p8"]


@pytest.fixture(scope="module")
def sweep_with_store(tmp_path_factory: pytest.TempPathFactory, base_config: Path):
    """A 4-size × 2-seed sweep whose runs were 'logged' with final WSP loss = 30 · params^-0.3 (× seed jitter)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("report")
    spec = {
        "name": "scaling",
        "base": str(base_config),
        "output_dir": str(tmp / "out"),
        "list": [{"model.name": s} for s in SIZES],
        "grid": {"seed": [0, 1]},
        "report": {
            "metrics": ["wsp/loss", "eval/linear_top1"],
            "fits": [{"x": "params", "y": "wsp/loss"}, {"x": "compute", "y": "wsp/loss"}],
            "curves": ["wsp/loss"],
            "bars": ["eval/linear_top1"],
        },
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    experiment = client.create_experiment("scaling")
    for point in sweep.points:
        cfg = point.config
        params = encoder_params(cfg)
        jitter = 1.0 + (0.01 if cfg.seed else -0.01)
        final = 30.0 * params**-0.3 * jitter
        for stage in ("mae", "wsp"):
            tags = {**cfg.tracking.tags, "stage": stage}
            run = client.create_run(experiment, run_name=f"{point.run_id}-{stage}", tags=tags)
            metrics = [Metric("loss", final * (1 + 1.0 / step), 0, step) for step in range(1, 6)]
            metrics.append(Metric("loss", final, 0, 6))
            if stage == "wsp":
                top1 = 70.0 + 5 * SIZES.index(cfg.model.name) + cfg.seed
                metrics.append(Metric("eval/linear_top1", top1, 0, 6))
            client.log_batch(run.info.run_id, metrics=metrics)
            client.set_terminated(run.info.run_id)
    crashed = client.create_run(experiment, tags={**sweep.points[0].config.tracking.tags, "stage": "wsp"})
    client.log_metric(crashed.info.run_id, "loss", 1e9)  # never finished: must not enter the table
    return sweep


def test_report_table_groups_seeds_and_fits_the_exponent(sweep_with_store, tmp_path: Path) -> None:
    report = build_report(sweep_with_store, tmp_path)
    assert len(report.runs) == 8 and report.runs["wsp/loss"].max() < 10.0  # the crashed run's 1e9 is left out
    assert list(report.summary["n"]) == [2, 2, 2, 2]
    micro = report.summary.iloc[0]
    assert micro["model.name"] == "vit_micro_p4"
    assert micro["eval/linear_top1 mean"] == pytest.approx(70.5) and micro["eval/linear_top1 std"] == pytest.approx(
        np.std([70, 71], ddof=1)
    )
    by_params = next(f for f in report.fits if f["x"] == "params")
    assert by_params["b"] == pytest.approx(-0.3, abs=1e-3)
    md = (tmp_path / "summary.md").read_text()
    assert "| model.name | n | wsp/loss | eval/linear_top1 |" in md and "70.50 ± 0.71" in md
    for name in ("runs.csv", "summary.csv", "fits.json", "fit_wsp_loss_vs_params.png", "curve_wsp_loss.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "bar_eval_linear_top1.png").read_bytes()[:4] == b"\x89PNG"
    tail = report.runs["wsp/loss last10"]  # the mean of the last 10 logged values
    assert np.allclose(tail, report.runs["wsp/loss"] * (6 + sum(1 / s for s in range(1, 6))) / 6)


def test_derived_compute_counts_both_stages(sweep_with_store) -> None:
    cfg = sweep_with_store.points[0].config  # base: MAE 300 steps, WSP 300 steps, global batch 64
    expected = 300 * 64 * (step_flops(cfg.model.name, "mae", img_size=cfg.img_size) + step_flops(
        cfg.model.name, "wsp", img_size=cfg.img_size, num_classes=0, pool="cls"))  # fmt: skip
    assert training_flops(cfg, ["mae", "wsp"]) == pytest.approx(expected)
    assert training_flops(cfg, ["wsp"]) < expected


def test_sweep_report_command(sweep_with_store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "report", str(sweep_with_store.path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fit [all]: wsp/loss ≈" in out and "params^-0.300" in out
    assert (tmp_path / "summary.md").is_file()


def test_report_scaling_fits_with_irreducible_term_two_terms_and_frontier(
    tmp_path: Path, base_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs 'logged' with L = 1.5 + 40/N^0.4 + 60/D^0.3 (N encoder params, D samples): the report recovers it."""
    from mlflow.tracking import MlflowClient

    from maws_scale.experiments.report import training_samples

    spec = {
        "name": "scaling",
        "base": str(base_config),
        "output_dir": str(tmp_path / "out"),
        "command": "train",
        "overrides": {"stage": "wsp", "wsp.init": "random", "model.depth": 2, "model.heads": 2},
        "grid": {"model.width": [16, 24, 32, 48, 64], "train.steps": [40, 80, 160, 320, 640]},
        "report": {
            "metrics": ["wsp/loss"],
            "fits": [
                {"kind": "saturating", "x": "compute", "y": "wsp/loss"},
                {"kind": "two_term", "x": "params", "x2": "samples", "y": "wsp/loss"},
                {"kind": "frontier", "x": "compute", "x2": "params", "y": "wsp/loss"},
            ],
        },
    }
    path = tmp_path / "scaling.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    experiment = client.create_experiment("scaling")
    for point in sweep.points:
        cfg = point.config
        n, d = encoder_params(cfg), training_samples(cfg, ["wsp"])
        run = client.create_run(experiment, tags={**cfg.tracking.tags, "stage": "wsp"})
        client.log_metric(run.info.run_id, "loss", 1.5 + 40.0 * n**-0.4 + 60.0 * d**-0.3, step=1)
        client.set_terminated(run.info.run_id)
    report = build_report(sweep, tmp_path / "report")
    fits = {f["kind"]: f for f in report.fits}
    two = fits["two_term"]
    assert two["alpha"] == pytest.approx(0.4, abs=0.03) and two["beta"] == pytest.approx(0.3, abs=0.03)
    assert two["E"] == pytest.approx(1.5, abs=0.1)
    saturating = fits["saturating"]
    assert 0 < saturating["E"] < 2.0 and saturating["alpha_ci"][0] <= saturating["alpha"] <= saturating["alpha_ci"][1]
    frontier = fits["frontier"]  # this grid's bands all pick an edge size: no exponent, said so (issue 25)
    assert len(frontier["bands"]) >= 2 and not any(b["interior"] for b in frontier["bands"])
    assert frontier["law"] is None and "no N_opt(C) exponent" in frontier["text"]
    for name in ("fit_wsp_loss_vs_compute.png", "fit_wsp_loss_vs_params_and_samples.png", "frontier_wsp_loss.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG", name
    assert "samples" in report.runs.columns and report.runs["samples"].min() == 40 * 64
    assert main(["sweep", "report", str(path), "--out", str(tmp_path / "r2")]) == 0
    console = capsys.readouterr()
    assert "E + A·compute^-α" in console.out
    frontier_line = next(line for line in console.out.splitlines() if "frontier" in line)
    assert "no N_opt(C) exponent" in frontier_line and "C^" not in frontier_line and "R²" not in frontier_line
    assert "no interior minimum" in console.err  # each band's warning on the console, not only in fits.json


def test_a_fit_kind_needing_two_variables_names_x2(tmp_path: Path, base_config: Path) -> None:
    from maws_scale.config import ConfigError

    spec = {"name": "s", "base": str(base_config), "report": {"fits": [{"kind": "two_term", "x": "params", "y": "l"}]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="needs x2"):
        load_sweep(path)


def test_an_arm_started_from_another_points_mae_weights_carries_their_flops(tmp_path: Path, base_config: Path) -> None:
    from maws_scale.experiments.report import init_flops

    entries = [
        {"label": "mae", "command": "train", "stage": "mae", "evaluate": False, "stages.mae.train.steps": 40},
        {
            "label": "maws",
            "command": "train",
            "stage": "wsp",
            "wsp.init_from": "{output_dir}/mae/mae/consolidated.pt",
        },
        {"label": "elsewhere", "command": "train", "stage": "wsp", "wsp.init_from": str(tmp_path / "other.pt")},
        {"label": "random", "command": "train", "stage": "wsp", "wsp.init": "random"},
    ]
    spec = {"name": "gain", "base": str(base_config), "output_dir": str(tmp_path / "out"), "list": entries}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep(tmp_path / "sweep.yaml")
    mae, maws, elsewhere, random = (p.config for p in sweep.points)
    expected = 40 * 64 * step_flops(mae.model.name, "mae", img_size=mae.img_size)  # 40 MAE steps × batch 64
    assert init_flops(maws, sweep) == pytest.approx(expected)
    assert np.isnan(init_flops(elsewhere, sweep))  # weights the sweep did not make: unknown cost, not 0
    assert init_flops(random, sweep) == 0.0 and init_flops(mae, sweep) == 0.0


def test_a_rerun_points_newest_values_win(tmp_path: Path, base_config: Path) -> None:
    from types import SimpleNamespace

    from maws_scale.experiments.report import gather

    spec = {"name": "rerun", "base": str(base_config), "output_dir": str(tmp_path / "out"), "grid": {"seed": [0]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep(tmp_path / "sweep.yaml")
    tags = {**sweep.points[0].config.tracking.tags, "stage": "wsp"}

    def run(start: int, top1: float) -> SimpleNamespace:
        info = SimpleNamespace(status="FINISHED", start_time=start, run_id=f"r{start}")
        return SimpleNamespace(info=info, data=SimpleNamespace(tags=tags, metrics={"eval/linear_top1": top1}))

    for order in ([run(2, 60.0), run(1, 50.0)], [run(1, 50.0), run(2, 60.0)]):  # MLflow lists newest first
        assert gather(sweep, order)["eval/linear_top1"].tolist() == [60.0]


def test_a_single_run_has_no_spread_in_the_table() -> None:
    """Issue 25: summary.md printed `± 0.00` for n = 1."""
    runs = pd.DataFrame({"size": ["a", "b", "b"], "loss": [1.0, 2.0, 2.2]})
    md = markdown(summarize(runs, ["size"], ["loss"]), ["size"], ["loss"])
    assert "| a | 1 | 1.00 |" in md and "| b | 2 | 2.10 ± 0.14 |" in md
