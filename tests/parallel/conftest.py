"""The tensor-parallel scenarios of tests/parallel/tp_worker.py, run in two torchrun launches (2 and 4 ranks) for
the whole session instead of one launch per test: start-up (imports, process groups) is paid twice, and each test
reads the output of its own scenario."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from dist_support import run_torchrun

WORKER = Path(__file__).with_name("tp_worker.py")

MAE_DROP_PATH = ["equivalence", "--stage", "mae", "--drop-path", "0.1"]
WSP_DROP_PATH = ["equivalence", "--stage", "wsp", "--drop-path", "0.1"]
# scenario id -> (ranks, worker arguments); "{dir}" becomes a directory of the scenario's own
SCENARIOS: dict[str, tuple[int, list[str]]] = {
    "equivalence-mae": (2, MAE_DROP_PATH),
    "equivalence-mae-replicated-decoder": (2, [*MAE_DROP_PATH, "--replicate-decoder"]),
    "equivalence-wsp-activation-checkpointing": (2, [*WSP_DROP_PATH, "--checkpointing"]),
    "equivalence-mae-compiled-blocks": (2, [*MAE_DROP_PATH, "--compile"]),
    "equivalence-wsp-compiled-blocks-checkpointing": (2, [*WSP_DROP_PATH, "--compile", "--checkpointing"]),
    "meta_init": (2, ["meta_init"]),
    "compat": (2, ["compat"]),
    "zero3-mae": (4, ["zero3", "--stage", "mae", "--tp", "2", "--dir", "{dir}"]),
    "zero3-wsp": (4, ["zero3", "--stage", "wsp", "--tp", "2", "--dir", "{dir}"]),
    "cross_entropy": (4, ["cross_entropy"]),
    "checkpoints": (4, ["checkpoints", "--dir", "{dir}"]),
}  # fmt: skip


class ScenarioRun:
    """What one scenario printed (rank 0) and the directory it wrote to."""

    def __init__(self, output: str, directory: Path) -> None:
        self.output = output
        self.dir = directory


@pytest.fixture(scope="session")
def tp_scenario(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ScenarioRun]:
    """``tp_scenario(id)``: the result of scenario ``id``; the first call for a rank count launches all of them."""
    root = tmp_path_factory.mktemp("tp-scenarios")
    launched: dict[int, dict[str, ScenarioRun] | AssertionError] = {}

    def launch(nproc: int) -> dict[str, ScenarioRun] | AssertionError:
        names = [name for name, (ranks, _) in SCENARIOS.items() if ranks == nproc]
        args: list[str] = []
        for name in names:
            directory = root / name
            directory.mkdir()
            args += [*(a.replace("{dir}", str(directory)) for a in SCENARIOS[name][1]), "+"]
        try:
            result = run_torchrun(WORKER, nproc, args[:-1], timeout=600)
        except AssertionError as err:  # every test of this launch fails with the workers' output
            return err
        parts = re.split(r"^=== (\d+)$", result.stdout, flags=re.MULTILINE)
        outputs = {int(index): text for index, text in zip(parts[1::2], parts[2::2])}
        return {name: ScenarioRun(outputs.get(i, ""), root / name) for i, name in enumerate(names)}

    def get(name: str) -> ScenarioRun:
        nproc = SCENARIOS[name][0]
        if nproc not in launched:
            launched[nproc] = launch(nproc)
        runs = launched[nproc]
        if isinstance(runs, AssertionError):
            raise runs
        run = runs[name]
        scenario = SCENARIOS[name][1][0]
        assert f"{scenario} OK" in run.output, run.output
        return run

    return get
