"""Callbacks and plugins the library does not ship: gradient-norm logging and atomic checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import grad_norm


class GradNormLogger(pl.Callback):
    """Log the total L2 gradient norm (and optionally per layer) before each optimizer step.

    A norm that collapses towards 0 or explodes is the first sign of vanishing or exploding
    gradients; uses Lightning's :func:`grad_norm`.
    """

    def __init__(self, per_layer: bool = False, every_n_steps: int = 10):
        self.per_layer, self.every_n_steps = per_layer, every_n_steps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step % self.every_n_steps:
            return
        norms = grad_norm(pl_module, norm_type=2)
        if not norms:
            return
        if not self.per_layer:
            norms = {k: v for k, v in norms.items() if k.endswith("_total")}
        pl_module.log_dict({f"grad/{k}": v for k, v in norms.items()}, on_step=True, on_epoch=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, then ``os.replace`` it.

    A process killed mid-write leaves the previous checkpoint intact and at most a stray
    ``.tmp`` file, never a truncated ``.ckpt``.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
