"""The CPU compatibility layer for megatron-core (maws_scale.parallel.megatron_compat)."""

from __future__ import annotations

import pytest
import torch

from maws_scale.parallel import megatron_compat

cpu_only = pytest.mark.cpu_only  # the layer is inactive where CUDA exists


@pytest.fixture
def clean():
    megatron_compat.uninstall()
    yield
    megatron_compat.uninstall()


@cpu_only
def test_without_the_layer_megatron_cuda_calls_fail(clean):
    with pytest.raises((RuntimeError, AssertionError)):
        torch.cuda.current_device()


@cpu_only
def test_install_maps_cuda_calls_to_cpu_and_uninstall_restores(clean):
    originals = (torch.cuda.current_device, torch.cuda.get_rng_state, torch.cuda.set_rng_state, torch.cuda.manual_seed)
    assert megatron_compat.install() is True
    assert megatron_compat.install() is True  # idempotent
    assert megatron_compat.is_installed()
    assert torch.zeros(2, device=torch.cuda.current_device()).device.type == "cpu"
    torch.cuda.manual_seed(7)
    state = torch.cuda.get_rng_state()
    first = torch.rand(4)
    torch.cuda.set_rng_state(state)
    assert torch.equal(torch.rand(4), first)
    torch.manual_seed(7)  # cuda.manual_seed seeded the CPU generator (torch.manual_seed does not recurse into it)
    assert torch.equal(torch.rand(4), first)
    megatron_compat.uninstall()
    assert not megatron_compat.is_installed()
    restored = (torch.cuda.current_device, torch.cuda.get_rng_state, torch.cuda.set_rng_state, torch.cuda.manual_seed)
    assert restored == originals


@cpu_only
def test_rng_tracker_forks_the_cpu_stream(clean):
    """megatron's RNG tracker, single process: a fork draws from its own stream and restores the default one."""
    from megatron.core import tensor_parallel as mtp

    megatron_compat.install()
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
    assert megatron_compat.install() is False
    assert not megatron_compat.is_installed()
    assert torch.cuda.current_device is current


@pytest.mark.dist
def test_gather_output_and_tp_rng_on_two_cpu_ranks(tp_scenario):
    """ColumnParallelLinear(gather_output=True) equals nn.Linear forward and backward; the model-parallel RNG stream
    differs across TP ranks while the default stream agrees (workers are CPU processes, GPUs hidden, everywhere)."""
    tp_scenario("compat")
