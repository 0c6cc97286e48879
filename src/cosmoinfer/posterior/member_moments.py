"""Gaussian-mixture summaries of ensembles and MC-dropout passes.

A deep ensemble (or a set of MC-dropout passes) with members ``m = 1..M`` that each predict a
Gaussian ``N(mu_m, var_m)`` defines the mixture ``sum_m w_m N(mu_m, var_m)`` (``w_m = 1/M`` unless
weights are given). Its moments are

    mu*  = sum_m w_m mu_m
    var* = sum_m w_m (var_m + mu_m²) − mu*²  =  aleatoric + epistemic
    aleatoric = sum_m w_m var_m,   epistemic = sum_m w_m (mu_m − mu*)²

(population variance of the member means, so the split is exact). Averaging the members' sigmas
instead is wrong: it drops the epistemic part.

Array conventions: members on the first axis, ``(M, N, P)`` for means/variances/sigmas and
``(M, N, P, P)`` for covariances; weights are ``(M,)`` or ``(M, N)``. Units are those of the
parameters (variances in squared units).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri


def _weights(weights: np.ndarray | None, m: int, ndim: int) -> np.ndarray:
    """Normalised weights broadcastable against an ``(M, ...)`` array of ``ndim`` dimensions."""
    if weights is None:
        return np.full((m,) + (1,) * (ndim - 1), 1.0 / m)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[0] != m:
        raise ValueError(f"weights have {w.shape[0]} members, expected {m}")
    if np.any(w < 0):
        raise ValueError("mixture weights must be non-negative")
    w = w / w.sum(axis=0, keepdims=True)
    return w.reshape(w.shape + (1,) * (ndim - w.ndim))


def mixture_moments(member_mean: np.ndarray, member_var: np.ndarray, weights: np.ndarray | None = None):
    """Mean and variance of a Gaussian mixture, with the aleatoric / epistemic split.

    Args:
        member_mean: ``(M, N, P)`` member means.
        member_var: ``(M, N, P)`` member variances (sigma², not sigma).
        weights: optional ``(M,)`` or ``(M, N)`` mixture weights (normalised here); default 1/M.

    Returns:
        ``(mean, var, aleatoric_var, epistemic_var)``, each ``(N, P)``, with
        ``var == aleatoric_var + epistemic_var`` up to round-off.
    """
    mu = np.asarray(member_mean, dtype=np.float64)
    var = np.asarray(member_var, dtype=np.float64)
    if mu.shape != var.shape:
        raise ValueError(f"member_mean {mu.shape} and member_var {var.shape} differ in shape")
    w = _weights(weights, mu.shape[0], mu.ndim)
    mean = np.sum(w * mu, axis=0)
    aleatoric = np.sum(w * var, axis=0)
    # Computed as the spread about the mixture mean (numerically safer than E[mu²] − mu*²,
    # algebraically identical to mean_m(var_m + mu_m²) − mu*² − aleatoric).
    epistemic = np.sum(w * (mu - mean) ** 2, axis=0)
    return mean, aleatoric + epistemic, aleatoric, epistemic


def mixture_cov(member_mean: np.ndarray, member_cov: np.ndarray, weights: np.ndarray | None = None):
    """Full-covariance mixture moments.

    Args:
        member_mean: ``(M, N, P)`` member means.
        member_cov: ``(M, N, P, P)`` member covariances.
        weights: optional ``(M,)`` or ``(M, N)`` weights.

    Returns:
        ``(mean (N, P), cov (N, P, P), aleatoric_cov (N, P, P), epistemic_cov (N, P, P))`` with
        ``aleatoric = sum_m w_m C_m`` and ``epistemic = sum_m w_m (mu_m − mu*)(mu_m − mu*)ᵀ``.
    """
    mu = np.asarray(member_mean, dtype=np.float64)
    cov = np.asarray(member_cov, dtype=np.float64)
    if cov.shape != mu.shape + mu.shape[-1:]:
        raise ValueError(f"member_cov {cov.shape} does not match member_mean {mu.shape} (+P)")
    w3 = _weights(weights, mu.shape[0], 3)
    w4 = w3[..., None]
    mean = np.sum(w3 * mu, axis=0)
    d = mu - mean
    aleatoric = np.sum(w4 * cov, axis=0)
    epistemic = np.sum(w4 * d[..., :, None] * d[..., None, :], axis=0)
    return mean, aleatoric + epistemic, aleatoric, epistemic


def mixture_cdf(x: np.ndarray, member_mean: np.ndarray, member_std: np.ndarray,
                weights: np.ndarray | None = None) -> np.ndarray:
    """CDF of the per-parameter (marginal) mixture at ``x``.

    Args:
        x: ``(N, P)`` (or anything broadcasting against one member, ``member_mean[0]``).
        member_mean, member_std: ``(M, N, P)``.
        weights: optional ``(M,)`` or ``(M, N)``.

    Returns:
        ``F(x) = sum_m w_m Φ((x − mu_m) / sigma_m)``, shape of the broadcast ``(N, P)``.
    """
    mu = np.asarray(member_mean, dtype=np.float64)
    sd = np.asarray(member_std, dtype=np.float64)
    w = _weights(weights, mu.shape[0], mu.ndim)
    return np.sum(w * ndtr((np.asarray(x, dtype=np.float64) - mu) / sd), axis=0)


def mixture_pdf(x: np.ndarray, member_mean: np.ndarray, member_std: np.ndarray,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Density of the per-parameter mixture at ``x`` (shapes as :func:`mixture_cdf`)."""
    mu = np.asarray(member_mean, dtype=np.float64)
    sd = np.asarray(member_std, dtype=np.float64)
    w = _weights(weights, mu.shape[0], mu.ndim)
    z = (np.asarray(x, dtype=np.float64) - mu) / sd
    return np.sum(w * np.exp(-0.5 * z**2) / (np.sqrt(2 * np.pi) * sd), axis=0)


def mixture_ppf(q: np.ndarray | float, member_mean: np.ndarray, member_std: np.ndarray,
                weights: np.ndarray | None = None, tol: float = 1e-10, max_iter: int = 200) -> np.ndarray:
    """Quantile of the per-parameter mixture by vectorised bisection.

    The root is bracketed by the smallest and largest component quantiles: every component CDF
    is ≤ q at the smallest and ≥ q at the largest, hence so is the mixture's.

    Args:
        q: probability in (0, 1), scalar or broadcasting against ``(N, P)``.
        member_mean, member_std: ``(M, N, P)``.
        tol: absolute tolerance on x, relative to the bracket width.

    Returns:
        ``x`` with ``F(x) = q``, shape ``(N, P)``.
    """
    mu = np.asarray(member_mean, dtype=np.float64)
    sd = np.asarray(member_std, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if np.any((q <= 0) | (q >= 1)):
        raise ValueError("quantile levels must lie strictly inside (0, 1)")
    comp = mu + sd * ndtri(q)
    lo, hi = comp.min(axis=0), comp.max(axis=0)
    lo, hi = np.broadcast_arrays(lo, hi)
    lo, hi = lo.copy(), hi.copy()
    target = np.broadcast_to(q, lo.shape)
    scale = np.maximum(hi - lo, np.finfo(float).tiny)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        below = mixture_cdf(mid, mu, sd, weights) < target
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
        if np.all(hi - lo <= tol * scale):
            break
    return 0.5 * (lo + hi)


def mixture_sample(member_mean: np.ndarray, member_std: np.ndarray, n_samples: int,
                   rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    """Draw ``n_samples`` from each (N, P) marginal mixture: ``(S, N, P)``.

    Components are picked per (sample, item) and shared across parameters, so a sample is a draw
    from one member's (diagonal) Gaussian, as for the joint mixture.
    """
    mu = np.asarray(member_mean, dtype=np.float64)
    sd = np.asarray(member_std, dtype=np.float64)
    m, n, _ = mu.shape
    w = _weights(weights, m, 2)  # (M, 1) or (M, N)
    w = np.broadcast_to(w, (m, n))
    cum = np.cumsum(w, axis=0)  # (M, N)
    u = rng.uniform(size=(n_samples, n))
    comp = np.minimum((u[:, None, :] > cum[None]).sum(axis=1), m - 1)  # (S, N)
    idx_n = np.arange(n)[None, :]
    return mu[comp, idx_n] + sd[comp, idx_n] * rng.standard_normal((n_samples, n, mu.shape[2]))
