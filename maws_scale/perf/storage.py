"""Tensor-storage accounting: what a process (or a DeepSpeed engine) actually holds, by storage, without CUDA.

On CPU there is no ``max_memory_allocated``; instead we count storages. :func:`live_storages` walks every tensor the
garbage collector can see (plus ``.grad`` and ZeRO-3's ``ds_tensor``), each storage once. :func:`engine_state_bytes`
sorts an engine's storages into parameters, fp32 master, Adam moments, gradient buckets and the rest (gradients),
from DeepSpeed 0.19.8's attribute names. :class:`SavedTensors` counts what autograd saves for backward (the
activations) through ``saved_tensors_hooks``. Views share a storage and are counted once; allocator overhead and
fragmentation are not included.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, compress
from operator import methodcaller
from typing import Any

import torch

# fp32 master partitions of DeepSpeed's optimizer wrappers (ZeRO-3, ZeRO-1/2, BF16_Optimizer, FP16 optimizers)
MASTER_ATTRS = (
    "fp32_partitioned_groups_flat",
    "single_partition_of_fp32_groups",
    "fp32_groups_flat_partition",
    "fp32_groups_flat",
    "fp32_groups",
)


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    if t.device.type == "meta":
        return None
    storage = t.untyped_storage()
    if storage.nbytes() == 0:
        return None
    return storage.data_ptr(), storage.nbytes()


def _tensors_of(obj: Any) -> list[torch.Tensor]:
    out = [obj]
    ds = getattr(obj, "ds_tensor", None)
    if isinstance(ds, torch.Tensor):
        out.append(ds)
    if obj.is_leaf and obj.grad is not None:
        out.append(obj.grad)
    return out


def _oldest_generation() -> Iterator[Any]:
    """The objects of the garbage collector's oldest generation, listed only when first pulled (from C)."""
    return chain.from_iterable(map(methodcaller("__call__", 2), (gc.get_objects,)))


def live_tensors() -> list[torch.Tensor]:
    """Every tensor the garbage collector tracks (after a full collect, which leaves every survivor in the oldest
    generation).

    The list ``gc.get_objects()`` returns holds a second reference to objects other threads are still building; a
    tuple that CPython then resizes in place fails in that thread with ``SystemError: Objects/tupleobject.c:927: bad
    argument to internal function`` (seen: SQLAlchemy's mapper set-up in the MLflow tracking thread while the CPU bench
    measured memory). So no Python code may run while such a list exists: the generation is listed twice inside one
    call that runs in C, once for the objects and once for their types, the types are checked in C (``isinstance``
    reads ``__class__``, which some objects compute in Python), and both lists are dropped before the call returns.
    Collection stays off meanwhile, so both listings hold the same objects in the same order; every object found is
    checked to be a tensor after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        is_tensor_type = map(torch.Tensor.__subclasscheck__, map(type, _oldest_generation()))
        found = list(compress(_oldest_generation(), is_tensor_type))
    finally:
        if enabled:
            gc.enable()
    strays = [type(obj).__name__ for obj in found if not issubclass(type(obj), torch.Tensor)]
    if strays:
        raise RuntimeError(f"live_tensors: the two listings of the oldest generation differ (found {strays[:5]})")
    return found


def live_storages(hold: list | None = None) -> dict[int, int]:
    """``{storage pointer: bytes}`` of every live tensor storage the garbage collector can reach (after a collect).

    ``hold``: a list that receives the storages, keeping them alive, so that a snapshot used as a baseline cannot
    have its addresses reused by later allocations."""
    seen: dict[int, int] = {}
    for obj in live_tensors():
        try:
            for t in _tensors_of(obj):
                key = _storage_key(t)
                if key is not None and key[0] not in seen:
                    seen[key[0]] = key[1]
                    if hold is not None:
                        hold.append(t.untyped_storage())
        except (RuntimeError, AttributeError):  # tensor subclasses / freed storages that refuse inspection
            continue
    return seen


def _add(into: dict[int, int], tensors) -> None:
    for t in tensors:
        if isinstance(t, torch.Tensor):
            key = _storage_key(t)
            if key is not None:
                into[key[0]] = key[1]


@dataclass(frozen=True)
class EngineStateBytes:
    """Bytes of one rank's engine by role. ``grads``: everything else the engine added (gradients, flags)."""

    params: int
    master: int
    moments: int
    buckets: int
    grads: int

    @property
    def optimizer(self) -> int:
        return self.master + self.moments

    @property
    def total(self) -> int:
        return self.params + self.master + self.moments + self.buckets + self.grads


def engine_state_bytes(engine: Any, baseline: dict[int, int] | None = None) -> EngineStateBytes:
    """Sort the live storages of ``engine`` by role; storages in ``baseline`` (taken before the engine was built,
    e.g. input batches) are left out of ``grads``."""
    params: dict[int, int] = {}
    for p in engine.module.parameters():
        _add(params, [p, getattr(p, "ds_tensor", None)])
    wrapper = engine.optimizer
    inner = getattr(wrapper, "optimizer", None) or wrapper
    masters: list[torch.Tensor] = []
    for attr in MASTER_ATTRS:
        for item in getattr(wrapper, attr, None) or []:
            masters.extend(item if isinstance(item, (list, tuple)) else [item])
    masters.extend(p for g in inner.param_groups for p in g["params"])
    master: dict[int, int] = {}
    moments: dict[int, int] = {}
    for m in masters:
        if not isinstance(m, torch.Tensor):
            continue
        key = _storage_key(m)
        if key is not None and key[0] not in params:
            master[key[0]] = key[1]
        _add(moments, [v for v in inner.state.get(m, {}).values() if isinstance(v, torch.Tensor) and v.numel() > 1])
    buckets: dict[int, int] = {}
    for bucket in (getattr(wrapper, "ipg_buckets", None) or {}).values():
        buffer = getattr(bucket, "buffer", None)
        _add(buckets, buffer if isinstance(buffer, (list, tuple)) else [buffer])
    known = params.keys() | master.keys() | moments.keys() | buckets.keys() | (baseline or {}).keys()
    rest = {k: v for k, v in live_storages().items() if k not in known}
    return EngineStateBytes(
        params=sum(params.values()),
        master=sum(master.values()),
        moments=sum(moments.values()),
        buckets=sum(buckets.values()),
        grads=sum(rest.values()),
    )


class SavedTensors:
    """Context manager counting the storages autograd saves for backward inside it (parameters excluded).

    ``with SavedTensors(model.parameters()) as saved: loss = model(x)`` → ``saved.bytes``."""

    def __init__(self, params) -> None:
        params = list(params)
        self._param_ids = {id(p) for p in params}  # ZeRO-3 swaps a parameter's storage in and out: go by identity
        self._exclude = set()
        for p in params:
            for t in (p, getattr(p, "ds_tensor", None)):
                if isinstance(t, torch.Tensor):
                    key = _storage_key(t)
                    if key is not None:
                        self._exclude.add(key[0])
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if id(t) in self._param_ids:
            return t
        key = _storage_key(t)
        if key is not None and key[0] not in self._exclude:
            self._seen[key[0]] = key[1]
        return t

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())
