"""Refit a trained network's whole head on its eval-mode features (``callbacks=refit_head``).

Why: in train mode BatchNorm normalises each map by its batch's statistics, so the features the
head is trained on are noisier than the features it sees at evaluation. A head that predicts a
narrow, curved posterior (``loss=flow``, ``mdn``, ``gaussian_fullcov``) learns to spread its mass
over that noise. On the grf heads benchmark (2026-12-02) the flow head of the CMD CNN was
1.00 nats (expected KL) from the exact posterior as trained, and 0.49 after this refit; an MLP
flow on batch-standardised power spectra was 0.89 nats away, and 0.08 on fixed-standardised ones.
:mod:`~cosmoinfer.training.width_refit` does the same for a Gaussian head's widths only (convex,
means fixed); this callback refits every head parameter, for any likelihood.

What: after training, the best checkpoint's network runs in eval mode over (up to ``max_maps``)
training maps, each in one random dihedral view, and over the validation maps; the backbone
features ``(N, F)`` are kept. The head (:class:`~cosmoinfer.models.network.MLPHead`) is then
trained from its trained weights by Adam on the likelihood's *loss* (the training objective:
the beta-NLL where ``loss.beta`` is set) for ``epochs`` passes over the cached features, the
learning rate falling from ``lr`` to 0 on a cosine, in train mode (head dropout, if any, stays on
as in training). The refitted head is kept only if it lowers the unweighted validation NLL
(``val/nll``); otherwise the trained head stays. The backbone does not change.

With ``val_scale`` (Gaussian heads only) one width factor per parameter is then fitted on the
validation maps, as ``callbacks.refit_widths.val_scale`` does
(:func:`~cosmoinfer.training.width_refit.fit_val_scale`, on the predictive the evaluator forms, the
8 views averaged with ``val_scale_tta`` unless the network averages its features over them itself,
``model.view_average``), and stored as ``meta["width_scale"]`` (full covariance: ``D C D``). By
default (``val_scale_fit=coverage``) only the parameters whose validation maps the report's verdict
flags get a factor, fitted to the coverage error; ``nll`` fits ``s^2 = mean z^2`` on every one
(:func:`~cosmoinfer.training.width_refit.val_width_scale` says why the default changed). A head refitted on the training maps' features
can come out too narrow on new maps, and this is the held-out fit with one degree of freedom per
parameter that corrects it.

A variational (Bayesian) head (``model.bayesian_head``) is refitted on its training objective, the
negative ELBO per map (the loss plus the weights' KL / N_train), its weights drawn in every step; the
val check compares the NLL of its mean weights. ``val_scale`` does not apply to it (one factor would
scale its epistemic spread with its aleatoric widths).
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from cosmoinfer.errors import InputError
from cosmoinfer.models.bayesian import network_kl
from cosmoinfer.training.checkpoint import read_checkpoint
from cosmoinfer.training.width_refit import check_val_scale_fit, scale_on_val_maps

log = logging.getLogger(__name__)


@torch.no_grad()
def backbone_features(network: nn.Module, loader) -> tuple[Tensor, Tensor]:
    """Eval-mode backbone features ``(N, F)`` (float32, CPU) and unit-cube targets ``(N, P)`` over ``loader``.

    ``loader`` yields ``(x, y, sim_id)`` batches of normalised maps; the network's mode is restored.
    """
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    feats, ys = [], []
    try:
        for x, y, _ in loader:
            feats.append(network.features(x.to(device)).float().cpu())
            ys.append(y.float())
    finally:
        network.train(was_training)
    return torch.cat(feats), torch.cat(ys)


@torch.no_grad()
def mean_nll(head: nn.Module, likelihood, h: Tensor, y: Tensor, batch: int = 4096) -> float:
    """Mean unweighted NLL per map (nats, unit coordinates) of ``head`` in eval mode on features ``h``."""
    was_training = head.training
    head.eval()
    try:
        total = sum(float(likelihood.nll(head(h[i: i + batch]), y[i: i + batch]).sum())
                    for i in range(0, len(h), batch))
    finally:
        head.train(was_training)
    return total / max(len(h), 1)


def fit_head(head: nn.Module, likelihood, h: Tensor, y: Tensor, epochs: int, lr: float, batch_size: int,
             seed: int, kl_weight: float = 0.0) -> nn.Module:
    """A copy of ``head`` trained on the cached features ``h (N, F)``, targets ``y (N, P)``.

    Adam on ``likelihood.loss`` in mini-batches of ``batch_size`` (shuffled with ``seed``), ``epochs``
    passes, learning rate ``lr`` annealed to 0 on a cosine over all steps. A variational (Bayesian)
    head is trained on the negative ELBO per map, ``mean loss + kl_weight * KL`` (``kl_weight`` =
    1 / N_train, as in training; its weights are drawn in every train-mode forward). Returns the new
    head in eval mode; ``head`` itself is not touched.
    """
    new = copy.deepcopy(head).float().train()
    opt = torch.optim.Adam(new.parameters(), lr=float(lr))
    steps_per_epoch = math.ceil(len(h) / int(batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(epochs) * steps_per_epoch, 1))
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(int(epochs)):
        perm = torch.randperm(len(h), generator=gen)
        for i in range(0, len(h), int(batch_size)):
            idx = perm[i: i + int(batch_size)]
            loss = likelihood.loss(new(h[idx]), y[idx]).mean()
            if kl_weight:
                loss = loss + float(kl_weight) * network_kl(new)
            if not torch.isfinite(loss):
                continue  # a bad batch does not poison the head; the val check decides in the end
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return new.eval()


class RefitHead(pl.Callback):
    """At the end of training, refit the best checkpoint's head on eval-mode backbone features.

    The best checkpoint (``ModelCheckpoint.best_model_path``) is loaded into the module, its head is
    refitted (:func:`fit_head`) on the features of up to ``max_maps`` training maps drawn with
    ``seed`` (one random dihedral view each where the data module augments), kept if it lowers the
    validation NLL, and the checkpoint is written again (atomically, through the trainer) with
    ``meta["head_refit"]`` recording the map counts, the validation NLL before and after, and
    whether the refit was kept. ``last.ckpt`` keeps the raw training state for ``resume=true``.
    Without a checkpoint callback the module's weights are refitted in memory. Under DDP rank 0's
    head is broadcast, so the ranks stay identical.

    Args:
        epochs: passes over the cached training features.
        lr: Adam's initial learning rate (cosine to 0).
        batch_size: features per step.
        max_maps: most training maps used (a random subset beyond it).
        seed: seeds the subset, the dihedral views and the shuffling.
    """

    def __init__(self, epochs: int = 10, lr: float = 1e-3, batch_size: int = 256, max_maps: int = 50_000,
                 seed: int = 0, val_scale: bool = False, val_scale_tta: bool = True, val_scale_fit: str = "coverage"):
        for key, v in (("epochs", epochs), ("batch_size", batch_size), ("max_maps", max_maps)):
            if int(v) < 1:
                raise ValueError(f"RefitHead: {key} must be >= 1, got {v}")
        if not float(lr) > 0:
            raise ValueError(f"RefitHead: lr must be > 0, got {lr}")
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.max_maps, self.seed = int(max_maps), int(seed)
        self.val_scale, self.val_scale_tta = bool(val_scale), bool(val_scale_tta)
        self.val_scale_fit = check_val_scale_fit(val_scale_fit, "callbacks.refit_head.val_scale_fit")
        self.bayesian = False  # set in setup: a variational head is refitted on the ELBO, with no val_scale

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if self.val_scale and not getattr(pl_module.likelihood, "scalable", False):
            raise InputError("callbacks.refit_head.val_scale", f"loss={pl_module.likelihood.name} has no width "
                             "scale (Gaussian heads only: gaussian_nll, beta_nll, gaussian_fullcov)")
        self.bayesian = bool(getattr(pl_module.network, "is_bayesian", False))
        if self.bayesian and self.val_scale:  # its widths are aleatoric and epistemic: one factor would scale both
            log.warning("callbacks.refit_head: a variational (Bayesian) head is refitted on the ELBO, with no "
                        "width factor (callbacks.refit_head.val_scale=true is ignored)")

    def _loader(self, ds, limit: int | None, dm) -> DataLoader:
        idx = np.arange(len(ds))
        if limit is not None and len(ds) > limit:
            idx = np.sort(np.random.default_rng(self.seed).choice(len(ds), limit, replace=False))
        return DataLoader(Subset(ds, idx.tolist()), batch_size=int(dm.eval_batch_size), shuffle=False,
                          num_workers=0)

    def on_train_end(self, trainer, pl_module) -> None:
        ckpt_cb = trainer.checkpoint_callback
        best = Path(ckpt_cb.best_model_path) if ckpt_cb is not None and ckpt_cb.best_model_path else None
        if best is not None and best.is_file():
            pl_module.load_state_dict(read_checkpoint(best)["state_dict"])
        net, lik, dm = pl_module.network, pl_module.likelihood, trainer.datamodule
        with torch.random.fork_rng(devices=[]):  # the dihedral views; the caller's RNG state is left alone
            torch.manual_seed(self.seed)
            h, y = backbone_features(net, self._loader(dm.datasets["train"], self.max_maps, dm))
        val = dm.datasets.get("val")
        hv, yv = backbone_features(net, self._loader(val, None, dm)) if val is not None and len(val) else (h, y)
        head = net.head
        before = mean_nll(head, lik, hv, yv)
        kl_weight = pl_module.kl_weight() if self.bayesian else 0.0
        new = fit_head(head, lik, h, y, self.epochs, self.lr, self.batch_size, self.seed, kl_weight)
        after = mean_nll(new, lik, hv, yv)
        kept = bool(math.isfinite(after) and after < before)
        state = new.state_dict() if kept else head.state_dict()
        if trainer.world_size > 1:  # every rank ends with rank 0's head
            state, kept, after = trainer.strategy.broadcast((state, kept, after), src=0)
        with torch.no_grad():
            head.load_state_dict({k: v.to(head.state_dict()[k]) for k, v in state.items()})
        result = {"n_maps": int(len(y)), "n_val_maps": int(len(yv)), "val_nll_before": before,
                  "val_nll_after": after, "kept": kept}
        pl_module.meta["head_refit"] = dict(result, epochs=self.epochs, lr=self.lr, max_maps=self.max_maps,
                                            seed=self.seed, elbo_kl_weight=kl_weight if self.bayesian else None)
        log.info("RefitHead: val NLL per map %.4f -> %.4f (%s) on %d training maps in eval mode", before, after,
                 "kept" if kept else "not kept", result["n_maps"])
        if self.val_scale and not self.bayesian and val is not None and len(val):  # every rank fits the same maps: the ranks agree
            scale_on_val_maps(pl_module, val, dm.eval_batch_size, self.val_scale_tta, "head_refit", "RefitHead",
                              self.val_scale_fit)
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics({f"refit/head_{k}": float(v) for k, v in result.items()},
                                       step=trainer.global_step)
            trainer.logger.save()
        if best is not None and best.is_file():
            trainer.save_checkpoint(best)
