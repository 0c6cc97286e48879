"""Refit a trained network's widths with its means held fixed (``callbacks=refit_widths``).

Why: in train mode BatchNorm normalises each map by its batch's statistics (and dropout, where
present, is on), so the outputs the NLL sees while training are noisier than the outputs the
evaluator sees in eval mode. The width head learns to cover that extra noise, and the evaluated
posteriors come out too wide (on ``grf_fisher`` the default network's Omega_m widths were 6 %
wider than the exact posterior's, and its mean z^2 on the training maps, in eval mode, was 0.86).

What: after training, the best checkpoint's network runs in eval mode over (up to ``max_maps``)
training maps, each in one random dihedral view; the inputs of the head's last linear layer are
kept, and only that layer's width rows (the raw outputs after the ``P`` means) are refitted by
minimising the likelihood's NLL with the means fixed. Means, and so efficiency and RMSE, do not
change. The fit is convex in the widths for a fixed mean, full-batch L-BFGS in float64, so it is
deterministic and takes seconds once the features are computed.

Optionally (``val_scale=true``), a second step: one width factor per parameter fitted on the
validation simulations, which training never fitted (the rows above are fitted on the training
maps, and a backbone that fits its training maps better than it generalises gives widths that are
too narrow on new maps; the multifield camels_like CNN's were 8-15 % too narrow). The factor is
the NLL-optimal variance scaling of :func:`cosmoinfer.calibration.recalibration.fit_std_scaling`
(``s_p^2 = mean z_p^2``), computed on the predictive the evaluator will form (``val_scale_tta``:
the 8 dihedral views averaged, as with ``tta=true``), and stored in the checkpoint
(``meta["width_scale"]``), so every evaluator applies it (:meth:`Likelihood.set_width_scale`). P
numbers from hundreds of validation maps do not overfit, where refitting the rows on them did.

Works for likelihoods whose raw outputs are ``[mean (P) | width parameters]``: ``gaussian_nll``,
``moment`` and ``gaussian_fullcov`` (its Cholesky entries are refitted), on networks whose head ends
in a ``torch.nn.Linear`` (:class:`~cosmoinfer.models.network.MLPHead`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from cosmoinfer.calibration.recalibration import fit_coverage_scaling, fit_std_scaling
from cosmoinfer.errors import InputError
from cosmoinfer.models.likelihood_base import average_gaussian_views
from cosmoinfer.models.network import evaluation_views, n_evaluation_views
from cosmoinfer.training.checkpoint import read_checkpoint

log = logging.getLogger(__name__)

#: Likelihoods whose raw outputs are ``[mean (P) | width parameters]`` (the means do not depend on the rest).
REFITTABLE = ("gaussian_nll", "moment", "gaussian_fullcov")


def check_refittable(network: nn.Module, likelihood) -> nn.Linear:
    """The head's last linear layer, or :class:`InputError` if the widths cannot be refitted alone."""
    if likelihood.name not in REFITTABLE:
        raise InputError("callbacks.refit_widths", f"loss={likelihood.name} has no width outputs separate from its "
                         f"means; the width refit supports loss={' | '.join(REFITTABLE)}")
    last = getattr(getattr(network, "head", None), "net", [None])[-1]
    if not isinstance(last, nn.Linear) or last.out_features != likelihood.n_outputs:
        raise InputError("callbacks.refit_widths", "the network's head does not end in a Linear layer with the "
                         "likelihood's raw outputs (model.arch must use MLPHead)")
    return last


@torch.no_grad()
def head_inputs(network: nn.Module, loader) -> tuple[Tensor, Tensor]:
    """Eval-mode inputs of the head's last layer ``(N, H)`` and targets ``(N, P)`` over ``loader``.

    ``loader`` yields ``(x, y, sim_id)`` batches of normalised maps and unit-cube targets. The
    network's train/eval mode is restored afterwards.
    """
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    feats, ys = [], []
    try:
        for x, y, _ in loader:
            h = network.head.net[:-1](network.features(x.to(device)))
            feats.append(h.double().cpu())
            ys.append(y.double())
    finally:
        network.train(was_training)
    return torch.cat(feats), torch.cat(ys)


def fit_width_rows(h: Tensor, y: Tensor, weight: Tensor, bias: Tensor, likelihood,
                   max_iter: int = 500) -> tuple[Tensor, Tensor, float, float]:
    """Refit the width rows of the last layer by minimising the mean NLL with the means fixed.

    Args:
        h: ``(N, H)`` inputs of the last layer (float64).
        y: ``(N, P)`` unit-cube targets.
        weight, bias: the layer's ``(n_outputs, H)`` and ``(n_outputs,)`` parameters; rows ``:P``
            are the means and stay as they are.
        likelihood: supplies ``nll(raw, y)`` per map.

    Returns ``(weight, bias, nll_before, nll_after)``: new parameters (same dtype and device as
    the inputs) and the mean NLL per map before and after.
    """
    p = likelihood.n_params
    w = weight.detach().double().cpu()
    b = bias.detach().double().cpu()
    mu = (h @ w[:p].T + b[:p]).detach()
    ws, bs = w[p:].clone().requires_grad_(True), b[p:].clone().requires_grad_(True)

    def nll() -> Tensor:
        return likelihood.nll(torch.cat([mu, h @ ws.T + bs], dim=1), y).mean()

    with torch.no_grad():
        before = float(nll())
    opt = torch.optim.LBFGS([ws, bs], lr=1.0, max_iter=int(max_iter), tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        after = float(nll())
    if not math.isfinite(after) or after > before:  # keep what training found if the fit did not improve it
        return weight, bias, before, before
    new_w = torch.cat([w[:p], ws.detach()]).to(weight)
    new_b = torch.cat([b[:p], bs.detach()]).to(bias)
    return new_w, new_b, before, after


def refit_widths(network: nn.Module, likelihood, loader) -> dict:
    """Refit ``network``'s width rows in place on ``loader``'s maps; returns what was done (plain types)."""
    last = check_refittable(network, likelihood)
    h, y = head_inputs(network, loader)
    w, b, before, after = fit_width_rows(h, y, last.weight, last.bias, likelihood)
    with torch.no_grad():
        last.weight.copy_(w)
        last.bias.copy_(b)
    return {"n_maps": int(len(y)), "nll_before": before, "nll_after": after}


@torch.no_grad()
def view_averaged_gaussian(network: nn.Module, likelihood, loader,
                           tta: bool) -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
    """Eval-mode Gaussian predictive over ``loader``'s maps: ``loc (N,P)``, ``std (N,P)``, targets ``(N,P)``
    and simulation ids ``(N,)`` (each map its own simulation where the loader gives none).

    With ``tta`` (and a network that does not average the views itself, ``model.view_average``)
    each map's 8 dihedral views are averaged as the evaluator's ``tta=true`` does
    (:func:`average_gaussian_views`). Unit-cube space, float64.
    """
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    locs, stds, ys, sims = [], [], [], []
    try:
        for x, y, sim in loader:
            outs = [likelihood.predict(network(v.to(device)).double()) for v in evaluation_views(network, x, tta)]
            covs = [o["cov"] if "cov" in o else torch.diag_embed(o["var"]) for o in outs]
            loc, cov = average_gaussian_views(torch.stack([o["mean"] for o in outs]), torch.stack(covs))
            locs.append(loc.cpu())
            stds.append(torch.diagonal(cov, dim1=-2, dim2=-1).sqrt().cpu())
            ys.append(y.double())
            sims.append(np.full(len(y), -1) if sim is None else np.asarray(sim).reshape(-1))
    finally:
        network.train(was_training)
    sim_id = np.concatenate(sims)
    if (sim_id < 0).any():
        sim_id = np.arange(len(sim_id))
    return torch.cat(locs), torch.cat(stds), torch.cat(ys), sim_id


#: how :func:`fit_val_scale` fits the factor: ``coverage`` (the default of ``callbacks.refit_head``) or ``nll``
VAL_SCALE_FITS = ("coverage", "nll")


def check_val_scale_fit(fit: str, key: str) -> str:
    """``fit`` if it is one of :data:`VAL_SCALE_FITS`, else :class:`InputError` naming the config ``key``."""
    if fit not in VAL_SCALE_FITS:
        raise InputError(key, f"must be one of {' | '.join(VAL_SCALE_FITS)}, got {fit!r}")
    return fit


def val_width_scale(truth, loc, std, sim_id, fit: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The validation width factor ``(P,)`` of a Gaussian predictive (unit coordinates), and where it applies.

    ``nll``: :func:`fit_std_scaling` on every parameter (``s^2 = mean z^2``). ``coverage``: only the
    parameters whose validation maps the report's verdict flags
    (:func:`cosmoinfer.calibration.verdict.assess`: coverage error beyond what a calibrated predictive
    reaches on these simulations, or a width ratio off 1 beyond its sampling error by simulation) get
    a factor, :func:`fit_coverage_scaling`; the others keep 1. On 100 validation simulations the
    mean z^2 is noise-dominated: on the camels_like multifield head one simulation (mean z^2 = 16.8
    over its 15 maps) put A_AGN1's factor at 1.13 where 500 fresh simulations wanted 0.99, and the
    test coverage error went from 0.007 to 0.065. Returns ``(scale, flagged)`` (``flagged`` None for ``nll``).
    """
    from cosmoinfer.calibration.levels import DEFAULT_LEVELS
    from cosmoinfer.calibration.verdict import assess
    from cosmoinfer.posterior.bijection import Bijection
    from cosmoinfer.posterior.mixture import MixturePredictive

    check_val_scale_fit(fit, "val_scale_fit")
    truth, loc, std = (np.asarray(a, dtype=np.float64) for a in (truth, loc, std))
    if fit == "nll":
        return fit_std_scaling(truth, loc, std), None
    p = truth.shape[1]
    pred = MixturePredictive.from_gaussians(loc[:, None], (std**2)[:, None], Bijection.identity(p),
                                            [f"p{j}" for j in range(p)])
    flagged = assess(pred, truth, np.asarray(sim_id), np.random.default_rng(0), DEFAULT_LEVELS).flagged
    return np.where(flagged, fit_coverage_scaling(truth, loc, std), 1.0), flagged


def fit_val_scale(network: nn.Module, likelihood, loader, tta: bool, fit: str = "nll") -> dict:
    """Fit and set ``likelihood``'s per-parameter width scale on ``loader``'s maps; returns what was done.

    The scale is :func:`val_width_scale` (``fit``) of the predictive without any scale (an earlier
    one is dropped first); ``scale > 1``: the widths were too narrow on these maps.
    """
    likelihood.set_width_scale(None)
    loc, std, y, sim_id = view_averaged_gaussian(network, likelihood, loader, tta)
    scale, flagged = val_width_scale(y.numpy(), loc.numpy(), std.numpy(), sim_id, fit)
    likelihood.set_width_scale(scale)
    out = {"n_maps": int(len(y)), "n_sims": int(len(np.unique(sim_id))), "scale": [float(v) for v in scale],
           "fit": fit, "tta": bool(tta), "views": n_evaluation_views(network, tta)}
    if flagged is not None:
        out["flagged"] = [bool(v) for v in flagged]
    return out


def scale_on_val_maps(pl_module, val, eval_batch_size: int, tta: bool, record: str, who: str,
                      fit: str = "nll") -> dict:
    """:func:`fit_val_scale` on the dataset ``val``, stored in ``pl_module.meta``: ``width_scale`` and
    ``meta[record]["val_scale"]``; logged as ``who``. Used by RefitWidths and RefitHead alike."""
    loader = DataLoader(val, batch_size=int(eval_batch_size), shuffle=False, num_workers=0)
    scaled = fit_val_scale(pl_module.network, pl_module.likelihood, loader, tta, fit)
    pl_module.meta["width_scale"] = scaled["scale"]
    pl_module.meta[record]["val_scale"] = scaled
    log.info("%s: width scale per parameter on %d validation maps%s, fitted to the %s%s: %s", who, scaled["n_maps"],
             f" ({scaled['views']} views averaged)" if scaled["views"] > 1 else "",
             "coverage error" if fit == "coverage" else "NLL",
             " where the validation maps flag the widths" if fit == "coverage" else "",
             ", ".join(f"{v:.3f}" for v in scaled["scale"]))
    return scaled


class RefitWidths(pl.Callback):
    """At the end of training, refit the best checkpoint's widths on training maps in eval mode.

    The best checkpoint (``ModelCheckpoint.best_model_path``) is loaded into the module, its widths
    are refitted (:func:`refit_widths`) on up to ``max_maps`` training maps drawn with ``seed``,
    each in one random dihedral view when the data module augments, and the checkpoint is written
    again (atomically, through the trainer) with ``meta["width_refit"]`` recording the map count
    and the NLL before and after. ``last.ckpt`` keeps the raw training state for ``resume=true``.
    Without a checkpoint callback the module's current weights are refitted in memory. Every DDP
    rank fits the same maps, so the ranks stay identical. A likelihood without width outputs of
    its own (``loss=flow``, ``mdn``, ``mse`` ...: nothing to refit apart from the means) is left as
    trained, with a warning at set-up, so a preset that refits its Gaussian head's widths (e.g.
    ``experiment=grf_fisher``) still trains with ``loss=flow``; ``meta["width_refit"]`` then records
    ``{"skipped": reason}``.

    With ``val_scale`` a per-parameter width scale is then fitted on all validation maps
    (:func:`fit_val_scale`) and stored as ``meta["width_scale"]`` (and in
    ``meta["width_refit"]["val_scale"]``).

    Args:
        max_maps: most training maps used (a random subset beyond it).
        seed: seeds the subset and the dihedral views.
        val_scale: also fit one width factor per parameter on the validation maps.
        val_scale_tta: fit it on the 8 views' averaged predictive (for evaluation with ``tta=true``).
        val_scale_fit: ``nll`` (every parameter, ``s^2 = mean z^2``) or ``coverage`` (where the
            validation maps flag the widths, fitted to the coverage error: :func:`val_width_scale`).
            ``nll`` here, as the members the presets train were fitted (not in ``refit_widths.yaml``:
            ``+callbacks.refit_widths.val_scale_fit=coverage``); ``callbacks.refit_head``'s default is
            ``coverage``.
    """

    def __init__(self, max_maps: int = 50_000, seed: int = 0, val_scale: bool = False, val_scale_tta: bool = True,
                 val_scale_fit: str = "nll"):
        if int(max_maps) < 1:
            raise ValueError(f"RefitWidths: max_maps must be >= 1, got {max_maps}")
        self.max_maps, self.seed = int(max_maps), int(seed)
        self.val_scale, self.val_scale_tta = bool(val_scale), bool(val_scale_tta)
        self.val_scale_fit = check_val_scale_fit(val_scale_fit, "callbacks.refit_widths.val_scale_fit")
        self.skipped: str | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if pl_module.likelihood.name not in REFITTABLE:
            self.skipped = f"loss={pl_module.likelihood.name} has no width outputs separate from its means"
            log.warning("callbacks.refit_widths: %s; the widths are left as trained", self.skipped)
            pl_module.meta["width_refit"] = {"skipped": self.skipped}  # in every checkpoint
            return
        check_refittable(pl_module.network, pl_module.likelihood)  # fail before training, not after it

    def _loader(self, trainer) -> DataLoader:
        dm = trainer.datamodule
        ds = dm.datasets["train"]
        idx = np.arange(len(ds))
        if len(ds) > self.max_maps:
            idx = np.sort(np.random.default_rng(self.seed).choice(len(ds), self.max_maps, replace=False))
        return DataLoader(Subset(ds, idx.tolist()), batch_size=int(dm.eval_batch_size), shuffle=False,
                          num_workers=0)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.skipped is not None:
            return
        ckpt_cb = trainer.checkpoint_callback
        best = Path(ckpt_cb.best_model_path) if ckpt_cb is not None and ckpt_cb.best_model_path else None
        if best is not None and best.is_file():
            pl_module.load_state_dict(read_checkpoint(best)["state_dict"])
        with torch.random.fork_rng(devices=[]):  # the dihedral views; the caller's RNG state is left alone
            torch.manual_seed(self.seed)
            result = refit_widths(pl_module.network, pl_module.likelihood, self._loader(trainer))
        pl_module.meta["width_refit"] = dict(result, max_maps=self.max_maps, seed=self.seed)
        log.info("RefitWidths: NLL per map on %d training maps in eval mode %.4f -> %.4f",
                 result["n_maps"], result["nll_before"], result["nll_after"])
        if self.val_scale:
            dm = trainer.datamodule
            scale_on_val_maps(pl_module, dm.datasets["val"], dm.eval_batch_size, self.val_scale_tta, "width_refit",
                              "RefitWidths", self.val_scale_fit)
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics({f"refit/{k}": v for k, v in result.items()}, step=trainer.global_step)
            trainer.logger.save()
        if best is not None and best.is_file():
            trainer.save_checkpoint(best)
