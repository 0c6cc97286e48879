"""Turn trained networks into predictive distributions: single, deep ensemble, MC dropout, both.

Every network ("member") predicts, for each map, a Gaussian (or mixture) over the parameters in
unit-cube coordinates. Each component is mapped to physical units exactly
(:func:`cosmoinfer.data.priors.gaussian_to_physical`) and the components of all members and
dropout passes form one Gaussian mixture:

    mu* = mean_k mu_k,   var* = mean_k (var_k + mu_k²) − mu*²,
    aleatoric = mean_k var_k,   epistemic = var_k(mu_k)

MC dropout keeps only the dropout layers stochastic: BatchNorm stays in eval mode and its
running statistics never change. When dropout lives only in the head, the backbone runs once
per batch and the head ``T`` times. A network without active dropout (``model.dropout=0``) gives
``T`` identical passes, i.e. zero epistemic spread, with a warning. Every checkpoint is loaded
exactly once, and members must agree on fields, parameters, priors, split and normalisation.

Classification (``bernoulli`` head): each component is the probability ``p_k`` of class 1 (from
the logit, in float64), with variance ``p_k (1 - p_k)``; the mixture of Bernoullis is the
Bernoulli with ``p = mean_k p_k``, whose variance ``p (1 - p)`` splits the same way into
aleatoric and epistemic parts.

Notebook use::

    model = load_posterior_model("multirun/train/2024-01-01_12-00-00")   # or a list of checkpoints
    post = model.predict_maps(maps)        # (N, C, H, W) or (N, H, W) maps in physical units
    post.mean, post.std, post.std_aleatoric, post.std_epistemic, post.cov, post.sample(1000)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from cosmoinfer.posterior.member_moments import mixture_cov, mixture_moments
from cosmoinfer.data.priors import Prior, gaussian_to_physical
from cosmoinfer.data.transforms import dihedral
from cosmoinfer.errors import InputError
from cosmoinfer.training.checkpoint import LoadedModel, load_checkpoint

log = logging.getLogger("cosmoinfer.predictor")

#: Classification probabilities are kept in [PROB_EPS, 1 - PROB_EPS].
PROB_EPS = 1e-12


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


def _split_ids(meta: dict) -> dict:
    split = meta.get("split") or {}
    return {k: [int(i) for i in split.get(k, [])] for k in ("train", "val", "test")}


def check_compatible(models: Sequence[LoadedModel]) -> None:
    """Members must agree on fields, parameters, priors, input grid, split and normalisation.

    The split matters: the evaluator takes the first member's test split, so a member trained on
    another split has seen some of those test simulations. Raises :class:`InputError` naming the
    first checkpoint that disagrees with the first one.
    """
    ref = models[0]
    for m in models[1:]:
        for key, what in (("fields", "fields"), ("param_names", "parameters (data.params)"),
                          ("priors", "priors"), ("grid", "map size (grid)")):
            if m.meta["data"].get(key) != ref.meta["data"].get(key):
                raise InputError(m.path, f"ensemble members disagree on {what}: {m.meta['data'].get(key)} vs "
                                 f"{ref.meta['data'].get(key)} in {ref.path}; train all members with the same "
                                 f"data config")
        if _split_ids(m.meta["data"]) != _split_ids(ref.meta["data"]):
            raise InputError(m.path, f"ensemble members were trained on different train/val/test splits than "
                             f"{ref.path}; train all members with the same data.split_seed (or data.split_file)")
        a, b = m.normalizer, ref.normalizer
        if not (np.allclose(a.mean, b.mean, rtol=1e-5) and np.allclose(a.std, b.std, rtol=1e-5)
                and np.array_equal(a.log, b.log)):
            raise InputError(m.path, f"ensemble members disagree on the normalisation statistics "
                             f"(trained on different data or splits than {ref.path})")
        if m.likelihood.task != ref.likelihood.task:
            raise InputError(m.path, "ensemble members mix classification and regression heads")


def _has_active_dropout(network: nn.Module) -> bool:
    return any(isinstance(x, nn.modules.dropout._DropoutNd) and x.p > 0 for x in network.modules())


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
        seed: seeds the dropout masks (every call of :meth:`predict_batches` starts from it; the
            caller's random state is restored afterwards).
        device: where the networks run (``cpu``, ``cuda``, ``cuda:1``).
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
        if self.mc_samples:
            for m in self.models:
                if not _has_active_dropout(m.network):
                    log.warning("%s: MC dropout asked for, but the network has no active dropout layer "
                                "(model.dropout=0?): its %d passes are identical, so its epistemic spread "
                                "is zero", m.path, self.mc_samples)

    # ------------------------------------------------------------------ per-batch unit-space outputs
    @torch.no_grad()
    def _member_batch(self, model: LoadedModel, x: torch.Tensor) -> dict:
        """Unit-space component moments for one batch: ``mean``/``var`` ``(K, B, P)``, ``cov`` ``(K,B,P,P)``."""
        net, lik = model.network, model.likelihood
        views = [dihedral(x, k) for k in range(8)] if self.tta else [x]
        predict = self._predict_fn(lik)
        outs = []
        try:
            for v in views:
                if not self.mc_samples:
                    _set_mc_dropout(net, False)
                    outs.append([predict(net(v))])
                elif not _has_active_dropout(net):  # deterministic: T identical components
                    _set_mc_dropout(net, False)
                    outs.append([predict(net(v))] * self.mc_samples)
                elif net.dropout_in_head_only:
                    _set_mc_dropout(net, True)
                    feats = net.features(v)  # no dropout in the backbone: computed once
                    outs.append([predict(net.head(feats)) for _ in range(self.mc_samples)])
                else:
                    _set_mc_dropout(net, True)
                    outs.append([predict(net(v)) for _ in range(self.mc_samples)])
        finally:
            _set_mc_dropout(net, False)
        res = {}
        for key in ("mean", "var", "cov"):
            if key in outs[0][0]:
                # (views, K, B, ...) -> average over views (TTA), keep the K components
                arr = torch.stack([torch.stack([o[key] for o in comp]) for comp in outs]).mean(0)
                res[key] = arr.double().cpu().numpy()
        return res

    def _predict_fn(self, lik):
        if self.task != "classification":
            return lik.predict

        def predict(raw: torch.Tensor) -> dict:
            # probability from the logit in float64, kept off exactly 0 and 1 (float32 sigmoid
            # saturates at |logit| > 17 and a zero Bernoulli width is not a valid member_std)
            p = torch.sigmoid(lik.predict(raw)["logit"].double()).clamp(PROB_EPS, 1 - PROB_EPS)
            return {"mean": p, "var": p * (1 - p)}

        return predict

    def _physical(self, mean_u: np.ndarray, var_u: np.ndarray, cov_u: np.ndarray | None):
        if self.task == "classification":
            return mean_u, var_u, None  # probabilities are already in their own units
        mean, var = gaussian_to_physical(mean_u, var_u, self.priors)
        cov = None
        if cov_u is not None:
            sd_u = np.sqrt(np.clip(np.diagonal(cov_u, axis1=-2, axis2=-1), 1e-30, None))
            corr = cov_u / (sd_u[..., :, None] * sd_u[..., None, :])
            sd = np.sqrt(var)
            cov = corr * sd[..., :, None] * sd[..., None, :]
        return mean, var, cov

    # ------------------------------------------------------------------ public API
    def predict_batches(self, batches: Iterable, target_priors: Sequence[Prior] | None = None) -> Posterior:
        """Predict for an iterable of ``(x, y, sim_id)`` batches (normalised maps, unit targets) or of
        bare ``x`` tensors.

        ``target_priors``: the priors the data used to scale ``y`` to the unit cube (default: the
        checkpoint's). They differ from the checkpoint's when evaluating on another suite whose
        manifest states other priors; predictions are always in the checkpoint's physical units.
        """
        comp_mean, comp_var, comp_cov = [[] for _ in self.models], [[] for _ in self.models], \
            [[] for _ in self.models]
        truths, sims = [], []
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the caller's RNG state is left untouched
            torch.manual_seed(self.seed)
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
        if not comp_mean[0]:
            raise InputError("maps", "nothing to predict: no batch given")
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
            if self.task != "classification":
                truth = from_unit(truth, list(target_priors) if target_priors is not None else self.priors)
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
    """Notebook entry point: ``load_posterior_model(["m0/checkpoints/best.ckpt", ...]).predict_maps(maps)``.

    ``checkpoints``: a checkpoint path, a list of them, a folder (every ``*/checkpoints/best.ckpt``
    below it, e.g. a ``-m seed=0,1,2`` multirun folder) or a glob pattern. ``kwargs`` go to
    :class:`Predictor` (``mc_samples``, ``tta``, ``seed``, ``device``).
    """
    from cosmoinfer.uncertainty.evaluate import resolve_checkpoints

    items = checkpoints if isinstance(checkpoints, (list, tuple)) else [checkpoints]
    models: list = []
    for c in items:
        models.extend([c] if isinstance(c, LoadedModel) else resolve_checkpoints(str(c)))
    return Predictor(models, **kwargs)
