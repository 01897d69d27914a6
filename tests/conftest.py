"""Suite-wide fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# The suite's DeepSpeed runs are CPU runs under gloo, also on a GPU machine (the `gpu` tests use no DeepSpeed):
# DeepSpeed picks its accelerator once per process, so say it before anything imports it.
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Undo every change a test makes to os.environ (code under test exports RANK/WORLD_SIZE/... for launchers)."""
    saved = dict(os.environ)
    yield
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def timm_naming():
    """timm / MAE state-dict naming (tests/timm_naming.py): (literal vit_b16 list, timm_vit_keys, mae_keys)."""
    from timm_naming import TIMM_VIT_B16, mae_keys, timm_vit_keys  # here: the skip-rule tests copy this file alone

    return TIMM_VIT_B16, timm_vit_keys, mae_keys


def cuda_present() -> bool:
    """CUDA is usable here (``MAWS_TEST_ASSUME_CUDA=0|1`` overrides, to test these rules on any machine)."""
    forced = os.environ.get("MAWS_TEST_ASSUME_CUDA")
    if forced in ("0", "1"):
        return forced == "1"
    import torch

    return torch.cuda.is_available()


# The only skips a run may have: a `gpu` test without CUDA, a `cpu_only` test with CUDA. Everything else must run.
ALLOWED_SKIPS = {"gpu": (False, "needs a CUDA GPU"), "cpu_only": (True, "exercises the CUDA-less path")}


def allowed_skip(item: pytest.Item) -> str | None:
    """The marker that lets ``item`` be skipped on this machine, if any."""
    cuda = cuda_present()
    for marker, (skip_when_cuda, _) in ALLOWED_SKIPS.items():
        if item.get_closest_marker(marker) and cuda == skip_when_cuda:
            return marker
    return None


# `make test-fast` (-m "not dist and not slow") leaves these out: single-process tests of 10 s or more in one run of
# --durations=30 over tests/parallel, tests/perf, tests/models, tests/launch/test_launch.py and test_slurm.py, and of
# tests/train/test_golden_curve.py, test_loop_guard.py, test_write_errors.py (2026-12-07, the 2-core machine under load
# 20-30, where a test runs ~5x slower than on a quiet one); then every unmarked test of 4.5 s or more in a whole-suite
# run under `make test` (-n 2, quiet machine, 2026-12-07; seconds in the comments).
SLOW_TESTS = (
    "tests/perf/test_bench.py::test_bench_cli_mae_with_baseline_and_mlflow",  # 95 s
    "tests/perf/test_bench.py::test_bench_wsp_profile_trace",  # 46 s
    "tests/launch/test_launch.py::test_json_dry_run_is_the_only_thing_on_stdout",  # 26 s
    "tests/launch/test_launch.py::test_launch_sh_wraps_the_launcher",  # 22 s
    "tests/perf/test_release.py::test_releasing_the_engine_frees_the_optimizer_and_the_model",  # 11 + 8 s
    "tests/parallel/test_step_guard.py::test_the_norm_is_torchs_total_norm_and_a_non_finite_gradient_skips_the_step",
    "tests/perf/test_baseline.py::test_fused_adamw_on_cpu_under_every_zero_stage",  # 10 + 4 + 4 + 3 s
    "tests/train/test_golden_curve.py::test_demo_losses_match_the_golden_curves",  # 80 + 10 s
    "tests/train/test_write_errors.py::test_a_checkpoint_write_failure_is_one_line_with_the_path_and_exit_1",  # 34 s
    "tests/perf/test_gpu_standin.py::test_gpu_check_runs_end_to_end_on_a_cpu_standin_of_the_gpu_machine",  # 74 s warm
    "tests/test_docs_commands.py::test_every_documented_command_runs",  # 191 s over 8 docs
    "tests/train/test_fp8_training.py::test_fp8_loss_curve_follows_bf16",  # 27 + 15 s
    "tests/train/test_fp8_training.py::test_fp8_composes_with_compiled_blocks_and_zero3",  # 7 s
    "tests/kernels/test_interpreter.py::test_kernels_match_references",  # 54 s over 4 modules
    "tests/kernels/test_traffic.py::test_benchmark_refuses_without_a_gpu_and_smoke_runs",  # 10 s
    "tests/data/test_partition.py::test_k_parts_with_a_killed_task_resumed_equal_one_build",  # 20 s
    "tests/parallel/test_compile.py::test_compiled_model_matches_eager_losses_and_gradients",  # 8 + 6 s
    "tests/parallel/test_compile.py::test_compiled_training_matches_eager_under_zero",  # 5-7 s each
    "tests/parallel/test_bf16_checkpoint.py::test_bf16_zero1_consolidates_the_fp32_masters",  # 9 s
    "tests/parallel/test_distributed.py::test_the_cli_tears_down_the_process_groups_its_command_made",  # 8 s
    "tests/parallel/test_ds_dtypes.py::test_the_engine_accumulates_and_reduces_bf16_gradients_in_fp32",  # 7 s
    "tests/train/test_pipeline.py::test_pipeline_floors_puts_the_demo_beside_its_floors_from_one_command",  # 9 s
    "tests/train/test_pipeline.py::test_pipeline_runs_both_stages_tracks_them_and_restarts_without_rerunning",  # 6 s
    "tests/train/test_clip_stages.py::test_pipeline_runs_mae_wsp_lit_and_reports_zero_shot",  # 5 s
    "tests/train/test_loop_guard.py::test_a_dead_tracking_server_does_not_stop_training",  # 6 s
    "tests/track/test_mlflow.py::test_a_dead_server_warns_once_and_never_blocks",  # 7 s
    "tests/track/test_mlflow.py::test_a_hanging_server_is_warned_about_from_the_training_thread_and_costs_no_long_flush",
    "tests/experiments/test_report.py::test_report_scaling_fits_with_irreducible_term_two_terms_and_frontier",  # 7 s
)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs ``-n 3``) each worker takes its share of the cores (at least one) for
    torch's threads: N workers at torch's default of one thread per core would oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # the worker's child processes too
        torch.set_num_threads(threads)


# Tests that run several times longer than a typical slow one, with the weight they count for. The GPU check's stand-in
# runs ~140 s as one process at a time: at 50 it started after 60 % of the run (328 s, 357 s) and the run ended on it,
# 35-50 s after the other workers; scheduled first, beside the heaviest launched files, it took 204 s and the run got
# slower (fresh clones, 3 workers, 2026-12-07). At 150 it follows the ten heaviest files: `make test` took 8:31 and 8:32
# in all against 9:16 and 10:03 at 50 (same install, 2026-12-08).
HEAVY_TESTS = {
    "tests/perf/test_gpu_standin.py::test_gpu_check_runs_end_to_end_on_a_cpu_standin_of_the_gpu_machine": 150,
}


def weight(item: pytest.Item) -> int:
    """How long ``item`` runs, roughly: a multi-process or slow test (seconds to a minute) counts for fifty of the
    others (a fraction of a second each); :data:`HEAVY_TESTS` for what they say."""
    if item.nodeid in HEAVY_TESTS:
        return HEAVY_TESTS[item.nodeid]
    return 50 if item.get_closest_marker("dist") or item.get_closest_marker("slow") else 1


def heaviest_files_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with whole files ordered by their summed :func:`weight`, heaviest first (ties and each file's own
    order kept). `make test` hands whole files to its workers in this order (``--dist loadfile
    --no-loadscope-reorder``), so that the run does not end on one long file while the other worker idles."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    ordered = sorted(files.values(), key=lambda group: -sum(weight(item) for item in group))
    return [item for group in ordered for item in group]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark :data:`SLOW_TESTS` slow; skip `gpu` tests where CUDA is absent, `cpu_only` tests where it is present;
    put the heaviest files first."""
    for item in items:
        if item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        marker = allowed_skip(item)
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"[{marker}] {ALLOWED_SKIPS[marker][1]}"))
    items[:] = heaviest_files_first(items)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI (CI=true) a skip is a failure unless the test carries a marker that allows it on this machine (see
    ALLOWED_SKIPS): `make test` installs every optional package and Fashion-MNIST, so any other skip means a broken
    install step that would otherwise pass."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    if allowed_skip(item) is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where everything but a GPU must be present: {reason}"


@pytest.fixture(scope="session")
def world():
    """This pytest process as a one-rank gloo world (DeepSpeed initialised, shm build skipped); idempotent."""
    from maws_scale.parallel.distributed import init_distributed

    return init_distributed("gloo")
