"""Simulation-based calibration ranks and TARP (Lemos et al. 2023) from posterior draws.

Draws are ``(S, N, P)`` in physical units, ``truth`` ``(N, P)``; ``sim_id (N,)`` names the
simulation of each item so that p-values and bands count simulations, not correlated maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cosmoinfer.calibration.by_simulation import ks_uniform_pvalue
from cosmoinfer.calibration.levels import as_float as _f
from cosmoinfer.data.priors import Prior, to_unit


def gaussian_samples(mean, std, n_samples: int, rng: np.random.Generator, cov=None) -> np.ndarray:
    """``n_samples`` posterior draws per item, ``(S, N, P)``, from ``N(mean, diag(std²))`` or ``N(mean, cov)``."""
    mean = _f(mean)
    eps = rng.standard_normal((n_samples,) + mean.shape)
    if cov is None:
        return mean + _f(std) * eps
    chol = np.linalg.cholesky(_f(cov))  # (N, P, P)
    return mean + np.einsum("nij,snj->sni", chol, eps)


def sbc_ranks(samples, truth) -> np.ndarray:
    """SBC rank of the truth among the posterior samples: ``#(samples < truth)``, ``(N, P)`` in ``0..S``."""
    return np.sum(_f(samples) < _f(truth)[None], axis=0)


def sbc_ks_pvalues(ranks, n_samples: int, rng: np.random.Generator, sim_id=None) -> np.ndarray:
    """KS test of uniform SBC ranks, per parameter, ``(P,)`` p-values, on one item per simulation.

    Ranks are made continuous as ``(rank + U) / (S + 1)`` with ``U ~ U(0,1)`` drawn from ``rng``,
    which is exactly U(0,1) for a calibrated posterior, so the KS test is valid despite ties.
    ``sim_id (N,)``: the simulation of each item (default: every item its own).
    """
    ranks = _f(ranks)
    u = (ranks + rng.uniform(size=ranks.shape)) / (n_samples + 1)
    sim_id = np.arange(u.shape[0]) if sim_id is None else sim_id
    return np.atleast_1d(ks_uniform_pvalue(u, sim_id, rng))


@dataclass
class TarpResult:
    """TARP (Lemos et al. 2023) outcome.

    ``alpha (K,)`` credibility levels, ``ecp (K,)`` expected coverage (mean over reference sets),
    ``ecp_lo``/``ecp_hi (K,)`` its 2.5/97.5% bootstrap band over items, ``atc`` the signed area
    ``∫_{½}^{1} (ECP(α) − α) dα`` (< 0 overconfident, > 0 underconfident; sbi's ATC is the same
    curve summed on its own grid instead of integrated), ``ks_pvalue`` the KS test of the
    per-item credibilities ``f (N,)`` of the first reference set against U(0,1).
    """

    alpha: np.ndarray
    ecp: np.ndarray
    ecp_lo: np.ndarray
    ecp_hi: np.ndarray
    atc: float
    ks_pvalue: float
    f: np.ndarray


def unit_scale(x, priors: Sequence[Prior] | None = None, bounds=None) -> np.ndarray:
    """Map ``(..., P)`` parameters to the unit cube by the priors (log space for log-uniform ones)
    or, without priors, by ``bounds = (low (P,), high (P,))``.

    Values of a log-uniform parameter ≤ 0 (Gaussian samples can reach them) are clipped to a tiny
    positive number before the log.
    """
    x = _f(x)
    if priors is not None:
        tiny = np.array([pr.low * 1e-6 if pr.log else -np.inf for pr in priors])
        return to_unit(np.maximum(x, tiny), priors)
    if bounds is None:
        raise ValueError("unit_scale needs priors or bounds")
    lo, hi = _f(bounds[0]), _f(bounds[1])
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


def tarp_credibility(samples, truth, ref, priors: Sequence[Prior] | None = None, bounds=None,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """TARP credibility of each item for given reference points, ``(N,)`` in (0, 1).

    Args:
        samples: ``(S, N, P)`` posterior draws; truth: ``(N, P)``; ref: ``(N, P)`` reference points
            in the unit cube; priors / bounds: the unit-cube scaling (see :func:`unit_scale`).
        rng: randomises ties: ``f_i = (#{s : |x_s − r_i| < |θ_i − r_i|} + U) / (S + 1)``.

    ``f_i`` is the credibility at which the ball around ``r_i`` first contains ``θ_i``; it is
    exactly U(0,1) for a calibrated posterior. Items are independent, so callers may process
    them in chunks (memory ``O(S × chunk × P)``).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    xs = unit_scale(samples, priors, bounds)  # (S, N, P)
    th = unit_scale(truth, priors, bounds)  # (N, P)
    d_s = np.sqrt(np.sum((xs - ref) ** 2, axis=-1))  # (S, N)
    d_t = np.sqrt(np.sum((th - ref) ** 2, axis=-1))  # (N,)
    count = np.sum(d_s < d_t, axis=0)
    return (count + rng.uniform(size=count.shape)) / (xs.shape[0] + 1)


def tarp_from_credibility(f, rng: np.random.Generator | None = None, n_alpha: int = 101,
                          n_bootstrap: int = 100, sim_id=None) -> TarpResult:
    """ECP curve, bootstrap band, ATC and KS p-value from credibilities ``f (R, N)`` (or ``(N,)``).

    ``ECP(α) = mean_i [f_i < α]`` averaged over the R reference sets. The band resamples whole
    simulations (``sim_id (N,)``; every item its own simulation when None) ``n_bootstrap`` times
    from the one ``rng`` (never reseeded in the loop); the KS test uses the first reference set,
    one item per simulation.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    f = np.atleast_2d(_f(f))
    r, n = f.shape
    sim_id = np.arange(n) if sim_id is None else np.asarray(sim_id)
    _, inv = np.unique(sim_id, return_inverse=True)
    g = int(inv.max()) + 1
    alpha = np.linspace(0, 1, n_alpha)
    # [f_i < alpha_k] iff k >= j_i with j_i = #{k : alpha_k <= f_i}: ECP is a cumulative histogram.
    j = np.searchsorted(alpha, f, side="right")  # (R, N) in 0..K

    def ecp_of(weights: np.ndarray) -> np.ndarray:  # weights (N,)
        hist = sum(np.bincount(j[k], weights=weights, minlength=n_alpha + 1) for k in range(r))
        return np.cumsum(hist)[:n_alpha] / (r * weights.sum())

    ecp = ecp_of(np.ones(n))
    if n_bootstrap > 1:
        boots = np.stack([ecp_of(np.bincount(rng.integers(0, g, g), minlength=g)[inv].astype(float))
                          for _ in range(n_bootstrap)])
        lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    else:
        lo, hi = ecp.copy(), ecp.copy()
    upper = alpha >= 0.5
    diff = ecp[upper] - alpha[upper]
    atc = float(np.trapezoid(diff, alpha[upper]) if hasattr(np, "trapezoid") else np.trapz(diff, alpha[upper]))
    pval = float(ks_uniform_pvalue(f[0], sim_id, rng))
    return TarpResult(alpha=alpha, ecp=ecp, ecp_lo=lo, ecp_hi=hi, atc=atc, ks_pvalue=pval, f=f[0])


def tarp(samples, truth, priors: Sequence[Prior] | None = None, bounds=None, n_refs: int = 1,
         rng: np.random.Generator | None = None, n_alpha: int = 101, n_bootstrap: int = 100,
         sim_id=None) -> TarpResult:
    """Tests of Accuracy with Random Points (Lemos et al. 2023) from posterior samples.

    Args:
        samples: ``(S, N, P)`` posterior draws, physical units.
        truth: ``(N, P)`` true parameters.
        priors: priors of the P parameters; parameters are scaled to the unit cube with them.
        bounds: ``(low (P,), high (P,))`` used instead when no priors are known (default: the
            range of ``truth``).
        n_refs: number of independent sets of reference points (one point per item, uniform in
            the unit cube); the ECP curve is averaged over them.
        rng: a local generator (default ``np.random.default_rng(0)``); used for the references,
            the randomised credibilities and the bootstrap, never reseeded inside the loop.
        n_alpha: number of credibility levels on [0, 1].
        n_bootstrap: bootstrap resamples of the simulations for the ECP band.
        sim_id: ``(N,)`` simulation of each item (default: every item its own).

    See :func:`tarp_credibility` and :func:`tarp_from_credibility`.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    truth = _f(truth)
    if priors is None and bounds is None:
        bounds = (truth.min(axis=0), truth.max(axis=0))
    n, p = truth.shape
    f = np.stack([tarp_credibility(samples, truth, rng.uniform(size=(n, p)), priors, bounds, rng)
                  for _ in range(max(int(n_refs), 1))])
    return tarp_from_credibility(f, rng, n_alpha, n_bootstrap, sim_id=sim_id)
