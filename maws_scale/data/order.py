"""The global sample order: a pure function of (seed, epoch, shard record counts, shuffle window).

Think of training data as one endless sequence of *positions* 0, 1, 2, …; position ``p`` belongs to epoch
``p // N`` (N records per epoch). Within an epoch the sequence is built in three cheap, local steps:

1. the shards are put in a random order (a permutation of the shard list) and taken ``mix`` at a time;
2. the fixed-size chunks of consecutive rows of those ``mix`` shards are put in one random order, so the
   stream interleaves several shards (a reader keeps only ``mix`` shards open);
3. the resulting stream is cut into windows of ``window`` positions and each window is permuted —
   the deterministic equivalent of a shuffle buffer of that size.

Mapping a position to its (shard, row) needs only the shard counts, one chunk permutation per group of shards
touched and one window permutation: no per-sample index of the data set is ever held in memory.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_SHARDS, _CHUNKS, _WINDOW = 1, 2, 3


class GlobalOrder:
    """Positions → (shard index, row) for a data set with the given per-shard record counts."""

    def __init__(
        self, counts: list[int], seed: int, shuffle: bool, window: int = 2048, chunk: int | None = None, mix: int = 8
    ):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.size = int(self.counts.sum())
        if self.size == 0:
            raise ValueError("the data set holds no records")
        self.seed = int(seed)
        self.shuffle = shuffle
        self.window = max(1, int(window))
        self.chunk = int(chunk or max(1, min(64, self.window // 16)))
        self.mix = max(1, int(mix))
        self._natural_starts = np.concatenate([[0], np.cumsum(self.counts)])
        self._make_caches()

    def _make_caches(self) -> None:
        self._shard_order = lru_cache(maxsize=2)(self._shard_order_uncached)
        self._group = lru_cache(maxsize=4)(self._group_uncached)
        self._window_perm = lru_cache(maxsize=8)(self._window_perm_uncached)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_shard_order", "_group", "_window_perm", "_natural_starts"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._natural_starts = np.concatenate([[0], np.cumsum(self.counts)])
        self._make_caches()

    def describe(self) -> dict[str, int | bool]:
        return {"seed": self.seed, "shuffle": self.shuffle, "window": self.window, "chunk": self.chunk, "mix": self.mix}

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32 & 0xFFFFFFFF, *key])

    def _shard_order_uncached(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, record start of each group of ``mix`` shards in that order)."""
        order = self._rng(_SHARDS, epoch).permutation(len(self.counts))
        per_group = np.add.reduceat(self.counts[order], np.arange(0, len(order), self.mix))
        return order, np.concatenate([[0], np.cumsum(per_group)])

    def _group_uncached(self, epoch: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chunks of one group of shards in random order: (shard, chunk index, record start) per chunk."""
        order, _ = self._shard_order(epoch)
        members = order[group * self.mix : (group + 1) * self.mix]
        chunks = -(-self.counts[members] // self.chunk)
        shard = np.repeat(members, chunks)
        index = np.concatenate([np.arange(c) for c in chunks])
        perm = self._rng(_CHUNKS, epoch, group).permutation(len(shard))
        shard, index = shard[perm], index[perm]
        sizes = np.minimum(self.chunk, self.counts[shard] - index * self.chunk)
        return shard, index, np.concatenate([[0], np.cumsum(sizes)])

    def _window_perm_uncached(self, epoch: int, index: int) -> np.ndarray:
        length = min(self.window, self.size - index * self.window)
        return self._rng(_WINDOW, epoch, index).permutation(length)

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) int64 arrays for an array of global positions (any epochs)."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, within = np.divmod(positions, self.size)
        shards = np.empty_like(positions)
        rows = np.empty_like(positions)
        if not self.shuffle:
            shards[:] = np.searchsorted(self._natural_starts, within, side="right") - 1
            rows[:] = within - self._natural_starts[shards]
            return shards, rows
        for epoch in np.unique(epochs):
            sel = np.flatnonzero(epochs == epoch)
            stream = self._unwindow(int(epoch), within[sel])
            _, starts = self._shard_order(int(epoch))
            slot = np.searchsorted(starts, stream, side="right") - 1
            for group in np.unique(slot):
                hit = np.flatnonzero(slot == group)
                offset = stream[hit] - starts[group]
                chunk_shard, chunk_index, chunk_starts = self._group(int(epoch), int(group))
                j = np.searchsorted(chunk_starts, offset, side="right") - 1
                shards[sel[hit]] = chunk_shard[j]
                rows[sel[hit]] = chunk_index[j] * self.chunk + (offset - chunk_starts[j])
        return shards, rows

    def _unwindow(self, epoch: int, within: np.ndarray) -> np.ndarray:
        index, slot = np.divmod(within, self.window)
        stream = np.empty_like(within)
        for w in np.unique(index):
            hit = index == w
            stream[hit] = w * self.window + self._window_perm(epoch, int(w))[slot[hit]]
        return stream
