"""The CPU compatibility layer for megatron-core (maws_scale.parallel.patches)."""

from __future__ import annotations

import warnings

import pytest
import torch

from maws_scale.parallel import patches

cpu_only = pytest.mark.cpu_only  # the layer is inactive where CUDA exists


@pytest.fixture
def clean():
    patches.uninstall_megatron_cpu()
    yield
    patches.uninstall_megatron_cpu()


@cpu_only
def test_without_the_layer_megatron_cuda_calls_fail(clean):
    with pytest.raises((RuntimeError, AssertionError)):
        torch.cuda.current_device()


@cpu_only
def test_install_maps_cuda_calls_to_cpu_and_uninstall_restores(clean):
    originals = (torch.cuda.current_device, torch.cuda.get_rng_state, torch.cuda.set_rng_state, torch.cuda.manual_seed)
    assert patches.install_megatron_cpu() is True
    assert patches.install_megatron_cpu() is True  # idempotent
    assert patches.megatron_cpu_installed()
    assert torch.zeros(2, device=torch.cuda.current_device()).device.type == "cpu"
    torch.cuda.manual_seed(7)
    state = torch.cuda.get_rng_state()
    first = torch.rand(4)
    torch.cuda.set_rng_state(state)
    assert torch.equal(torch.rand(4), first)
    torch.manual_seed(7)  # cuda.manual_seed seeded the CPU generator (torch.manual_seed does not recurse into it)
    assert torch.equal(torch.rand(4), first)
    patches.uninstall_megatron_cpu()
    assert not patches.megatron_cpu_installed()
    restored = (torch.cuda.current_device, torch.cuda.get_rng_state, torch.cuda.set_rng_state, torch.cuda.manual_seed)
    assert restored == originals


@cpu_only
def test_rng_tracker_forks_the_cpu_stream(clean):
    """megatron's RNG tracker, single process: a fork draws from its own stream and restores the default one."""
    from megatron.core import tensor_parallel as mtp

    patches.install_megatron_cpu()
    mtp.model_parallel_cuda_manual_seed(5, tp_rank=0, ep_rank=0, etp_rank=0, force_reset_rng=True)
    tracker = mtp.get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        forked = torch.rand(8)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(torch.rand(8), forked)
    mtp.model_parallel_cuda_manual_seed(5, tp_rank=0, ep_rank=0, etp_rank=0, force_reset_rng=True)
    with mtp.get_cuda_rng_tracker().fork():  # the same seed gives the same forked stream
        again = torch.rand(8)
    assert torch.equal(again, forked)


def test_inactive_when_cuda_is_present(clean, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    current = torch.cuda.current_device
    assert patches.install_megatron_cpu() is False
    assert not patches.megatron_cpu_installed()
    assert torch.cuda.current_device is current


@pytest.mark.dist
def test_gather_output_and_tp_rng_on_two_cpu_ranks(tp_scenario):
    """ColumnParallelLinear(gather_output=True) equals nn.Linear forward and backward; the model-parallel RNG stream
    differs across TP ranks while the default stream agrees (workers are CPU processes, GPUs hidden, everywhere)."""
    tp_scenario("compat")


@pytest.mark.parametrize("pin", patches.PINNED, ids=lambda pin: pin.target)
def test_every_patch_relies_on_the_code_it_was_written_against(pin):
    """An upgraded dependency (or any change of the code a patch relies on) fails here, naming the function: re-read
    it, check the patch still holds, then update the pin (parallel/patches.py) and constraints.txt."""
    assert pin.problem() is None, pin.problem()


def test_a_changed_source_or_version_is_reported(monkeypatch):
    pin = patches.PINNED[0]
    assert "changed" in patches.Pinned(pin.patch, pin.package, pin.version, pin.target, "0" * 16).problem()
    other = patches.Pinned(pin.patch, pin.package, "0.0.1", pin.target, pin.sha256).problem()
    assert "written against 0.0.1" in other


def test_the_pinned_versions_are_the_ones_constraints_txt_pins():
    from pathlib import Path

    constraints = (Path(__file__).parents[2] / "constraints.txt").read_text().split()
    for pin in patches.PINNED:
        assert f"{pin.package}=={pin.version}" in constraints, pin.package


def test_applying_a_patch_over_changed_code_warns_once(monkeypatch):
    """A run on another DeepSpeed than the pinned one says so when the step guard is installed (once per process)."""
    pin = next(p for p in patches.PINNED if p.patch == patches.STEP)
    changed = patches.Pinned(pin.patch, pin.package, "0.0.1", pin.target, pin.sha256)
    monkeypatch.setattr(patches, "PINNED", (changed,))
    monkeypatch.setattr(patches, "_checked", set())
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.warns(RuntimeWarning, match=r"step guard .*written against 0.0.1"):
        patches.route_optimizer_step(optimizer, lambda *a, **k: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        patches.route_optimizer_step(optimizer, lambda *a, **k: None)  # checked once
