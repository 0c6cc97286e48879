"""Coverage of central intervals and joint ellipsoids, PIT, and the bands a calibrated predictor
stays inside, on plain arrays.

Conventions: ``truth``, ``mean``, ``std`` are ``(N, P)`` (physical units); member arrays
``(M, N, P)``; nominal ``levels`` are central-interval probabilities in (0, 1), shape ``(L,)``;
coverage curves are ``(L, P)``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import ndtr, ndtri

from cosmoinfer.calibration.accuracy import zscore
from cosmoinfer.calibration.levels import DEFAULT_LEVELS
from cosmoinfer.calibration.levels import as_float as _f
from cosmoinfer.calibration.levels import check_levels as _levels
from cosmoinfer.posterior.member_moments import mixture_cdf, mixture_ppf


def pit(truth, mean, std) -> np.ndarray:
    """Probability integral transform ``Φ((truth − mean) / std)``, ``(N, P)``; U(0,1) if calibrated."""
    return ndtr(zscore(truth, mean, std))


def pit_mixture(truth, member_mean, member_std, weights=None) -> np.ndarray:
    """PIT of the per-parameter Gaussian mixture, ``(N, P)``."""
    return mixture_cdf(truth, member_mean, member_std, weights)


def coverage_from_pit(pit_values, levels=DEFAULT_LEVELS) -> np.ndarray:
    """Empirical coverage ``(L, P)`` of central intervals: covered iff ``|PIT − ½| ≤ level/2``."""
    lv = _levels(levels)
    d = np.abs(_f(pit_values) - 0.5)
    return np.mean(d[None] <= lv[:, None, None] / 2, axis=1)


def coverage(truth, mean, std, levels=DEFAULT_LEVELS) -> np.ndarray:
    """Empirical coverage ``(L, P)`` of central Gaussian intervals ``mean ± std Φ⁻¹((1+level)/2)``."""
    lv = _levels(levels)
    z = np.abs(zscore(truth, mean, std))
    return np.mean(z[None] <= ndtri(0.5 + lv / 2)[:, None, None], axis=1)


def coverage_mixture(truth, member_mean, member_std, levels=DEFAULT_LEVELS, weights=None) -> np.ndarray:
    """Empirical coverage ``(L, P)`` of the mixture's central intervals (equal-tail quantiles)."""
    return coverage_from_pit(pit_mixture(truth, member_mean, member_std, weights), levels)


def mixture_interval(member_mean, member_std, level: float, weights=None):
    """Central interval ``(lo, hi)`` of the per-parameter mixture, each ``(N, P)``."""
    return (mixture_ppf(0.5 - level / 2, member_mean, member_std, weights),
            mixture_ppf(0.5 + level / 2, member_mean, member_std, weights))


def coverage_error(empirical, levels=DEFAULT_LEVELS) -> np.ndarray:
    """``max_levels |empirical − nominal|`` per parameter, ``(P,)``; ``empirical`` is ``(L, P)``."""
    lv = _levels(levels)
    return np.max(np.abs(_f(empirical) - lv[:, None]), axis=0)


def coverage_tolerance(n: int, alpha: float = 0.05) -> float:
    """How large ``coverage_error`` may be for a calibrated predictor with ``n`` independent items.

    Coverage at every level is the empirical CDF of ``|2 PIT − 1|`` at that level, so the
    Dvoretzky–Kiefer–Wolfowitz bound ``sqrt(ln(2/alpha) / (2n))`` holds for the maximum over
    any set of levels with probability ≥ 1 − alpha (1.36/√n at alpha = 0.05).
    """
    return float(np.sqrt(np.log(2 / alpha) / (2 * max(int(n), 1))))


def binomial_band(n: int, levels=DEFAULT_LEVELS, conf: float = 0.95):
    """Central ``conf`` band ``(lo, hi)`` of the empirical coverage of a calibrated predictor.

    Exact binomial quantiles of ``Binomial(n, level) / n`` at each level, ``(L,)`` each.
    """
    lv = _levels(levels)
    lo = stats.binom.ppf((1 - conf) / 2, n, lv) / n
    hi = stats.binom.ppf((1 + conf) / 2, n, lv) / n
    return lo, hi


def miscalibration_area(pit_values, n_grid: int = 99) -> np.ndarray:
    """Area between the calibration curve and the diagonal, per parameter, ``(P,)``.

    The curve is the empirical coverage of central intervals on ``n_grid`` levels in (0, 1),
    anchored at (0, 0) and (1, 1), integrated with the trapezoid rule (0 = calibrated, ≤ 0.5).
    """
    lv = np.linspace(0, 1, n_grid + 2)[1:-1]
    cov = coverage_from_pit(pit_values, lv)
    x = np.concatenate([[0.0], lv, [1.0]])
    y = np.abs(np.concatenate([np.zeros((1, cov.shape[1])), cov - lv[:, None], np.zeros((1, cov.shape[1]))]))
    return np.trapezoid(y, x, axis=0) if hasattr(np, "trapezoid") else np.trapz(y, x, axis=0)


def mahalanobis2(truth, mean, cov=None, std=None) -> np.ndarray:
    """Squared Mahalanobis distance ``Δᵀ Σ⁻¹ Δ`` per item, ``(N,)``; ``Σ = cov`` or ``diag(std²)``."""
    d = _f(truth) - _f(mean)
    if cov is None:
        return np.sum((d / _f(std)) ** 2, axis=-1)
    sol = np.linalg.solve(_f(cov), d[..., None])[..., 0]
    return np.sum(d * sol, axis=-1)


def joint_ellipse_coverage(truth, mean, cov, levels=DEFAULT_LEVELS, std=None) -> np.ndarray:
    """Coverage ``(L,)`` of the joint credible ellipsoids ``Δᵀ Σ⁻¹ Δ ≤ χ²_P(level)``.

    ``cov (N, P, P)``; pass ``cov=None, std=...`` for a diagonal covariance.
    """
    lv = _levels(levels)
    d2 = mahalanobis2(truth, mean, cov, std)
    p = _f(truth).shape[-1]
    return np.mean(d2[None] <= stats.chi2.ppf(lv, p)[:, None], axis=1)
