"""Samplers: a training order that depends only on ``(seed, epoch)``, and unpadded evaluation shards.

:class:`EpochSampler` draws each epoch's permutation of the training maps, and the dihedral view of
each map, from a generator seeded with ``(seed, epoch)`` alone. Nothing depends on the global random
state, on how many epochs ran in this process, or on DataLoader workers: a run resumed from the
checkpoint at the end of epoch ``e`` sees exactly the maps, in the same order and the same views,
that the uninterrupted run saw in epoch ``e + 1``. Lightning calls :meth:`EpochSampler.set_epoch`
before every epoch. It yields ``(map position, view)`` pairs, which
:class:`~cosmoinfer.data.map_dataset.MapDataset` accepts as indices.

Under DDP rank ``r`` of ``w`` takes every ``w``-th map of the (padded) permutation, as torch's
``DistributedSampler`` does; :class:`ShardSampler` shards evaluation without padding.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def _rank_world() -> tuple[int, int]:
    ready = dist.is_available() and dist.is_initialized()
    return (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)


class EpochSampler(Sampler):
    """Shuffled ``(position, view)`` pairs over ``n`` maps; order and views depend only on ``(seed, epoch)``.

    Args:
        n: number of maps in the training dataset.
        seed: the training run's seed (ensemble members with other seeds see other orders).
        augment: draw one of the 8 dihedral views per map (view ``-1``, i.e. none, otherwise).
        rank, world: this process's DDP rank and the number of ranks (default: from ``torch.distributed``).
    """

    def __init__(self, n: int, seed: int, augment: bool = True, rank: int | None = None,
                 world: int | None = None):
        self.n, self.seed, self.augment = int(n), int(seed), bool(augment)
        r, w = _rank_world()
        self.rank, self.world = r if rank is None else int(rank), w if world is None else int(world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, 0x5EED])
        perm = rng.permutation(self.n)
        views = rng.integers(0, 8, size=self.n) if self.augment else np.full(self.n, -1)
        return perm, views[perm]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm, views = self._order()
        total = len(self) * self.world
        if total > self.n:  # pad by wrapping around, so every rank gets as many maps
            reps = -(-total // max(self.n, 1))
            perm, views = np.tile(perm, reps)[:total], np.tile(views, reps)[:total]
        for i, v in zip(perm[self.rank:total:self.world], views[self.rank:total:self.world]):
            yield int(i), int(v)

    def __len__(self) -> int:
        return -(-self.n // self.world)


class ShardSampler(Sampler):
    """Rank ``r`` of ``w`` gets indices ``r, r+w, r+2w, ...``: no padding, no duplicates."""

    def __init__(self, n: int):
        self.n = n
        self.rank, self.world = _rank_world()

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))
