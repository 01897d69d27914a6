"""Sweeps: grid × list expansion, run ids, per-run configs and tags, validation before running, skip-finished."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from maws_scale.cli import main
from maws_scale.config import ConfigError, load_config
from maws_scale.experiments import sweep_run
from maws_scale.experiments.sweep import expand, load_sweep, load_sweep_spec, run_ids


def write_sweep(tmp_path: Path, base: Path, **changes) -> Path:
    spec = {
        "name": "toy",
        "base": str(base),
        "output_dir": str(tmp_path / "out"),
        "overrides": {"train.log_every": 5},
        "list": [
            {"label": "random", "wsp.init": "random"},
            {"label": "maws", "wsp.init": "mae", "stages.mae.train.steps": 50},
        ],
        "grid": {"seed": [0, 1, 2], "model.pool": ["cls", "gap"]},
        **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_times_list_expansion(tmp_path: Path, base_config: Path) -> None:
    points = expand(load_sweep_spec(write_sweep(tmp_path, base_config)))
    assert len(points) == 2 * 3 * 2
    assert points[0] == {"label": "random", "wsp.init": "random", "seed": 0, "model.pool": "cls"}
    assert points[1]["model.pool"] == "gap" and points[2]["seed"] == 1
    assert points[6]["label"] == "maws" and points[6]["stages.mae.train.steps"] == 50
    only_grid = expand(load_sweep_spec(write_sweep(tmp_path, base_config, list=[])))
    assert len(only_grid) == 6 and all(set(p) == {"seed", "model.pool"} for p in only_grid)
    with pytest.raises(ConfigError, match="list\\[0\\] and grid both set 'seed'"):
        expand(load_sweep_spec(write_sweep(tmp_path, base_config, list=[{"seed": 5}])))


def test_run_ids_are_readable_and_unique() -> None:
    assert run_ids([{"label": "maws", "wsp.init": "mae", "seed": 1, "model.pool": "gap"}], ["seed", "model.pool"]) == [
        "maws-seed1-poolgap"
    ]
    assert run_ids([{"wsp.init": "mae", "seed": 1}]) == ["initmae-seed1"]
    mae, wsp = "stages.mae.train.steps", "stages.wsp.train.steps"
    clash = run_ids([{mae: 10, wsp: 20}, {mae: 20, wsp: 10}])
    assert clash == [
        "stages_mae_train_steps10-stages_wsp_train_steps20",
        "stages_mae_train_steps20-stages_wsp_train_steps10",
    ]
    with pytest.raises(ConfigError, match="repeats a point"):
        run_ids([{"seed": 1}, {"seed": 1}])
    # entries sharing a label: the shortest keys that tell them apart join the id (seed, not the long path)
    same = [{"label": "m", "seed": s, "wsp.init_from": f"runs/x/m-seed{s}/mae/consolidated.pt"} for s in (0, 1)]
    assert run_ids([{**e, "pool": p} for e in same for p in ("gap", "max")], ["pool"]) == [
        "m-seed0-poolgap", "m-seed0-poolmax", "m-seed1-poolgap", "m-seed1-poolmax",
    ]  # fmt: skip


def test_each_point_gets_its_config_dir_tags_and_shared_store(tmp_path: Path, base_config: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, base_config))
    point = next(p for p in sweep.points if p.run_id == "maws-seed2-poolgap")
    cfg = point.config
    assert cfg.output_dir == str(tmp_path / "out" / "maws-seed2-poolgap")
    assert cfg.seed == 2 and cfg.model.pool == "gap" and cfg.wsp.init == "mae" and cfg.train.log_every == 5
    assert cfg.for_stage("mae").train.steps == 50 and cfg.for_stage("wsp").train.steps == 300
    assert cfg.tracking.uri == f"sqlite:///{(tmp_path / 'out' / 'mlflow.db').absolute()}"
    assert {p.config.tracking.uri for p in sweep.points} == {cfg.tracking.uri}
    assert cfg.tracking.experiment == "toy" and cfg.tracking.run_name == "maws-seed2-poolgap"
    assert cfg.tracking.tags == {
        "sweep": "toy", "sweep_run": "maws-seed2-poolgap", "label": "maws", "wsp.init": "mae",
        "stages.mae.train.steps": "50", "seed": "2", "model.pool": "gap", "config_hash": point.config_hash,
    }  # fmt: skip
    point.prepare(sweep.spec.name)
    assert load_config(point.config_path) == cfg  # the child process reads exactly this config


class Calls(list):
    call: object


@pytest.fixture
def fake_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace the child processes by a recorder; a run whose config mentions 'seed: 1' fails if FAIL is set."""
    calls = Calls()

    def call(argv, **kwargs):
        calls.append(argv)
        call.env = kwargs["env"]
        config = Path(argv[-1]).read_text()
        return 1 if os.environ.get("FAIL_SEED1") and "\nseed: 1\n" in config else 0

    monkeypatch.setattr(sweep_run.subprocess, "call", call)
    calls.call = call
    return calls


def test_rerunning_skips_finished_points(
    tmp_path: Path, fake_runs: list, monkeypatch: pytest.MonkeyPatch, base_config: Path
) -> None:
    path = write_sweep(tmp_path, base_config, grid={"seed": [0, 1]})
    monkeypatch.setenv("FAIL_SEED1", "1")
    assert main(["sweep", str(path)]) == 1  # the seed-1 points fail
    first = str(tmp_path / "out" / "random-seed0" / "config.yaml")
    assert len(fake_runs) == 4 and fake_runs[0][-2:] == ["pipeline", first]
    monkeypatch.delenv("FAIL_SEED1")
    fake_runs.clear()
    assert main(["sweep", str(path)]) == 0  # only the failed ones run again
    assert sorted(Path(a[-1]).parent.name for a in fake_runs) == ["maws-seed1", "random-seed1"]
    fake_runs.clear()
    assert main(["sweep", str(path)]) == 0 and fake_runs == []
    assert main(["sweep", str(path), "--force", "--only", "maws-*"]) == 0 and len(fake_runs) == 2
    fake_runs.clear()
    write_sweep(
        tmp_path, base_config, grid={"seed": [0, 1]}, overrides={"train.log_every": 7}
    )  # a changed config re-runs
    assert main(["sweep", str(path)]) == 0 and len(fake_runs) == 4


def test_a_bad_point_stops_the_sweep_before_anything_runs(
    tmp_path: Path, fake_runs: list, capsys, base_config: Path
) -> None:
    path = write_sweep(tmp_path, base_config, list=[{"label": "ok"}, {"label": "bad", "optim.lrr": 1.0}])
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "sweep point 'bad-seed0-poolcls'" in err and "optim.lrr" in err
    assert fake_runs == []
    assert main(["sweep", str(write_sweep(tmp_path, base_config, grid={"seed": []}))]) == 2


def test_dry_run_lists_points_and_runs_nothing(tmp_path: Path, fake_runs: list, capsys, base_config: Path) -> None:
    path = write_sweep(tmp_path, base_config)
    assert main(["sweep", str(path), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["points"]) == 12 and len(plan["to_run"]) == 12 and plan["launcher"] == "sequential"
    assert plan["points"][0]["status"] == "pending" and fake_runs == []


def test_slurm_sweep_submits_one_job_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, base_config: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"srun": "#!/bin/sh\n", "sbatch": f'#!/bin/sh\ncp "$1" {tmp_path}/array.sh\necho "job 99"\n'}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755 | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    path = write_sweep(tmp_path, base_config, grid={"seed": [0, 1]})
    argv = ["sweep", str(path), "--slurm", "--nodes", "1", "--gpus-per-node", "1", "--partition", "p"]
    assert main([*argv, "--dry-run"]) == 0
    assert "#SBATCH --array=0-3%4" in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out.split()
    assert out[:2] == ["random-seed0", "99_0"] and len(out) == 8
    assert "#SBATCH --array=0-3%4" in (tmp_path / "array.sh").read_text()
    # a world size the batch cannot be split over is refused before submitting
    assert main(["sweep", str(path), "--slurm", "--nodes", "1", "--gpus-per-node", "3"]) == 2


def test_a_train_point_runs_its_stage_then_evaluates_it(tmp_path: Path, fake_runs: list, base_config: Path) -> None:
    entries = [{"label": "mae_only", "command": "train", "stage": "mae"}, {"label": "maws"}]
    path = write_sweep(tmp_path, base_config, list=entries, grid={"seed": [0]})
    sweep = load_sweep(path)
    assert sweep.coordinates() == ["label", "stage", "seed"]
    mae_only = sweep.points[0]
    assert mae_only.command == "train" and mae_only.config.train.steps == 300  # stages.mae applied for `train`
    assert main(["sweep", str(path)]) == 0
    run_dir = tmp_path / "out" / "mae_only-seed0"
    assert [a[3:] for a in fake_runs] == [
        ["train", str(run_dir / "config.yaml")],
        ["eval", str(run_dir / "mae" / "consolidated.pt"), "--config", str(run_dir / "config.yaml")],
        ["pipeline", str(tmp_path / "out" / "maws-seed0" / "config.yaml")],
    ]
    with pytest.raises(ConfigError, match=r"list\[0\]\.command: must be one of"):
        load_sweep(write_sweep(tmp_path, base_config, list=[{"command": "bench"}]))


def test_runs_get_the_sweep_env(tmp_path: Path, fake_runs: Calls, base_config: Path) -> None:
    path = write_sweep(tmp_path, base_config, grid={"seed": [0]}, list=[], env={"OMP_NUM_THREADS": "1"})
    assert main(["sweep", str(path)]) == 0
    assert fake_runs.call.env["OMP_NUM_THREADS"] == "1" and fake_runs.call.env["PYTHONUNBUFFERED"] == "1"


def test_an_eval_point_evaluates_another_points_checkpoint(tmp_path: Path, fake_runs: Calls, base_config: Path) -> None:
    entries = [
        {"label": "maws"},
        {"label": "mae_only", "command": "eval", "checkpoint": "{output_dir}/maws-seed{seed}/mae/consolidated.pt"},
    ]
    path = write_sweep(tmp_path, base_config, list=entries, grid={"seed": [3]})
    sweep = load_sweep(path)
    assert sweep.coordinates() == ["label", "seed"] and [p.run_id for p in sweep.points] == [
        "maws-seed3",
        "mae_only-seed3",
    ]
    assert main(["sweep", str(path)]) == 0
    out = tmp_path / "out"
    weights, config = out / "maws-seed3" / "mae" / "consolidated.pt", out / "mae_only-seed3" / "config.yaml"
    assert [a[3:] for a in fake_runs][1] == ["eval", str(weights), "--config", str(config)]
    for bad in ({"command": "eval"}, {"checkpoint": "x.pt"}, {"command": "eval", "checkpoint": "{nope}.pt"}):
        with pytest.raises(ConfigError, match="checkpoint"):
            load_sweep(write_sweep(tmp_path, base_config, list=[bad]))


def test_a_swept_key_wins_over_the_base_configs_stage_sections(tmp_path: Path, base_config: Path) -> None:
    path = write_sweep(tmp_path, base_config, list=[], grid={"train.steps": [20, 40], "model.name": ["vit_tiny_p8"]})
    sweep = load_sweep(path)
    from maws_scale.experiments.sweep import prepare_points

    prepare_points(sweep, sweep.points)
    for point, steps in zip(sweep.points, (20, 40)):
        assert point.config.tracking.tags["train.steps"] == str(steps)
        reread = load_config(point.config_path)  # what the point's own process trains
        assert reread.for_stage("mae").train.steps == steps and reread.for_stage("wsp").train.steps == steps


def test_a_slurm_sweep_is_named_after_the_sweep_and_shares_nodes(
    tmp_path: Path, base_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path, base_config, grid={"seed": [0]}, list=[])
    argv = ["sweep", str(path), "--slurm", "--nodes", "1", "--gpus-per-node", "1", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --job-name=sweep-toy" in out and "--exclusive" not in out
    assert "#SBATCH --cpus-per-task=1" in out  # data.num_workers 0 in the base config, + 1


def test_a_point_reads_another_points_weights_and_can_skip_evaluation(
    tmp_path: Path, fake_runs: Calls, base_config: Path
) -> None:
    entries = [
        {"label": "mae", "command": "train", "stage": "mae", "evaluate": False},
        {
            "label": "from_mae",
            "command": "train",
            "stage": "wsp",
            "wsp.init_from": "{output_dir}/mae-seed{seed}/mae/consolidated.pt",
        },
    ]
    path = write_sweep(tmp_path, base_config, list=entries, grid={"seed": [4]})
    sweep = load_sweep(path)
    out = tmp_path / "out"
    weights = out / "mae-seed4" / "mae" / "consolidated.pt"
    assert sweep.coordinates() == ["label", "stage", "wsp.init_from", "seed"]  # 'evaluate' is no coordinate
    assert sweep.points[1].config.wsp.init_from == str(weights)
    assert main(["sweep", str(path)]) == 0
    from_mae = out / "from_mae-seed4"
    assert [a[3:] for a in fake_runs] == [  # the MAE point is not evaluated, the WSP point is
        ["train", str(out / "mae-seed4" / "config.yaml")],
        ["train", str(from_mae / "config.yaml")],
        ["eval", str(from_mae / "wsp" / "consolidated.pt"), "--config", str(from_mae / "config.yaml")],
    ]
    bad = [{**entries[1], "wsp.init_from": "{output_dir}/mae-{nope}.pt"}]
    with pytest.raises(ConfigError, match=r"wsp.init_from: cannot fill"):
        load_sweep(write_sweep(tmp_path, base_config, list=bad))
    with pytest.raises(ConfigError, match=r"list\[0\]\.evaluate: must be true or false"):
        load_sweep(write_sweep(tmp_path, base_config, list=[{"label": "x", "evaluate": "no"}]))


def test_the_run_summary_tells_skipped_from_unselected_points(
    tmp_path: Path, fake_runs: Calls, base_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path, base_config, grid={"seed": [0, 1]})
    assert main(["sweep", str(path), "--only", "*seed0"]) == 0
    assert "2 to run, 0 finished (skipped), 2 not selected (--only)" in capsys.readouterr().err
    assert main(["sweep", str(path), "--only", "*-seed*"]) == 0
    err = capsys.readouterr().err
    assert "2 to run, 2 finished (skipped);" in err and "not selected" not in err
