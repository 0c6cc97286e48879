"""The LightningModule: a network, a likelihood head, and what a checkpoint must carry.

Training runs in normalised parameter units (the unit cube of the prior); per-parameter RMSEs
are logged in physical units. Everything evaluation needs (model and loss configs, field and
parameter names, priors, normalisation statistics, the split) is stored as plain data under
``checkpoint["cosmoinfer"]``, so a checkpoint loads with ``torch.load(weights_only=True)``.

A Bayesian head (``model.bayesian_head=true``, :mod:`cosmoinfer.models.bayesian`) trains on the
negative ELBO per map, ``mean NLL + KL / N_train`` with ``N_train`` the number of training maps,
weights drawn in every training forward; ``train/nll`` and ``train/kl`` (nats, whole network) are
logged beside ``train/loss``. Validation uses the weight means (``val/loss`` is their NLL).
"""

from __future__ import annotations

import logging
import math

import hydra
import pytorch_lightning as pl
import torch
import torchmetrics

from cosmoinfer.data.priors import Prior
from cosmoinfer.models.bayesian import rho_parameters
from cosmoinfer.models.likelihoods import Likelihood
from cosmoinfer.models.network import Network
from cosmoinfer.training.callbacks import NonFiniteLossError, time_budget

log = logging.getLogger(__name__)


def unit_to_physical_torch(u: torch.Tensor, low: torch.Tensor, high: torch.Tensor, is_log: torch.Tensor):
    """Torch twin of :func:`cosmoinfer.data.priors.from_unit` for ``(B, P)`` tensors."""
    x = low + u * (high - low)
    return torch.where(is_log, torch.exp(x), x)


class PosteriorModule(pl.LightningModule):
    """Lightning wrapper around a :class:`Network` and a :class:`Likelihood`.

    ``meta`` holds the plain-data description saved in every checkpoint (see
    :func:`cosmoinfer.training.checkpoint.load_checkpoint`). ``optimizer`` and ``scheduler`` are
    plain config dicts with Hydra ``_target_`` / ``_partial_`` keys.
    """

    def __init__(self, network: Network, likelihood: Likelihood, meta: dict, optimizer: dict,
                 scheduler: dict | None = None):
        super().__init__()
        self.network, self.likelihood, self.meta = network, likelihood, meta
        self.optimizer_cfg, self.scheduler_cfg = optimizer, scheduler
        priors = [Prior.from_dict(p) for p in meta["data"]["priors"]]
        self.param_names = [p.name for p in priors]
        is_log = [p.log for p in priors]
        lo = [math.log(p.low) if p.log else p.low for p in priors]
        hi = [math.log(p.high) if p.log else p.high for p in priors]
        self.register_buffer("p_low", torch.tensor(lo), persistent=False)
        self.register_buffer("p_high", torch.tensor(hi), persistent=False)
        self.register_buffer("p_log", torch.tensor(is_log), persistent=False)
        # torchmetrics states are reduced over DDP ranks when computed: epoch metrics are global
        self.train_loss = torchmetrics.MeanMetric()
        self.val_loss = torchmetrics.MeanMetric()
        self.val_nll = torchmetrics.MeanMetric()  # the likelihood itself, whatever the training loss weights
        self.val_mse = torchmetrics.MetricCollection(
            {f"rmse_{n}": torchmetrics.MeanSquaredError(squared=False) for n in self.param_names})
        self.val_acc = torchmetrics.MeanMetric()  # classification: fraction of maps with (p >= 0.5) == label
        self.bayesian = bool(getattr(network, "is_bayesian", False))
        self._kl_weight: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def kl_weight(self) -> float:
        """``1 / N_train``: the ELBO per map is ``mean NLL + KL / N_train`` (N_train = training maps).

        Counted once from the training set (the whole set, not a DDP shard: the gradients of the
        per-rank mean NLL are averaged over ranks, so the KL is shared the same way).
        """
        if self._kl_weight is None:
            dm = getattr(self.trainer, "datamodule", None)
            ds = (getattr(dm, "datasets", None) or {}).get("train")
            if ds is None:
                ds = self.trainer.train_dataloader.dataset
            self._kl_weight = 1.0 / max(len(ds), 1)
        return self._kl_weight

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        loss = self.likelihood.loss(self.network(x), y)
        if self.bayesian:  # negative ELBO per map: NLL (weights drawn in the forward) + KL / N_train
            kl = self.network.kl()
            self.log("train/nll", loss.detach(), on_step=True, on_epoch=True, batch_size=len(x))
            self.log("train/kl", kl.detach(), on_step=False, on_epoch=True, batch_size=len(x))
            loss = loss + self.kl_weight() * kl
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}, epoch {self.current_epoch}, step {self.global_step}; "
                "training stopped before the update, the last good checkpoint is kept "
                "(try a lower optimizer.lr, gradient clipping, or a larger loss.min_std)")
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        self.train_loss.update(loss.detach(), weight=len(x))
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        raw = self.network(x)
        self.val_loss.update(self.likelihood.loss(raw, y), weight=len(x))
        self.val_nll.update(self.likelihood.nll(raw, y).mean(), weight=len(x))
        if self.likelihood.task == "regression":
            mean = self.likelihood.predict(raw)["mean"]
            phys_pred = unit_to_physical_torch(mean, self.p_low, self.p_high, self.p_log)
            phys_true = unit_to_physical_torch(y, self.p_low, self.p_high, self.p_log)
            for j, n in enumerate(self.param_names):
                self.val_mse[f"rmse_{n}"].update(phys_pred[:, j], phys_true[:, j])
        elif self.likelihood.task == "classification":
            hit = (self.likelihood.predict(raw)["mean"] >= 0.5) == (y >= 0.5)
            self.val_acc.update(hit.float().mean(), weight=len(x))

    def on_validation_epoch_end(self):
        # torchmetrics states are summed over ranks, so uneven DDP shards are weighted correctly
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=False)
        self.val_loss.reset()
        # val/nll: the NLL per map (nats, unit coordinates) unweighted, for checkpoint selection when the
        # training loss is weighted (beta-NLL: val/loss is the sigma^(2 beta)-weighted loss)
        self.log("val/nll", self.val_nll.compute(), sync_dist=False)
        self.val_nll.reset()
        if self.likelihood.task == "regression":
            for k, v in self.val_mse.compute().items():
                self.log(f"val/{k}", v)
            self.val_mse.reset()
        elif self.likelihood.task == "classification":
            self.log("val/accuracy", self.val_acc.compute())
            self.val_acc.reset()

    def configure_optimizers(self):
        params = self.parameters()
        if self.bayesian:  # the KL regularises the posterior widths: no weight decay on them
            rhos = rho_parameters(self.network)
            ids = {id(p) for p in rhos}
            params = [{"params": [p for p in self.parameters() if id(p) not in ids]},
                      {"params": rhos, "weight_decay": 0.0}]
        opt = hydra.utils.instantiate(self.optimizer_cfg)(params)
        if not self.scheduler_cfg:
            return opt
        cfg = dict(self.scheduler_cfg)
        interval = cfg.pop("interval", "epoch")
        monitor = cfg.pop("monitor", "val/loss")
        sched_cfg = dict(cfg.pop("scheduler"))
        for key, value in list(sched_cfg.items()):
            if value == "auto" and key == "max_seconds":  # the time budget: what trainer.max_time leaves
                sched_cfg[key] = self._time_budget()
            elif value == "auto":  # lengths that depend on the run
                steps = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
                sched_cfg[key] = int(steps)
        sched = hydra.utils.instantiate(sched_cfg)(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval, "monitor": monitor}}

    def _time_budget(self) -> float | None:
        """Seconds ``trainer.max_time`` leaves for fitting (its Timer callback); None without a cap."""
        _, left = time_budget(self.trainer)
        return None if left is None else max(float(left), 1.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cosmoinfer"] = self.meta
