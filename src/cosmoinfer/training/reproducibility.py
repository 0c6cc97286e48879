"""Bit-identical resumption: every training epoch's randomness depends only on ``(seed, epoch)``.

A run killed after epoch ``e`` and continued with ``resume=true`` from ``last.ckpt`` must give the
weights the uninterrupted run would have given. The checkpoint restores the weights, the optimizer
and scheduler states and the loop counters; what is left is randomness:

- the order of the training maps and their dihedral views come from
  :class:`~cosmoinfer.data.samplers.EpochSampler`, seeded with ``(seed, epoch)``;
- dropout (and anything else drawing from the global generators) is reseeded by
  :class:`BatchSeed` before every training batch, from ``(seed, epoch, batch, rank)``: torch
  (CPU and CUDA), numpy and Python's ``random``.

So no generator state has to travel in the checkpoint, and a batch's randomness does not depend on
what ran before it in the same process (validation, a sanity check, a restart, or Lightning drawing
a DataLoader seed at another moment on a restart: reseeding once per epoch was not enough).
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch


def batch_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """A 32-bit seed for batch ``batch`` of epoch ``epoch`` on rank ``rank`` of a run seeded with ``seed``."""
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch), int(batch), int(rank), 0xE90C]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class BatchSeed(pl.Callback):
    """Reseed every generator before each training batch from ``(seed, epoch, batch, rank)``."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        seed_all(batch_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))
