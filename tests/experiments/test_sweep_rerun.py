"""Sweeps after a change (issue 25): old runs kept, new folders, --force retrains, a lock, Ctrl-C, CLI overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from maws_scale.cli import main
from maws_scale.config import load_config
from maws_scale.experiments import sweep_run
from maws_scale.experiments.sweep import load_sweep


def write_sweep(tmp_path: Path, base: Path, **changes) -> Path:
    spec = {
        "name": "toy",
        "base": str(base),
        "output_dir": str(tmp_path / "out"),
        "overrides": {"train.log_every": 5},
        "grid": {"seed": [0, 1]},
        **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Child processes replaced by a recorder that leaves a 'result' file in the point's folder."""
    calls: list[list[str]] = []

    def call(argv, **kwargs):
        calls.append(argv)
        config = Path(argv[-1])
        (config.parent / "result.txt").write_text(config.read_text())
        kwargs["stdout"].write("trained\n")
        return 0

    monkeypatch.setattr(sweep_run.subprocess, "call", call)
    return calls


def test_a_changed_sweep_reruns_in_a_fresh_folder_and_keeps_the_old_results(
    tmp_path: Path, runs: list, base_config: Path, capsys
) -> None:
    path = write_sweep(tmp_path, base_config)
    assert main(["sweep", str(path)]) == 0 and len(runs) == 2
    out = tmp_path / "out"
    old_config = (out / "seed0" / "config.yaml").read_text()
    old_hash = json.loads((out / "seed0" / "sweep_done.json").read_text())["config_hash"]
    runs.clear()
    write_sweep(tmp_path, base_config, overrides={"train.log_every": 5, "optim.lr": 1e-4})  # every point changes
    assert main(["sweep", str(path), "--only", "seed0"]) == 0
    assert [Path(a[-1]).parent.name for a in runs] == ["seed0"]
    kept = out / "_previous" / f"seed0-{old_hash}"
    assert (kept / "config.yaml").read_text() == old_config and (kept / "result.txt").is_file()
    assert "trained" in (kept / "run.log").read_text()
    assert load_config(out / "seed0" / "config.yaml").optim.lr == 1e-4
    assert "kept in" in capsys.readouterr().err
    # the point left out by --only is untouched: its old config.yaml is not rewritten
    assert load_config(out / "seed1" / "config.yaml").optim.lr != 1e-4
    sweep = load_sweep(path)
    assert [p.status() for p in sweep.points] == ["done", "changed"]


def test_force_retrains_a_finished_point_from_scratch(tmp_path: Path, runs: list, base_config: Path) -> None:
    path = write_sweep(tmp_path, base_config, grid={"seed": [0]})
    assert main(["sweep", str(path)]) == 0
    (tmp_path / "out" / "seed0" / "mae").mkdir()  # a finished stage a resumed run would skip
    assert main(["sweep", str(path), "--force"]) == 0 and len(runs) == 2
    assert not (tmp_path / "out" / "seed0" / "mae").exists()
    assert len(list((tmp_path / "out" / "_previous").iterdir())) == 1


def test_a_second_sweep_on_the_same_folder_is_refused(tmp_path: Path, runs: list, base_config: Path, capsys) -> None:
    path = write_sweep(tmp_path, base_config)
    with sweep_run.SweepLock(tmp_path / "out"):
        assert main(["sweep", str(path)]) == 1
    err = capsys.readouterr().err
    assert "another sweep is running on this folder" in err and f"pid {os.getpid()}" in err and runs == []
    assert main(["sweep", str(path)]) == 0  # released


def test_ctrl_c_stops_the_sweep_with_one_line(
    tmp_path: Path, base_config: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def interrupted(argv, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_run.subprocess, "call", interrupted)
    try:
        code = main(["sweep", str(write_sweep(tmp_path, base_config))])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the sweep as a KeyboardInterrupt (a traceback)")
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_dry_run_writes_nothing_and_lists_no_unwritten_config(tmp_path: Path, base_config: Path, capsys) -> None:
    path = write_sweep(tmp_path, base_config)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "config.yaml" not in out and not (tmp_path / "out").exists()
    line = next(line for line in out.splitlines() if line.startswith("maws-scale pipeline"))
    assert str(base_config) in line and "seed=0" in line and f"output_dir={tmp_path / 'out' / 'seed0'}" in line


def test_sweep_overrides_apply_to_every_point(tmp_path: Path, base_config: Path, capsys) -> None:
    path = write_sweep(tmp_path, base_config)
    assert main(["sweep", str(path), "--dry-run", "--json", "model.depth=1"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert all("model.depth=1" in p["argv"] for p in plan["points"])
    assert all(p.config.model.depth == 1 for p in load_sweep(path, ["model.depth=1"]).points)
    assert main(["sweep", str(path), "seed=3"]) == 2  # a swept key is changed in the YAML
    assert "'seed' is swept" in capsys.readouterr().err
    assert main(["sweep", str(path), "other.yaml"]) == 2
    assert "sweep report other.yaml" in capsys.readouterr().err


def test_the_report_flags_results_of_an_earlier_config(tmp_path: Path, base_config: Path) -> None:
    from types import SimpleNamespace

    from maws_scale.experiments.report import gather

    path = write_sweep(tmp_path, base_config)
    sweep = load_sweep(path)

    def run(point, digest: str, loss: float, start: int) -> SimpleNamespace:
        tags = {"sweep_run": point.run_id, "seed": str(point.coords["seed"]), "config_hash": digest}
        info = SimpleNamespace(status="FINISHED", start_time=start, run_id=f"r{start}")
        return SimpleNamespace(info=info, data=SimpleNamespace(tags=tags, metrics={"loss": loss}))

    first, second = sweep.points
    fresh = [run(first, first.config_hash, 1.0, 1), run(second, second.config_hash, 2.0, 2)]
    table = gather(sweep, fresh)
    assert list(table["stale"]) == [False, False]
    write_sweep(tmp_path, base_config, overrides={"train.log_every": 7})
    changed = load_sweep(path)
    table = gather(changed, [*fresh, run(changed.points[0], changed.points[0].config_hash, 0.5, 3)])
    assert list(table["stale"]) == [False, True] and list(table["loss"]) == [0.5, 2.0]
    # a newer run of an older config never hides the current one
    table = gather(
        changed, [run(changed.points[0], changed.points[0].config_hash, 0.5, 3), run(first, first.config_hash, 9.0, 4)]
    )
    assert list(table["loss"]) == [0.5]


def test_the_documented_scaling_sweep_on_8_gpus_fits_with_the_micro_batch_the_error_suggests(capsys) -> None:
    """Issue 25: docs/jobs.md's `sweep configs/sweeps/scaling.yaml --slurm --nodes 1 --gpus-per-node 8` exited 2."""
    scaling = str(Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "scaling.yaml")
    argv = ["sweep", scaling, "--slurm", "--nodes", "1", "--gpus-per-node", "8", "--partition", "p", "--dry-run"]
    assert main(argv) == 2
    assert "e.g. train.micro_batch=4" in capsys.readouterr().err  # the way out, named
    assert main([*argv, "train.micro_batch=4"]) == 0


def test_the_sweep_run_carries_tags_its_yaml_and_nests_the_report(
    tmp_path: Path, runs: list, base_config: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from maws_scale.experiments.report import Report, log_report

    path = write_sweep(tmp_path, base_config)
    assert main(["sweep", str(path)]) == 0
    sweep = load_sweep(path)
    client = MlflowClient(sweep.tracking_uri)
    experiment = client.get_experiment_by_name("toy").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.sweep_parent = 'toy'")
    tags = parent.data.tags
    assert tags["sweep.points"] == "2" and tags["sweep.coordinates"] == "seed" and tags["mlflow.source.name"]
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "sweep")] == ["sweep/sweep.yaml"]
    report_id = log_report(sweep, Report(runs=None, summary=None))
    assert client.get_run(report_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
