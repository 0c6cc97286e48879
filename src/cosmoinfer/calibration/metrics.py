"""Accuracy and calibration metrics on plain arrays.

Conventions: ``truth``, ``mean``, ``std`` are ``(N, P)`` arrays in physical parameter units (N
items, P parameters); member arrays are ``(M, N, P)``; posterior samples ``(S, N, P)``; nominal
``levels`` are central-interval probabilities in (0, 1), shape ``(L,)``. Per-parameter metrics
return ``(P,)`` arrays (mean over items); functions with ``reduce=False`` return the pointwise
``(N, P)`` values. Definitions follow the CMD paper where it has them:

    rmse = sqrt(mean Δ²),   r2 = 1 − Σ Δ² / Σ (θ − mean θ)²,   mean_rel_err = mean |Δ| / |θ|,
    chi2 = mean (Δ / σ)²,   with Δ = mean − truth.

Everything here works outside the CLI; :func:`compute_metrics` bundles it for one
:class:`~cosmoinfer.calibration.predictions.Predictions` into the ``metrics.json`` block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats
from scipy.special import ndtr, ndtri

from cosmoinfer.calibration import by_simulation as bysim
from cosmoinfer.calibration import scores
from cosmoinfer.calibration.by_simulation import ks_uniform_pvalue
from cosmoinfer.data.priors import Prior, to_unit
from cosmoinfer.posterior.member_moments import mixture_cdf, mixture_ppf

#: Nominal levels of the coverage curve: 0.05, 0.10, ..., 0.95 (DESIGN.md coverage_error).
DEFAULT_LEVELS = tuple(np.round(np.arange(1, 20) * 0.05, 2).tolist())
#: Levels reported under the ``coverage`` key of metrics.json.
REPORTED_LEVELS = (0.68, 0.95)

_SQRT_PI = np.sqrt(np.pi)


def _f(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _levels(levels) -> np.ndarray:
    lv = _f(levels).ravel()
    if np.any((lv <= 0) | (lv >= 1)):
        raise ValueError(f"levels must lie strictly inside (0, 1), got {lv}")
    return lv


def _reduce(x: np.ndarray, reduce: bool) -> np.ndarray:
    return x.mean(axis=0) if reduce else x


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
    a = 1.0 - float(level)
    half = _f(std) * ndtri(0.5 + level / 2)
    lo, hi = _f(mean) - half, _f(mean) + half
    y = _f(truth)
    s = (hi - lo) + (2 / a) * np.maximum(lo - y, 0) + (2 / a) * np.maximum(y - hi, 0)
    return _reduce(s, reduce)


# --------------------------------------------------------------------------- calibration


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


# --------------------------------------------------------------------------- joint diagnostics


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


# --------------------------------------------------------------------------- bundle


def _level_key(level: float) -> str:
    """metrics.json key of a nominal level: two decimals ("0.05", "0.68"), more only if needed."""
    level = float(level)
    return f"{level:.2f}" if abs(level - round(level, 2)) < 1e-9 else f"{level:g}"


#: Family-wise false-alarm rate of a verdict, split between its two tests (coverage, width scale).
ALPHA_VERDICT = 0.05
ALPHA_COVERAGE = ALPHA_VERDICT / 2
ALPHA_SCALE = ALPHA_VERDICT / 2


def interval_score_from_bounds(truth, lo, hi, level: float) -> np.ndarray:
    """Interval score ``(u − l) + (2/a)(l − y)⁺ + (2/a)(y − u)⁺`` with ``a = 1 − level``, ``(N, P)``."""
    a = 1.0 - float(level)
    y = _f(truth)
    return (hi - lo) + (2 / a) * np.maximum(lo - y, 0) + (2 / a) * np.maximum(y - hi, 0)


def width_scale(pred_predictive, truth, sim_id, rng: np.random.Generator, n_boot: int = 1000):
    """Width scale ``s = sqrt(mean z_u²)`` per parameter ``(P,)`` and its standard error by simulation.

    ``s > 1``: intervals too narrow by that factor; ``s < 1``: too wide (see
    :func:`cosmoinfer.calibration.scores.width_scale_terms`).
    """
    z2 = scores.width_scale_terms(pred_predictive, truth)
    m, se = bysim.mean_with_se(z2, sim_id, rng, n_boot)
    s = np.sqrt(m)
    return s, se / (2 * np.maximum(s, 1e-300))


def _s8_block(pred, q, rng, lv, n_samples: int, n_boot: int) -> tuple[dict, dict]:
    """Metrics of the derived S8 from draws of the predictive inside the prior box."""
    draws, truth = scores.s8_draws(q, pred.truth, rng, n_samples)  # (S, N), (N,)
    mean, std = draws.mean(axis=0), draws.std(axis=0, ddof=1)
    below = np.sum(draws < truth[None], axis=0)
    pit_v = ((below + rng.uniform(size=below.shape)) / (draws.shape[0] + 1))[:, None]
    curve = coverage_from_pit(pit_v, lv)[:, 0]
    rep = coverage_from_pit(pit_v, REPORTED_LEVELS)[:, 0]
    h = 1.06 * std * draws.shape[0] ** (-0.2)
    dens = np.mean(np.exp(-0.5 * ((truth[None] - draws) / h) ** 2), axis=0) / (h * np.sqrt(2 * np.pi))
    t, m = truth[:, None], mean[:, None]
    d = {
        "derived": "S8 = sigma_8 (Omega_m / 0.3)^0.5, from predictive draws inside the prior box",
        "rmse": float(rmse(t, m)[0]), "r2": float(r2(t, m)[0]), "mean_rel_err": float(mean_rel_err(t, m)[0]),
        "chi2": float(chi2(t, m, std[:, None])[0]),
        "nll": float(-np.mean(np.log(np.maximum(dens, 1e-300)))),
        "crps": float(np.mean(sr_crps_ensemble(truth, draws))),
        "coverage": {_level_key(x): float(rep[i]) for i, x in enumerate(REPORTED_LEVELS)},
        "coverage_curve": {_level_key(x): float(curve[i]) for i, x in enumerate(lv)},
        "coverage_error": float(np.max(np.abs(curve - lv))),
        "coverage_tolerance": float(bysim.coverage_tolerance(pit_v, pred.sim_id, lv, rng, ALPHA_COVERAGE,
                                                             n_boot)[0]),
        "mean_std": float(std.mean()),
        "pit_ks_pvalue": float(ks_uniform_pvalue(pit_v[:, 0], pred.sim_id, rng)),
    }
    return d, {"pit": pit_v[:, 0], "mean": mean, "std": std, "truth": truth}


def sr_crps_ensemble(truth, draws) -> np.ndarray:
    """CRPS of draws ``(S, N)`` at ``truth (N,)`` (scoringrules' ensemble estimator), ``(N,)``."""
    import scoringrules as sr

    return np.asarray(sr.crps_ensemble(_f(truth), _f(draws).T, m_axis=-1))


def compute_metrics(pred, levels=DEFAULT_LEVELS, rng: np.random.Generator | None = None, *,
                    n_posterior_samples: int = 500, tarp_refs: int = 1, n_bootstrap: int = 100,
                    n_hpd_samples: int = 1000, return_arrays: bool = False):
    """Metrics of one :class:`~cosmoinfer.posterior.predictions.Predictions`, from its whole predictive.

    Returns ``{"method", "n", "n_sims", "params": {name: {...}}, "joint": {...}}``. Per parameter
    (physical units): ``rmse, r2, mean_rel_err, chi2`` of the predictive mean and std (CMD
    definitions); ``nll`` (marginal, nats), ``crps``, ``coverage`` of the equal-tailed intervals
    at 0.68/0.95 and ``coverage_curve`` (from the marginal CDFs), ``coverage_error`` (max over
    ``levels``) with its ``coverage_tolerance`` (bootstrap over simulations), ``pit_ks_pvalue``
    and ``sbc_ks_pvalue`` (one map per simulation), ``width_scale`` and ``width_scale_se``,
    ``mean_std``, interval scores, the aleatoric/epistemic split. ``joint``: ``nll`` (joint, nats),
    ``hpd_coverage`` / ``hpd_coverage_error`` / ``hpd_coverage_tolerance`` of highest-density
    regions, ``tarp_atc``, ``tarp_ks_pvalue``, ``sbc_ks_pvalue`` (Bonferroni over parameters) and,
    where ``exact_log_prob`` is stored (grf maps), ``expected_kl`` ``{value, lo, hi, n_sims}``.
    A derived ``S8`` entry joins ``params`` when Omega_m and sigma_8 are both inferred.

    SBC and TARP use ``n_posterior_samples`` draws per item of the predictive restricted to the
    prior box; everything random comes from the local ``rng`` (default ``default_rng(0)``).
    With ``return_arrays=True`` returns ``(metrics, arrays)`` (PIT, z-scores, curves, SBC ranks,
    HPD credibilities and the :class:`TarpResult`) for the figures.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    lv = _levels(levels)
    if pred.task == "classification":
        m = {"method": pred.method, "n": pred.n, "task": "classification",
             "params": {pred.param_names[0]: classification_metrics(pred.truth, pred.mean)}, "joint": {}}
        return (m, {}) if return_arrays else m

    q, t, sim = pred.predictive, pred.truth, pred.sim_id
    n_boot = max(int(n_bootstrap), 200)
    mu, cov = q.moments()
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    pit_v = scores.pit(q, t)
    cov_curve = coverage_from_pit(pit_v, lv)
    cov_rep = coverage_from_pit(pit_v, REPORTED_LEVELS)
    s_w, s_se = width_scale(q, t, sim, rng, n_boot)
    cols = {
        "rmse": rmse(t, mu), "r2": r2(t, mu), "mean_rel_err": mean_rel_err(t, mu), "chi2": chi2(t, mu, sd),
        "nll": np.mean(scores.marginal_nll(q, t), axis=0), "crps": np.mean(scores.crps(q, t), axis=0),
        "coverage_error": coverage_error(cov_curve, lv),
        "coverage_tolerance": bysim.coverage_tolerance(pit_v, sim, lv, rng, ALPHA_COVERAGE, n_boot),
        "pit_ks_pvalue": np.atleast_1d(ks_uniform_pvalue(pit_v, sim, rng)),
        "width_scale": s_w, "width_scale_se": s_se,
        "mean_std": sharpness(sd), "miscalibration_area": miscalibration_area(pit_v),
        "mean_z": np.mean(zscore(t, mu, sd), axis=0),
        "mean_std_aleatoric": sharpness(pred.std_aleatoric), "mean_std_epistemic": sharpness(pred.std_epistemic),
        "epistemic_fraction": np.mean(pred.std_epistemic**2 / np.maximum(pred.std**2, 1e-300), axis=0),
    }
    for level in REPORTED_LEVELS:
        lo, hi = q.central_interval(level)
        cols[f"interval_score_{level:.2f}"] = np.mean(interval_score_from_bounds(t, lo, hi, level), axis=0)
    arrays: dict = {"pit": pit_v, "z": zscore(t, mu, sd), "coverage_curve": cov_curve, "levels": lv,
                    "mean": mu, "std": sd}

    # Draws of the predictive inside the prior box, a block of items at a time (memory
    # O(S x block x P)); they feed both SBC and TARP.
    bounds = None if pred.priors is not None else (t.min(axis=0), t.max(axis=0))
    n_refs = max(int(tarp_refs), 1)
    refs = rng.uniform(size=(n_refs,) + t.shape)
    ranks = np.empty(t.shape, dtype=np.int64)
    f = np.empty((n_refs, pred.n))
    chunk = max(1, int(2_000_000 // max(n_posterior_samples * pred.p * getattr(q, "k", 1), 1)))
    for a in range(0, pred.n, chunk):
        idx = np.arange(a, min(a + chunk, pred.n))
        samples = q.subset(idx).sample(n_posterior_samples, rng, truncate=True)
        ranks[idx] = sbc_ranks(samples, t[idx])
        for k in range(n_refs):
            f[k, idx] = tarp_credibility(samples, t[idx], refs[k, idx], pred.priors, bounds, rng)
    sbc_p = sbc_ks_pvalues(ranks, n_posterior_samples, rng, sim)
    tr = tarp_from_credibility(f, rng, n_bootstrap=n_bootstrap, sim_id=sim)
    hpd = scores.hpd_credibility(q, t, rng, n_hpd_samples)
    hpd_curve = scores.coverage_from_credibility(hpd, lv)
    hpd_rep = scores.coverage_from_credibility(hpd, REPORTED_LEVELS)
    hpd_tol = bysim.coverage_tolerance(0.5 + hpd / 2, sim, lv, rng, ALPHA_COVERAGE, n_boot)
    log_q = scores.log_score(q, t)
    arrays.update(sbc_ranks=ranks, tarp=tr, hpd=hpd, hpd_curve=hpd_curve, log_q=log_q)

    params = {}
    for j, name in enumerate(pred.param_names):
        d = {k: float(v[j]) for k, v in cols.items()}
        d["coverage"] = {_level_key(lvl): float(cov_rep[i, j]) for i, lvl in enumerate(REPORTED_LEVELS)}
        d["coverage_curve"] = {_level_key(lvl): float(cov_curve[i, j]) for i, lvl in enumerate(lv)}
        d["sbc_ks_pvalue"] = float(sbc_p[j])
        params[name] = d
    if scores.has_s8(pred.param_names):
        params["S8"], arrays["s8"] = _s8_block(pred, q, rng, lv, max(n_posterior_samples, 2000), n_boot)
    finite = np.isfinite(log_q)
    joint = {
        "nll": float(-np.mean(log_q)) if finite.all() else None,
        "hpd_coverage": {_level_key(lvl): float(hpd_rep[i]) for i, lvl in enumerate(REPORTED_LEVELS)},
        "hpd_coverage_curve": {_level_key(lvl): float(hpd_curve[i]) for i, lvl in enumerate(lv)},
        "hpd_coverage_error": float(np.max(np.abs(hpd_curve - lv))),
        "hpd_coverage_tolerance": float(hpd_tol[0]),
        "tarp_atc": tr.atc,
        "tarp_ks_pvalue": tr.ks_pvalue,
        "sbc_ks_pvalue": float(min(1.0, sbc_p.min() * len(sbc_p))),
        "predictive": q.kind + (f" ({q.k} components)" if hasattr(q, "k") else ""),
        "n_posterior_samples": int(n_posterior_samples),
        "tarp_refs": int(tarp_refs),
        "tarp_scaling": "prior" if pred.priors is not None else "range of truth",
    }
    if "exact_log_prob" in pred.extra and finite.all():
        from cosmoinfer.calibration.exact import expected_kl

        joint["expected_kl"] = expected_kl(pred.extra["exact_log_prob"], log_q, sim, rng)
    m = {"method": pred.method, "n": pred.n, "n_sims": bysim.n_sims(sim), "params": params, "joint": joint}
    return (m, arrays) if return_arrays else m
