"""Turn trained networks into predictive distributions: single, deep ensemble, MC dropout, both, BNN.

Every network ("member") predicts, for each map, a Gaussian or a Gaussian mixture over the
parameters in the network's unit coordinates (each parameter scaled to [0, 1] by its prior, in log
space for a log-uniform one). The evaluator keeps the *whole* predictive: every component of every
network draw (member x dropout pass) in one :class:`~cosmoinfer.posterior.MixturePredictive`,

    q(u | x) = (1/M) sum_m (1/T) sum_t sum_k w_mtk N(u; mu_mtk, L_mtk L_mtk^T)

pushed to physical units by the prior bijections (affine for uniform priors, exp for log-uniform
ones, so those marginals are lognormal). Components per draw: one for the Gaussian heads
(``gaussian_nll``, ``mse``, ``moment``: ``L = diag(std)``; ``gaussian_fullcov``: its Cholesky
factor), ``K`` for an MDN.

Summaries (physical units, exact): ``mean``/``std``/``cov`` are the predictive's moments (the
lognormal ones where a prior is log-uniform); grouping the components by network draw ``d``,

    aleatoric² = mean_d Var_d,   epistemic² = Var_d(mean_d)   (population variance)

so ``std² = aleatoric² + epistemic²`` (law of total variance), and one network without dropout
(an MDN included) has zero epistemic spread. ``member_mean``/``member_std`` are the draws' own
moments.

Test-time augmentation (``tta``, CMD's 8 dihedral copies of each map): a single-Gaussian head's
mean and covariance are averaged over the 8 views (its factor is the Cholesky factor of the
averaged covariance); an MDN's 8 views are mixed (each view's components with weight ``w / 8``).

MC dropout keeps only the dropout layers stochastic: BatchNorm stays in eval mode and its
running statistics never change. When dropout lives only in the head, the backbone runs once
per batch (and view) and the head ``T`` times. A pass is one network draw: with TTA its 8 views
share one set of dropout masks, otherwise averaging the views would average 8 independent masks
and shrink the epistemic spread by about sqrt(8). Each mask is a hash of ``(seed, member, pass,
layer, map index)`` (:mod:`cosmoinfer.uncertainty.dropout_masks`), so a map's predictive does not
depend on the batch size or on the other maps of its batch. A network without active dropout
(``model.dropout=0``) gives ``T`` identical passes, i.e. zero epistemic spread, with a warning.
BNN (``bnn_samples``, a head with ``model.bayesian_head=true``): pass ``t`` is one draw of the
variational weights, keyed by ``(seed, member, t, layer)`` and shared by every map and view of the
pass; the backbone (deterministic) runs once and the head ``T`` times; the passes are mixed exactly
like MC-dropout passes. Deterministic evaluators use the weight means.
Every checkpoint is loaded exactly once, and members must agree on fields, parameters, priors,
split and normalisation.

Flows (``loss=flow``, :mod:`cosmoinfer.models.flow`): every network draw and TTA view is one
flow, and the predictive is their equal-weight mixture, a
:class:`~cosmoinfer.posterior.flow.FlowPredictive` (log-density by log-mean-exp over the
components; ``flow_samples`` stratified draws per map, stored with their log-densities and the
log-density at the truth). Summaries come from the draws: ``member_mean``/``member_std`` are each
network draw's (its views' draws together), population moments, so again
``std² = aleatoric² + epistemic²``; ``cov`` is the draws' covariance. Ensemble members must share
the flow's configuration.

Classification (``bernoulli`` head): each component is the probability ``p_k`` of class 1 (from
the logit, in float64), with variance ``p_k (1 - p_k)``; the mixture of Bernoullis is the
Bernoulli with ``p = mean_k p_k``, whose variance ``p (1 - p)`` splits the same way into
aleatoric and epistemic parts. There is no Gaussian predictive (``predictive`` is ``None``).

Notebook use::

    model = load_posterior_model("multirun/train/2024-01-01_12-00-00")   # or a list of checkpoints
    post = model.predict_maps(maps)        # (N, C, H, W) or (N, H, W) maps in physical units
    post.mean, post.std, post.std_aleatoric, post.std_epistemic
    post.cov                               # None unless the heads predict covariances (gaussian_fullcov, mdn)
    post.predictive.log_prob(theta), post.sample(1000, truncate=True)   # predictive: None for classification

Maps the model cannot handle (another size or field count, NaN/inf pixels, maps already
log10-transformed or far outside the training range) raise :class:`InputError`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from cosmoinfer.data.priors import Prior, from_unit
from cosmoinfer.data.validate import check_maps
from cosmoinfer.errors import InputError
from cosmoinfer.models.likelihood_base import average_gaussian_views
from cosmoinfer.models.network import evaluation_views
from cosmoinfer.posterior.bijection import Bijection
from cosmoinfer.posterior.flow import FlowPredictive, component_moments
from cosmoinfer.posterior.member_moments import mixture_moments
from cosmoinfer.posterior.mixture import MixturePredictive
from cosmoinfer.training.checkpoint import LoadedModel, load_checkpoint
from cosmoinfer.uncertainty.checkpoints import resolve_checkpoints
from cosmoinfer.uncertainty.dropout_masks import MapKeyedDropout
from cosmoinfer.uncertainty.weight_draws import KeyedWeightDraws

log = logging.getLogger("cosmoinfer.predictor")

#: Classification probabilities are kept in [PROB_EPS, 1 - PROB_EPS].
PROB_EPS = 1e-12


@dataclass
class Posterior:
    """Predictive distribution for ``N`` maps and ``P`` parameters, in physical units.

    ``predictive``: the whole predictive (:class:`MixturePredictive`, unit-space components and
    the prior bijection). ``mean``, ``std`` ``(N, P)`` and ``cov`` ``(N, P, P)`` are its exact
    physical moments. ``member_mean`` / ``member_std`` ``(D, N, P)`` are the moments of each
    network draw (``D = M`` members, ``T`` dropout passes, or ``M*T``); ``std_aleatoric`` =
    sqrt(mean of the draws' variances), ``std_epistemic`` = sqrt(variance of the draws' means), so
    ``std² = std_aleatoric² + std_epistemic²``.

    Always set: ``mean``, ``std``, ``std_aleatoric``, ``std_epistemic``, ``member_mean``,
    ``member_std``, ``param_names``, ``task``. **May be** ``None``:

    - ``cov``: ``None`` unless every network's head predicts a covariance (``loss=gaussian_fullcov``
      or ``loss=mdn``); with the default diagonal head (``gaussian_nll``), ``mse``, ``moment`` and
      for classification it is ``None`` (use ``std``, or ``predictive`` for correlations);
    - ``predictive``: ``None`` for classification (``bernoulli`` head; :meth:`sample` then draws
      from a Gaussian with ``mean`` / ``std``);
    - ``truth``, ``sim_id``: ``None`` for maps given without labels
      (:meth:`Predictor.predict_maps`, bare tensors to :meth:`Predictor.predict_batches`); set
      when evaluating a data split (``cosmoinfer-evaluate``).
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
    predictive: MixturePredictive | FlowPredictive | None = None

    def sample(self, n: int, rng: np.random.Generator | None = None, truncate: bool = False) -> np.ndarray:
        """``(n, N, P)`` physical draws from the predictive.

        ``truncate``: draws restricted to the prior box (see :meth:`MixturePredictive.sample`).
        Without a predictive (classification), draws of the Gaussian with ``mean``/``std``.
        """
        rng = rng or np.random.default_rng(0)
        if self.predictive is not None:
            return self.predictive.sample(int(n), rng, truncate=truncate)
        return self.mean + self.std * rng.standard_normal((n,) + self.mean.shape)


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
            mine, theirs = getattr(m.data, key), getattr(ref.data, key)
            if mine != theirs:
                if key == "priors":
                    mine, theirs = [p.to_dict() for p in mine], [p.to_dict() for p in theirs]
                raise InputError(m.path, f"ensemble members disagree on {what}: {mine} vs {theirs} in {ref.path}; "
                                 f"train all members with the same data config")
        if m.data.split_ids() != ref.data.split_ids():
            raise InputError(m.path, f"ensemble members were trained on different train/val/test splits than "
                             f"{ref.path}; train all members with the same data.split_seed (or data.split_file)")
        a, b = m.normalizer, ref.normalizer
        if not (np.allclose(a.mean, b.mean, rtol=1e-5) and np.allclose(a.std, b.std, rtol=1e-5)
                and np.array_equal(a.log, b.log)):
            raise InputError(m.path, f"ensemble members disagree on the normalisation statistics "
                             f"(trained on different data or splits than {ref.path})")
        if m.likelihood.task != ref.likelihood.task:
            raise InputError(m.path, "ensemble members mix classification and regression heads")


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Full float32 convolutions and matmuls on a CUDA ``device`` (TF32 off), restored afterwards.

    cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by default on Ampere and newer GPUs, and
    picks its algorithm by the batch shape, so a map's prediction could change with
    ``data.eval_batch_size`` at TF32 precision. On the CPU nothing changes: predictions there agree
    across batch sizes to float32 rounding (``tests/test_reliability_refusals.py``).
    """
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _has_active_dropout(network: nn.Module) -> bool:
    return any(isinstance(x, nn.modules.dropout._DropoutNd) and x.p > 0 for x in network.modules())


def _set_mc_dropout(network: nn.Module, on: bool) -> None:
    """Eval mode everywhere, then dropout layers (only) back in train mode when ``on``."""
    network.eval()
    if on:
        for mod in network.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                mod.train()


def _head_components(lik, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One view's unit-space components in float64: ``log_w (B,K)``, ``loc (B,K,P)``, ``tril (B,K,P,P)``."""
    raw = raw.double()
    if hasattr(lik, "components"):  # mixture density network
        log_w, loc, tril = lik.components(raw)
        return log_w, loc, tril
    out = lik.predict(raw)
    mean = out["mean"]
    if "scale_tril" in out:
        tril = out["scale_tril"]
    elif "cov" in out:
        tril = torch.linalg.cholesky(out["cov"])
    else:
        tril = torch.diag_embed(out["std"])
    return mean.new_zeros(mean.shape[0], 1), mean[:, None], tril[:, None]


def _combine_views(lik, comps: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test-time augmentation: a mixture head mixes the views, a Gaussian head averages them.

    Mixture: every view's components with weight ``w / V``. Gaussian: mean and covariance averaged
    over the ``V`` views, factor = Cholesky factor of the averaged covariance.
    """
    if len(comps) == 1:
        return comps[0]
    v = len(comps)
    if hasattr(lik, "components"):
        return (torch.cat([c[0] for c in comps], dim=1) - math.log(v), torch.cat([c[1] for c in comps], dim=1),
                torch.cat([c[2] for c in comps], dim=1))
    loc, cov = average_gaussian_views(torch.stack([c[1] for c in comps]),
                                      torch.stack([c[2] @ c[2].transpose(-1, -2) for c in comps]))
    return comps[0][0], loc, torch.linalg.cholesky(0.5 * (cov + cov.transpose(-1, -2)))


class Predictor:
    """Predictive distributions from one or more checkpoints.

    Args:
        models: checkpoint paths or :class:`LoadedModel` objects (each loaded once, kept in memory).
        mc_samples: dropout passes ``T`` per member (0: deterministic).
        bnn_samples: weight draws ``T`` per member of a Bayesian network (``model.bayesian_head``;
            0: its weight means). A network without variational weights is refused.
        tta: use the 8 dihedral copies of each map (CMD's test-time augmentation): a Gaussian head's
            means and covariances are averaged over them, an MDN's components mixed; in MC dropout
            the 8 copies of one pass share its dropout masks.
        seed: seeds the dropout masks (every call of :meth:`predict_batches` starts from it; the
            caller's random state is restored afterwards).
        device: where the networks run (``cpu``, ``cuda``, ``cuda:1``).
        flow_samples: draws per map stored for a flow head (``loss=flow``; at least one per component).
    """

    def __init__(self, models: Iterable, mc_samples: int = 0, tta: bool = False, seed: int = 0,
                 device: str = "cpu", flow_samples: int = 1000, bnn_samples: int = 0):
        self.models = [m if isinstance(m, LoadedModel) else load_checkpoint(m) for m in models]
        if not self.models:
            raise InputError("checkpoints", "no checkpoint given")
        check_compatible(self.models)
        self.mc_samples, self.tta, self.seed = int(mc_samples), bool(tta), int(seed)
        self.bnn_samples = int(bnn_samples)
        if self.mc_samples and self.bnn_samples and self.mc_samples != self.bnn_samples:
            raise InputError("evaluator.n_samples", f"MC dropout ({self.mc_samples} passes) and BNN weight draws "
                             f"({self.bnn_samples}) must use the same number of passes")
        if self.bnn_samples:
            for m in self.models:
                if not getattr(m.network, "is_bayesian", False):
                    raise InputError(m.path, "evaluator=bnn needs a Bayesian network, but this checkpoint's head "
                                     "has deterministic weights; train with model.bayesian_head=true, or use "
                                     "evaluator=single or mc_dropout")
        self.device = torch.device(device)
        for m in self.models:
            m.network.to(self.device)
        ref = self.models[0]
        self.priors: list[Prior] = ref.priors
        self.param_names = ref.param_names
        self.normalizer = ref.normalizer
        self.task = ref.likelihood.task
        self.is_flow, self.flow_samples = ref.likelihood.name == "flow", int(flow_samples)
        for m in self.models[1:]:
            if (m.likelihood.name == "flow") != self.is_flow or (self.is_flow and m.meta["loss"] != ref.meta["loss"]):
                raise InputError(m.path, f"ensemble members mix likelihood heads ({m.meta['loss']} vs "
                                 f"{ref.meta['loss']} in {ref.path}); flows mix only with flows of one configuration")
        if self.mc_samples:
            for m in self.models:
                if not _has_active_dropout(m.network):
                    log.warning("%s: MC dropout asked for, but the network has no active dropout layer "
                                "(model.dropout=0?): its %d passes are identical, so its epistemic spread "
                                "is zero", m.path, self.mc_samples)

    @property
    def n_passes(self) -> int:
        return max(self.mc_samples, self.bnn_samples, 1)

    # ------------------------------------------------------------------ raw network outputs
    #: the views of one MC-dropout pass share its masks (False only to reproduce the old, wrong way)
    share_view_masks = True

    @torch.no_grad()
    def _raw_passes(self, member: int, x: torch.Tensor, first: int) -> list[list[torch.Tensor]]:
        """Raw outputs ``[pass][view] -> (B, n_outputs)`` of one member on the maps ``first, first+1, ...``.

        With MC dropout, each dropout mask is a hash of ``(seed, member, pass, layer, map index)``
        (:class:`~cosmoinfer.uncertainty.dropout_masks.MapKeyedDropout`): a map's prediction does not
        depend on the batch it sits in, and the views of one pass share its masks. With BNN weight
        draws (``bnn_samples``), pass ``t`` is one draw of the variational weights keyed by
        ``(seed, member, t, layer)`` (:class:`~cosmoinfer.uncertainty.weight_draws.KeyedWeightDraws`),
        shared by every map and view of the pass.
        """
        net = self.models[member].network
        views = evaluation_views(net, x, self.tta)
        dropout = bool(self.mc_samples) and _has_active_dropout(net)
        weights = bool(self.bnn_samples) and getattr(net, "is_bayesian", False)
        try:
            if not dropout and not weights:  # deterministic: identical passes
                _set_mc_dropout(net, False)
                outs = [net(v) for v in views]
                return [outs] * self.n_passes
            _set_mc_dropout(net, dropout)
            if not dropout or net.dropout_in_head_only:  # only the head is stochastic: backbone once
                feats = [net.features(v) for v in views]

                def run(k):
                    return net.head(feats[k])
            else:
                def run(k):
                    return net(views[k])
            maps = torch.arange(first, first + x.shape[0], dtype=torch.int64)
            passes = []
            with contextlib.ExitStack() as stack:
                masks = stack.enter_context(MapKeyedDropout(net, self.seed, member)) if dropout else None
                draws = stack.enter_context(KeyedWeightDraws(net, self.seed, member)) if weights else None
                for t in range(self.n_passes):
                    if draws is not None:
                        draws.set(t)
                    outs = []
                    for k in range(len(views)):
                        if masks is not None:
                            masks.set(t, maps, view=0 if self.share_view_masks else k)
                        outs.append(run(k))
                    passes.append(outs)
            return passes
        finally:
            _set_mc_dropout(net, False)

    @torch.no_grad()
    def _member_batch(self, member: int, x: torch.Tensor, first: int) -> list[tuple]:
        """One member on one batch, per pass: ``(weights (B,K), loc (B,K,P), tril (B,K,P,P))`` in unit
        coordinates (regression) or ``(p (B,1), var (B,1))`` (classification), float64 numpy."""
        lik = self.models[member].likelihood
        res, done = [], {}
        for views in self._raw_passes(member, x, first):
            if id(views) not in done:  # identical deterministic passes are converted once
                if self.is_flow:  # the flows' parameters, (B, V, n_outputs)
                    done[id(views)] = (torch.stack(views, dim=1).float().cpu().numpy(),)
                elif self.task == "classification":
                    p = [self._probability(lik, r) for r in views]
                    done[id(views)] = (torch.stack(p).mean(0).cpu().numpy(),
                                       torch.stack([q * (1 - q) for q in p]).mean(0).cpu().numpy())
                else:
                    log_w, loc, tril = _combine_views(lik, [_head_components(lik, r) for r in views])
                    done[id(views)] = (log_w.exp().cpu().numpy(), loc.cpu().numpy(), tril.cpu().numpy())
            res.append(done[id(views)])
        return res

    @staticmethod
    def _probability(lik, raw: torch.Tensor) -> torch.Tensor:
        # probability from the logit in float64, kept off exactly 0 and 1 (float32 sigmoid
        # saturates at |logit| > 17 and a zero Bernoulli width is not a valid member_std)
        return torch.sigmoid(lik.predict(raw)["logit"].double()).clamp(PROB_EPS, 1 - PROB_EPS)

    # ------------------------------------------------------------------ public API
    def predict_batches(self, batches: Iterable, target_priors: Sequence[Prior] | None = None) -> Posterior:
        """Predict for an iterable of ``(x, y, sim_id)`` batches (normalised maps, unit targets) or of
        bare ``x`` tensors.

        ``target_priors``: the priors the data used to scale ``y`` to the unit cube (default: the
        checkpoint's). They differ from the checkpoint's when evaluating on another suite whose
        manifest states other priors; predictions are always in the checkpoint's physical units.
        """
        n_draws = len(self.models) * self.n_passes
        parts: list[list] = [[] for _ in range(n_draws)]  # per draw (member-major), per batch
        truths, sims = [], []
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        # the caller's RNG state is left untouched; full float32 on GPUs (see exact_float32)
        with torch.random.fork_rng(devices=cuda), exact_float32(self.device):
            first = 0  # index of the batch's first map in evaluation order (keys the dropout masks)
            for batch in batches:
                x, y, sim = batch if isinstance(batch, (tuple, list)) else (batch, None, None)
                x = x.to(self.device)
                for i in range(len(self.models)):
                    for t, comp in enumerate(self._member_batch(i, x, first)):
                        parts[i * self.n_passes + t].append(comp)
                first += x.shape[0]
                if y is not None:
                    truths.append(y.double().numpy())
                    sims.append(sim.numpy())
        if not parts[0]:
            raise InputError("maps", "nothing to predict: no batch given")
        draws = [tuple(np.concatenate(a, axis=0) for a in zip(*d)) for d in parts]
        truth = None
        if truths:
            truth = np.concatenate(truths)
            if self.task != "classification":
                truth = from_unit(truth, list(target_priors) if target_priors is not None else self.priors)
        sim_id = np.concatenate(sims) if sims else None
        if self.task == "classification":
            member_mean = np.stack([d[0] for d in draws])
            member_var = np.stack([d[1] for d in draws])
            mean, var, alea, epi = mixture_moments(member_mean, member_var)
            return Posterior(mean=mean, std=np.sqrt(var), std_aleatoric=np.sqrt(alea), std_epistemic=np.sqrt(epi),
                             member_mean=member_mean, member_std=np.sqrt(member_var), truth=truth, sim_id=sim_id,
                             param_names=self.param_names, task=self.task)
        if self.is_flow:
            return self._flow_posterior(draws, truth, sim_id)
        return self._mixture_posterior(draws, truth, sim_id)

    def _flow_posterior(self, draws: list[tuple], truth, sim_id) -> Posterior:
        """The equal-weight mixture of the ``D`` network draws' flows (each with its ``V`` views)."""
        raw = np.concatenate([d[0] for d in draws], axis=1)  # (N, D * V, n_outputs), draw-major
        c = raw.shape[1]
        log.info("flows: %d draws per map from a mixture of %d flow(s), log-densities by log-mean-exp "
                 "(cost ~ draws x flows per map)", c * max(2, math.ceil(self.flow_samples / c)), c)
        q = FlowPredictive.from_raw(self.models[0].likelihood, raw, Bijection.from_priors(self.priors),
                                    self.param_names, self.flow_samples, truth, self.seed)
        member_mean, member_cov = component_moments(q.samples, len(draws))  # (D, N, P), (D, N, P, P)
        member_var = np.diagonal(member_cov, axis1=-2, axis2=-1)
        mean = member_mean.mean(0)
        dev = member_mean - mean
        cov = (member_cov + dev[..., :, None] * dev[..., None, :]).mean(0)
        return Posterior(
            mean=mean, std=np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1)), std_aleatoric=np.sqrt(member_var.mean(0)),
            std_epistemic=np.sqrt((dev**2).mean(0)), member_mean=member_mean, member_std=np.sqrt(member_var),
            cov=0.5 * (cov + np.swapaxes(cov, -1, -2)), truth=truth, sim_id=sim_id,
            param_names=list(self.param_names), task=self.task, predictive=q)

    def _mixture_posterior(self, draws: list[tuple], truth, sim_id) -> Posterior:
        """The predictive of ``D`` equally weighted network draws, each ``(w (N,K_d), loc, tril)``."""
        bij = Bijection.from_priors(self.priors)
        d = len(draws)
        member_mean, member_cov = [], []
        for w, loc, tril in draws:  # each draw's own mixture, moments in physical units
            m, c = MixturePredictive(w, loc, tril, bij, self.param_names).moments()
            member_mean.append(m)
            member_cov.append(c)
        member_mean, member_cov = np.stack(member_mean), np.stack(member_cov)  # (D, N, P), (D, N, P, P)
        member_var = np.diagonal(member_cov, axis1=-2, axis2=-1)
        # law of total covariance over the draws (equal weights): the predictive's exact moments,
        # computed draw by draw instead of on all (N, sum K_d, P, P) components at once
        mean = member_mean.mean(0)
        dev = member_mean - mean
        cov = (member_cov + dev[..., :, None] * dev[..., None, :]).mean(0)
        cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
        alea, epi = member_var.mean(0), (dev**2).mean(0)
        weights = np.concatenate([w / w.sum(axis=1, keepdims=True) / d for w, _, _ in draws], axis=1)
        predictive = MixturePredictive(weights, np.concatenate([x[1] for x in draws], axis=1),
                                       np.concatenate([x[2] for x in draws], axis=1), bij, list(self.param_names))
        has_cov = all(m.likelihood.has_cov for m in self.models)
        return Posterior(
            mean=mean, std=np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1)), std_aleatoric=np.sqrt(alea),
            std_epistemic=np.sqrt(epi), member_mean=member_mean, member_std=np.sqrt(member_var),
            cov=cov if has_cov else None, truth=truth, sim_id=sim_id, param_names=list(self.param_names),
            task=self.task, predictive=predictive)

    def predict_maps(self, maps: np.ndarray, batch_size: int = 256) -> Posterior:
        """Posterior for maps in physical units, ``(N, C, H, W)`` (or ``(N, H, W)`` for one field).

        The training run's normalisation (log10 and standardisation) is applied first. Maps the
        model cannot handle are refused with an :class:`InputError` naming the map and the problem
        (see :func:`cosmoinfer.data.validate.check_maps`): another shape, field count or map size
        than the training maps, NaN or inf pixels, non-positive values in a log10-transformed
        field, and maps far outside the range of the training maps (e.g. already log10-transformed).
        """
        data = self.models[0].data
        grid = int(data.grid)
        x = torch.from_numpy(check_maps(maps, self.normalizer, expected_hw=(grid, grid), where="maps",
                                        fields=list(data.fields)))
        return self.predict_batches(x[i:i + batch_size] for i in range(0, len(x), batch_size))


def load_posterior_model(checkpoints, **kwargs) -> Predictor:
    """Notebook entry point: ``load_posterior_model(["m0/checkpoints/best.ckpt", ...]).predict_maps(maps)``.

    ``checkpoints``: a checkpoint path, a list of them, a folder (every ``*/checkpoints/best.ckpt``
    below it, e.g. a ``-m seed=0,1,2`` multirun folder) or a glob pattern. ``kwargs`` go to
    :class:`Predictor` (``mc_samples``, ``tta``, ``seed``, ``device``).
    """

    items = checkpoints if isinstance(checkpoints, (list, tuple)) else [checkpoints]
    models: list = []
    for c in items:
        models.extend([c] if isinstance(c, LoadedModel) else resolve_checkpoints(str(c)))
    return Predictor(models, **kwargs)
