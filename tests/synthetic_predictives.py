"""Predictives that are calibrated by construction, with the 15-maps-per-simulation structure.

For each simulation ``g`` a truth ``theta_g`` is drawn in unit coordinates; each of its maps ``i``
gets a predictive from a translation family ``q_i(u) = f(u - c_i)`` whose offset is drawn so that
``theta_g - c_i ~ f``: marginally every map's PIT is U(0, 1), while the maps of one simulation are
correlated through a shared Gaussian copula factor (correlation ``rho``), as CMD's are.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from cosmoinfer.data.priors import Prior
from cosmoinfer.posterior import Bijection, MixturePredictive

PRIORS = [Prior("Omega_m", 0.1, 0.5), Prior("sigma_8", 0.6, 1.0), Prior("A_SN1", 0.25, 4.0, log=True)]
NAMES = [p.name for p in PRIORS]


def family(kind: str, p: int = 3):
    """Component weights ``(K,)``, offsets ``(K, P)`` and widths ``(K, P)`` of a shape ``f`` (unit coords)."""
    if kind == "gaussian":
        return np.array([1.0]), np.zeros((1, p)), np.full((1, p), 0.04)
    if kind == "mixture":  # bimodal: two components 3 widths apart
        w = np.array([0.6, 0.4])
        d = np.array([[-0.04] * p, [0.06] * p])
        return w, d - (w[:, None] * d).sum(0), np.full((2, p), 0.02)
    raise ValueError(kind)


def _mixture_ppf(q, w, d, s):
    """Quantiles of a 1-D normal mixture (bisection), q ``(N,)``."""
    lo, hi = np.full(q.shape, d.min() - 10 * s.max()), np.full(q.shape, d.max() + 10 * s.max())
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        below = np.sum(w * ndtr((mid[:, None] - d) / s), axis=1) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def calibrated(kind: str, n_sims: int, rng: np.random.Generator, rho: float = 0.5, maps: int = 15):
    """``(predictive, truth (N, P) physical, sim_id (N,))`` calibrated by construction."""
    bij = Bijection.from_priors(PRIORS)
    p = len(PRIORS)
    w, d, s = family(kind, p)
    sim = np.repeat(np.arange(n_sims), maps)
    theta = rng.uniform(0.3, 0.7, (n_sims, p))[sim]
    z = np.sqrt(rho) * rng.standard_normal((n_sims, p))[sim] + np.sqrt(1 - rho) * rng.standard_normal((sim.size, p))
    e = np.stack([_mixture_ppf(ndtr(z[:, j]), w, d[:, j], s[:, j]) for j in range(p)], axis=1)
    c = theta - e  # theta - c_i ~ f
    n = sim.size
    loc = c[:, None, :] + d[None]
    var = np.broadcast_to(s[None] ** 2, (n,) + s.shape)
    q = MixturePredictive.from_gaussians(loc, var, bij, NAMES, weights=np.broadcast_to(w, (n, w.size)))
    return q, bij.forward(theta), sim
