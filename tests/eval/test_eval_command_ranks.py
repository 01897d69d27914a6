"""``maws-scale eval`` under a launcher (issue 30 item 7e): the feature pass is sharded over the ranks, rank 0
gathers the features and fits the probes, and the metrics are those of one process; the other ranks write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maws_scale.data.build import build_dataset
from maws_scale.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource

WORKER = Path(__file__).with_name("eval_command_worker.py")

pytestmark = pytest.mark.skipif(
    not Path(DEFAULT_DIR, "t10k-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"
)


def _eval(nproc: int, data: Path, out: Path) -> tuple[dict, str, list[str]]:
    """Run ``maws-scale eval random`` on ``nproc`` ranks; rank 0's metrics, rank 1's stdout, the MLflow run names."""
    from dist_support import run_torchrun

    out.mkdir()
    args = [
        "eval",
        "random",
        "--data",
        str(data),
        "--device",
        "cpu",
        "--json",
        "model.name=vit_micro_p4",
        "eval.max_train=101",  # odd: the ranks' strided slices differ in length
        "eval.few_shot=[1]",
        "eval.seeds=1",
        "data.num_workers=0",
        "tracking.enabled=true",
        f"output_dir={out / 'runs'}",
    ]
    run_torchrun(WORKER, nproc, [str(out), *args])
    metrics = json.loads((out / "rank0.txt").read_text())
    other = (out / "rank1.txt").read_text() if nproc > 1 else ""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return metrics, other, sorted(r.info.run_name for r in runs)


@pytest.mark.dist
def test_two_launched_ranks_give_one_process_metrics_and_rank1_writes_nothing(tmp_path):
    data = tmp_path / "fmnist"
    build_dataset(FashionMNISTSource(split="test", variant="single", limit=301), data, progress=False)
    one, _, one_runs = _eval(1, data, tmp_path / "one")
    two, rank1, two_runs = _eval(2, data, tmp_path / "two")
    assert one["eval/num_probe_train"] == 101
    timings = {k for k in one if k.endswith("_seconds")}  # wall time: the only thing allowed to differ
    assert timings and set(two) == set(one)
    exact = {k: v for k, v in one.items() if k not in timings}
    assert {k: two[k] for k in exact} == exact  # the same features in the same order, the same probes
    assert rank1 == ""  # no table, no JSON from rank 1
    assert len(two_runs) == 1 and two_runs == one_runs  # one MLflow run, rank 0's
