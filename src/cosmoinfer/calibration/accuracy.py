"""Point accuracy and proper scores of Gaussian and Gaussian-mixture summaries, on plain arrays.

Conventions: ``truth``, ``mean``, ``std`` are ``(N, P)`` arrays in physical parameter units (N
items, P parameters); member arrays are ``(M, N, P)``. Per-parameter metrics return ``(P,)``
arrays (mean over items); functions with ``reduce=False`` return the pointwise ``(N, P)`` values.
Definitions follow the CMD paper where it has them:

    rmse = sqrt(mean Δ²),   r2 = 1 − Σ Δ² / Σ (θ − mean θ)²,   mean_rel_err = mean |Δ| / |θ|,
    chi2 = mean (Δ / σ)²,   with Δ = mean − truth.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from cosmoinfer.calibration.levels import as_float as _f
from cosmoinfer.calibration.levels import reduce_items as _reduce

_SQRT_PI = np.sqrt(np.pi)


# --------------------------------------------------------------------------- point accuracy


def rmse(truth, mean) -> np.ndarray:
    """Root mean squared error per parameter, ``(P,)``, in parameter units."""
    return np.sqrt(np.mean((_f(mean) - _f(truth)) ** 2, axis=0))


def r2(truth, mean) -> np.ndarray:
    """Coefficient of determination ``1 − Σ Δ² / Σ (θ − θ̄)²`` per parameter, ``(P,)``."""
    truth = _f(truth)
    ss_res = np.sum((_f(mean) - truth) ** 2, axis=0)
    ss_tot = np.sum((truth - truth.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - ss_res / ss_tot


def mean_rel_err(truth, mean) -> np.ndarray:
    """Mean relative error ``mean |Δ| / |θ|`` per parameter, ``(P,)`` (dimensionless)."""
    truth = _f(truth)
    with np.errstate(divide="ignore"):
        return np.mean(np.abs(_f(mean) - truth) / np.abs(truth), axis=0)


def chi2(truth, mean, std) -> np.ndarray:
    """Reduced chi-square ``mean (Δ / σ)²`` per parameter, ``(P,)``; 1 for honest widths."""
    return np.mean(((_f(mean) - _f(truth)) / _f(std)) ** 2, axis=0)


def zscore(truth, mean, std) -> np.ndarray:
    """Standardised residuals ``(truth − mean) / std``, ``(N, P)``."""
    return (_f(truth) - _f(mean)) / _f(std)


def sharpness(std) -> np.ndarray:
    """Mean predicted standard deviation per parameter, ``(P,)``, in parameter units."""
    return np.mean(_f(std), axis=0)


# --------------------------------------------------------------------------- proper scores


def gaussian_nll(truth, mean, std, reduce: bool = True) -> np.ndarray:
    """Gaussian negative log-likelihood ``½ ln(2π σ²) + ½ (Δ/σ)²`` (nats; mean over items)."""
    std = _f(std)
    z = (_f(truth) - _f(mean)) / std
    return _reduce(0.5 * np.log(2 * np.pi) + np.log(std) + 0.5 * z**2, reduce)


def mixture_nll(truth, member_mean, member_std, weights=None, reduce: bool = True) -> np.ndarray:
    """Negative log-likelihood of the per-parameter Gaussian mixture (nats), via log-sum-exp."""
    mu, sd = _f(member_mean), _f(member_std)
    m = mu.shape[0]
    w = np.full((m, 1, 1), 1.0 / m) if weights is None else _norm_w(weights, m)
    z = (_f(truth) - mu) / sd
    logp = np.log(w) - 0.5 * np.log(2 * np.pi) - np.log(sd) - 0.5 * z**2
    mx = logp.max(axis=0)
    return _reduce(-(mx + np.log(np.sum(np.exp(logp - mx), axis=0))), reduce)


def _norm_w(weights, m: int) -> np.ndarray:
    w = _f(weights)
    if w.shape[0] != m:
        raise ValueError(f"weights have {w.shape[0]} members, expected {m}")
    w = w / w.sum(axis=0, keepdims=True)
    return w.reshape(w.shape + (1,) * (3 - w.ndim))


def crps_gaussian(truth, mean, std, reduce: bool = True) -> np.ndarray:
    """Closed-form CRPS of ``N(mean, std²)`` at ``truth`` (parameter units).

    ``CRPS = σ [ z (2Φ(z) − 1) + 2 φ(z) − 1/√π ]`` with ``z = (truth − mean) / σ``
    (Gneiting & Raftery 2007).
    """
    std = _f(std)
    z = (_f(truth) - _f(mean)) / std
    pdf = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    return _reduce(std * (z * (2 * ndtr(z) - 1) + 2 * pdf - 1 / _SQRT_PI), reduce)


def _crps_a(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``A(μ, σ) = E|X|`` for ``X ~ N(μ, σ²)``: ``2σφ(μ/σ) + μ(2Φ(μ/σ) − 1)``."""
    r = mu / sigma
    return 2 * sigma * np.exp(-0.5 * r**2) / np.sqrt(2 * np.pi) + mu * (2 * ndtr(r) - 1)


def crps_mixture(truth, member_mean, member_std, weights=None, reduce: bool = True) -> np.ndarray:
    """Closed-form CRPS of a Gaussian mixture (Grimit et al. 2006).

    ``CRPS = Σ_m w_m A(y − μ_m, σ_m) − ½ Σ_m Σ_k w_m w_k A(μ_m − μ_k, sqrt(σ_m² + σ_k²))`` with
    ``A(μ, σ) = E|N(μ, σ²)|``. Member arrays ``(M, N, P)``; weights ``(M,)`` or ``(M, N)``.
    Memory stays ``O(M N P)`` (loop over the second member index).
    """
    mu, sd, y = _f(member_mean), _f(member_std), _f(truth)
    m = mu.shape[0]
    w = np.full((m, 1, 1), 1.0 / m) if weights is None else _norm_w(weights, m)
    term1 = np.sum(w * _crps_a(y - mu, sd), axis=0)
    term2 = np.zeros_like(term1)
    for k in range(m):
        term2 += np.sum(w * w[k] * _crps_a(mu - mu[k], np.sqrt(sd**2 + sd[k] ** 2)), axis=0)
    return _reduce(term1 - 0.5 * term2, reduce)


def interval_score(truth, mean, std, level: float, reduce: bool = True) -> np.ndarray:
    """Interval score of the central Gaussian interval at ``level`` (Gneiting & Raftery 2007).

    With ``a = 1 − level`` and interval ``[l, u]``: ``(u − l) + (2/a)(l − y)⁺ + (2/a)(y − u)⁺``
    (parameter units; lower is better).
    """
    half = _f(std) * ndtri(0.5 + level / 2)
    return _reduce(interval_score_from_bounds(truth, _f(mean) - half, _f(mean) + half, level), reduce)


def interval_score_from_bounds(truth, lo, hi, level: float) -> np.ndarray:
    """Interval score ``(u − l) + (2/a)(l − y)⁺ + (2/a)(y − u)⁺`` with ``a = 1 − level``, ``(N, P)``."""
    a = 1.0 - float(level)
    y = _f(truth)
    return (hi - lo) + (2 / a) * np.maximum(lo - y, 0) + (2 / a) * np.maximum(y - hi, 0)


def sr_crps_ensemble(truth, draws) -> np.ndarray:
    """CRPS of draws ``(S, N)`` at ``truth (N,)`` (scoringrules' ensemble estimator), ``(N,)``."""
    import scoringrules as sr

    return np.asarray(sr.crps_ensemble(_f(truth), _f(draws).T, m_axis=-1))


# --------------------------------------------------------------------------- classification


def classification_metrics(truth, prob, n_bins: int = 10) -> dict:
    """Accuracy, log-loss (nats), Brier score, expected calibration error and reliability bins.

    Args:
        truth: ``(N,)`` or ``(N, 1)`` labels in {0, 1}.
        prob: same shape, predicted probability of class 1.
        n_bins: equal-width probability bins for the reliability diagram.
    """
    y = _f(truth).ravel()
    p = _f(prob).ravel()
    pc = np.clip(p, 1e-15, 1 - 1e-15)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        cnt = int(sel.sum())
        mp = float(p[sel].mean()) if cnt else None
        fp = float(y[sel].mean()) if cnt else None
        if cnt:
            ece += cnt / len(p) * abs(mp - fp)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": cnt,
                     "mean_prob": mp, "frac_pos": fp})
    return {
        "accuracy": float(np.mean((p >= 0.5) == (y == 1))),
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": float(ece),
        "base_rate": float(y.mean()),
        "reliability": bins,
    }
