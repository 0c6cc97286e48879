"""What Lightning does not ship: gradient-norm logging, atomic checkpoints, an appending CSV logger,
BatchNorm frozen for the end of training."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import grad_norm

from cosmoinfer.errors import file_mode

log = logging.getLogger(__name__)


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


class EpochLine(pl.Callback):
    """One line per epoch in the log: ``epoch 3/12: train/loss 0.512, val/loss 0.490 (41 s)``.

    What a log file on disk (and ``cosmoinfer-pipeline``'s status line) shows instead of a
    progress bar when the output is not a terminal.
    """

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[k]):.4g}" for k in ("train/loss", "val/loss") if k in m]
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        logging.getLogger("cosmoinfer.train").info("epoch %d/%s: %s (%.0f s)", trainer.current_epoch + 1, total, ", ".join(parts) or "-",
                 time.time() - getattr(self, "_t0", time.time()))


class NonFiniteGuard(pl.Callback):
    """Stop with a clear message as soon as the weights stop being finite.

    The loss itself is checked in ``training_step`` before the update; this catches an update
    that overflowed. Lightning runs checkpoint callbacks last, so no checkpoint with non-finite
    weights is ever written: the last good one is kept.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = [p.detach() for p in pl_module.parameters()]
        if not params:
            return
        # fast path, every step: one fused L2 norm per tensor is finite iff all its entries are (a
        # norm that overflows for |w| > ~1e19 only sends us to the exact check below)
        norms = torch._foreach_norm(params)
        if len({(n.dtype, n.device) for n in norms}) == 1 and bool(torch.isfinite(torch.stack(norms)).all()):
            return
        for name, p in pl_module.named_parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteLossError(
                    f"non-finite weights ({name}) after step {trainer.global_step} at epoch "
                    f"{trainer.current_epoch}; training stopped, the last good checkpoint is kept "
                    "(try a lower optimizer.lr or trainer.gradient_clip_val)")


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss or the weights become NaN or inf (weights are left untouched)."""


def time_budget(trainer) -> tuple[float, float | None]:
    """``(seconds spent, seconds left)`` of ``trainer.max_time`` (Lightning's ``Timer``); left is None without a cap."""
    from pytorch_lightning.callbacks import Timer

    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is None:
        return 0.0, None
    return float(timer.time_elapsed()), timer.time_remaining()


class FreezeBatchNorm(pl.Callback):
    """Run every BatchNorm layer in eval mode for the last part of training (``callbacks=freeze_bn``).

    In train mode BatchNorm normalises each map by its batch's statistics, so a map's prediction
    depends on the other maps of its batch (on GRF maps: on the batch's mix of amplitudes, i.e. of
    sigma_8). A Gaussian NLL width learns to cover that noise as well, and at evaluation, where
    BatchNorm uses its running statistics, the noise is gone: the widths come out too wide, as
    they do with dropout. From training progress ``start`` on, BatchNorm layers use their running
    statistics and stop updating them, so the last phase fits means and widths to the outputs
    the evaluator will see. Their affine weights keep training.

    Progress is the larger of ``global_step / estimated_stepping_batches`` and, under
    ``trainer.max_time``, the fraction of the time budget spent (Lightning's ``Timer``), so a
    time-capped run reaches its frozen phase too.

    Args:
        start: fraction of training in ``[0, 1)`` after which BatchNorm is frozen.
    """

    def __init__(self, start: float = 0.8):
        if not 0.0 <= float(start) < 1.0:
            raise ValueError(f"FreezeBatchNorm: start must be in [0, 1), got {start}")
        self.start = float(start)
        self.frozen_at_step: int | None = None

    @staticmethod
    def progress(trainer) -> float:
        """Fraction of training done: steps, or the ``trainer.max_time`` budget, whichever is further."""
        total = trainer.estimated_stepping_batches
        p = trainer.global_step / total if total and total != float("inf") else 0.0
        spent, left = time_budget(trainer)
        if left is not None:
            p = max(p, spent / max(spent + left, 1e-9))
        return min(p, 1.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.frozen_at_step is None and (p := self.progress(trainer)) >= self.start:
            self.frozen_at_step = trainer.global_step
            log.info("FreezeBatchNorm: BatchNorm in eval mode from step %d (progress %.2f)", trainer.global_step, p)
        if self.frozen_at_step is not None:  # Lightning sets train mode again after every validation
            for mod in pl_module.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.eval()


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
            os.chmod(tmp, file_mode())  # mkstemp makes 0600 files; checkpoints follow the umask (0644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class ResumableCSVLogger(CSVLogger):
    """Lightning's :class:`CSVLogger`, except that an existing ``metrics.csv`` is appended to.

    The stock writer deletes ``metrics.csv`` when its folder is not empty, which would erase the
    history of a run continued with ``resume=true``.
    """

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str):
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):  # continue the existing header
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                header = next(csv.reader(fh), [])
            self.metrics_keys = sorted(set(header))

    def _check_log_dir_exists(self) -> None:  # keep previous metrics (the writer appends)
        pass
