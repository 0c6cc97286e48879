"""Turn trained networks into predictive distributions: single, deep ensemble, MC dropout, both.

Every network ("member") predicts, for each map, a Gaussian (or mixture) over the parameters in
unit-cube coordinates. Each component is mapped to physical units exactly
(:func:`cosmoinfer.data.priors.gaussian_to_physical`) and the components of all members and
dropout passes form one Gaussian mixture:

    mu* = mean_k mu_k,   var* = mean_k (var_k + mu_k²) − mu*²,
    aleatoric = mean_k var_k,   epistemic = var_k(mu_k)

MC dropout keeps only the dropout layers stochastic: BatchNorm stays in eval mode and its
running statistics never change. When dropout lives only in the head, the backbone runs once
per batch and the head ``T`` times. Every checkpoint is loaded exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from cosmoinfer.calibration.mixture import mixture_cov, mixture_moments
from cosmoinfer.data.priors import Prior, gaussian_to_physical
from cosmoinfer.data.transforms import dihedral
from cosmoinfer.errors import InputError
from cosmoinfer.training.checkpoint import LoadedModel, load_checkpoint


@dataclass
class Posterior:
    """Predictive distribution for ``N`` maps and ``P`` parameters, in physical units.

    ``member_mean`` / ``member_std`` are ``(K, N, P)``: the mixture components, one per network
    and dropout pass (``K = M`` for an ensemble, ``T`` for MC dropout, ``M*T`` for both), so the
    mixture is exactly ``mean_k N(member_mean_k, member_std_k²)``. ``cov`` ``(N, P, P)`` where the
    head predicts one.
    """

    mean: np.ndarray
    std: np.ndarray
    std_aleatoric: np.ndarray
    std_epistemic: np.ndarray
    member_mean: np.ndarray
    member_std: np.ndarray
    cov: np.ndarray | None = None
    truth: np.ndarray | None = None
    sim_id: np.ndarray | None = None
    param_names: list[str] = field(default_factory=list)
    task: str = "regression"

    def sample(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """``(n, N, P)`` draws from the Gaussian (full covariance where available) predictive."""
        rng = rng or np.random.default_rng(0)
        if self.cov is not None:
            chol = np.linalg.cholesky(self.cov + 1e-12 * np.eye(self.cov.shape[-1]))
            z = rng.standard_normal((n,) + self.mean.shape)
            return self.mean + np.einsum("nij,snj->sni", chol, z)
        return self.mean + self.std * rng.standard_normal((n,) + self.mean.shape)


def check_compatible(models: Sequence[LoadedModel]) -> None:
    """Members must agree on fields, parameters, priors and normalisation."""
    ref = models[0]
    for m in models[1:]:
        for key, what in (("fields", "fields"), ("param_names", "parameters"), ("priors", "priors")):
            if m.meta["data"][key] != ref.meta["data"][key]:
                raise InputError(m.path, f"ensemble members disagree on {what}: {m.meta['data'][key]} vs "
                                 f"{ref.meta['data'][key]} in {ref.path}")
        a, b = m.normalizer, ref.normalizer
        if not (np.allclose(a.mean, b.mean, rtol=1e-5) and np.allclose(a.std, b.std, rtol=1e-5)
                and np.array_equal(a.log, b.log)):
            raise InputError(m.path, f"ensemble members disagree on the normalisation statistics "
                             f"(trained on different data or splits than {ref.path})")
        if m.likelihood.task != ref.likelihood.task:
            raise InputError(m.path, "ensemble members mix classification and regression heads")


def _set_mc_dropout(network: nn.Module, on: bool) -> None:
    """Eval mode everywhere, then dropout layers (only) back in train mode when ``on``."""
    network.eval()
    if on:
        for mod in network.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                mod.train()


class Predictor:
    """Predictive distributions from one or more checkpoints.

    Args:
        models: checkpoint paths or :class:`LoadedModel` objects (each loaded once, kept in memory).
        mc_samples: dropout passes ``T`` per member (0: deterministic).
        tta: average each member's prediction over the 8 dihedral copies of a map (CMD's test-time
            augmentation): means and variances are averaged, not mixed.
        seed: seeds the dropout masks (a local generator state, restored afterwards).
    """

    def __init__(self, models: Iterable, mc_samples: int = 0, tta: bool = False, seed: int = 0,
                 device: str = "cpu"):
        self.models = [m if isinstance(m, LoadedModel) else load_checkpoint(m) for m in models]
        if not self.models:
            raise InputError("checkpoints", "no checkpoint given")
        check_compatible(self.models)
        self.mc_samples, self.tta, self.seed = int(mc_samples), bool(tta), int(seed)
        self.device = torch.device(device)
        for m in self.models:
            m.network.to(self.device)
        ref = self.models[0]
        self.priors: list[Prior] = ref.priors
        self.param_names = ref.param_names
        self.normalizer = ref.normalizer
        self.task = ref.likelihood.task
        if self.mc_samples and not any(isinstance(x, nn.modules.dropout._DropoutNd)
                                       for m in self.models for x in m.network.modules()):
            raise InputError(ref.path, "MC dropout asked for, but the network has no dropout layer")

    # ------------------------------------------------------------------ per-batch unit-space outputs
    @torch.no_grad()
    def _member_batch(self, model: LoadedModel, x: torch.Tensor) -> dict:
        """Unit-space component moments for one batch: ``mean``/``var`` ``(K, B, P)``, ``cov`` ``(K,B,P,P)``."""
        net, lik = model.network, model.likelihood
        views = [dihedral(x, k) for k in range(8)] if self.tta else [x]
        outs = []
        for v in views:
            if not self.mc_samples:
                _set_mc_dropout(net, False)
                outs.append([lik.predict(net(v))])
            elif net.dropout_in_head_only:
                _set_mc_dropout(net, True)
                feats = net.backbone(v)  # no dropout in here: computed once
                outs.append([lik.predict(net.head(feats)) for _ in range(self.mc_samples)])
            else:
                _set_mc_dropout(net, True)
                outs.append([lik.predict(net(v)) for _ in range(self.mc_samples)])
        _set_mc_dropout(net, False)
        res = {}
        for key in ("mean", "var", "cov"):
            if key in outs[0][0]:
                # (views, K, B, ...) -> average over views (TTA), keep the K components
                arr = torch.stack([torch.stack([o[key] for o in comp]) for comp in outs]).mean(0)
                res[key] = arr.double().cpu().numpy()
        return res

    def _physical(self, mean_u: np.ndarray, var_u: np.ndarray, cov_u: np.ndarray | None):
        mean, var = gaussian_to_physical(mean_u, var_u, self.priors)
        if self.task == "classification":
            mean, var = mean_u, var_u  # probabilities are already in their own units
        cov = None
        if cov_u is not None:
            sd_u = np.sqrt(np.clip(np.diagonal(cov_u, axis1=-2, axis2=-1), 1e-30, None))
            corr = cov_u / (sd_u[..., :, None] * sd_u[..., None, :])
            sd = np.sqrt(var)
            cov = corr * sd[..., :, None] * sd[..., None, :]
        return mean, var, cov

    # ------------------------------------------------------------------ public API
    def predict_batches(self, batches: Iterable) -> Posterior:
        """Predict for an iterable of ``(x, y, sim_id)`` batches (normalised maps, unit targets)."""
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        comp_mean, comp_var, comp_cov = [[] for _ in self.models], [[] for _ in self.models], \
            [[] for _ in self.models]
        truths, sims = [], []
        try:
            for batch in batches:
                x, y, sim = batch if isinstance(batch, (tuple, list)) else (batch, None, None)
                x = x.to(self.device)
                for i, m in enumerate(self.models):
                    r = self._member_batch(m, x)
                    comp_mean[i].append(r["mean"])
                    comp_var[i].append(r["var"])
                    comp_cov[i].append(r.get("cov"))
                if y is not None:
                    truths.append(y.double().numpy())
                    sims.append(sim.numpy())
        finally:
            torch.random.set_rng_state(gen_state)
        means, vars_, covs = [], [], []
        for i in range(len(self.models)):
            mu_u = np.concatenate(comp_mean[i], axis=1)  # (K, N, P)
            var_u = np.concatenate(comp_var[i], axis=1)
            cov_u = np.concatenate(comp_cov[i], axis=1) if comp_cov[i][0] is not None else None
            mu, var, cov = self._physical(mu_u, var_u, cov_u)
            means.append(mu)
            vars_.append(var)
            covs.append(cov)
        all_mean = np.concatenate(means)  # (M*K, N, P)
        all_var = np.concatenate(vars_)
        mean, var, alea, epi = mixture_moments(all_mean, all_var)
        cov = None
        if covs[0] is not None:
            cov = mixture_cov(all_mean, np.concatenate(covs))[1]
        truth = None
        if truths:
            from cosmoinfer.data.priors import from_unit

            truth = np.concatenate(truths)
            truth = truth if self.task == "classification" else from_unit(truth, self.priors)
        return Posterior(
            mean=mean, std=np.sqrt(var), std_aleatoric=np.sqrt(alea), std_epistemic=np.sqrt(epi),
            member_mean=all_mean, member_std=np.sqrt(all_var),
            cov=cov, truth=truth, sim_id=np.concatenate(sims) if sims else None,
            param_names=self.param_names, task=self.task)

    def predict_maps(self, maps: np.ndarray, batch_size: int = 256) -> Posterior:
        """Posterior for maps in physical units, ``(N, C, H, W)`` (or ``(N, H, W)`` for one field).

        The training run's normalisation (log10 and standardisation) is applied first.
        """
        maps = np.asarray(maps, dtype=np.float32)
        if maps.ndim == 3:
            maps = maps[:, None]
        n_ch = len(self.normalizer.mean)
        if maps.ndim != 4 or maps.shape[1] != n_ch:
            raise InputError("maps", f"expected (N, {n_ch}, H, W) maps in physical units, got {maps.shape}")
        x = torch.from_numpy(self.normalizer(maps))
        return self.predict_batches(x[i:i + batch_size] for i in range(0, len(x), batch_size))


def load_posterior_model(checkpoints, **kwargs) -> Predictor:
    """Notebook entry point: ``load_posterior_model(["m0/checkpoints/best.ckpt", ...]).predict_maps(maps)``."""
    if isinstance(checkpoints, (str, bytes)) or hasattr(checkpoints, "__fspath__"):
        checkpoints = [checkpoints]
    return Predictor(list(checkpoints), **kwargs)
