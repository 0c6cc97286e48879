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


def sbc_ks_pvalues(ranks, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """KS test of uniform SBC ranks, per parameter, ``(P,)`` p-values.

    Ranks are made continuous as ``(rank + U) / (S + 1)`` with ``U ~ U(0,1)`` drawn from ``rng``,
    which is exactly U(0,1) for a calibrated posterior, so the KS test is valid despite ties.
    """
    ranks = _f(ranks)
    u = (ranks + rng.uniform(size=ranks.shape)) / (n_samples + 1)
    return np.array([stats.kstest(u[:, j], "uniform").pvalue for j in range(u.shape[1])])


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
                          n_bootstrap: int = 100) -> TarpResult:
    """ECP curve, bootstrap band, ATC and KS p-value from credibilities ``f (R, N)`` (or ``(N,)``).

    ``ECP(α) = mean_i [f_i < α]`` averaged over the R reference sets; the band resamples items
    with replacement ``n_bootstrap`` times from the one ``rng`` (never reseeded in the loop); the
    KS test uses the first reference set.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    f = np.atleast_2d(_f(f))
    r, n = f.shape
    alpha = np.linspace(0, 1, n_alpha)
    # [f_i < alpha_k] iff k >= j_i with j_i = #{k : alpha_k <= f_i}: ECP is a cumulative histogram.
    j = np.searchsorted(alpha, f, side="right")  # (R, N) in 0..K

    def ecp_of(weights: np.ndarray) -> np.ndarray:  # weights (N,) sum to n
        hist = sum(np.bincount(j[k], weights=weights, minlength=n_alpha + 1) for k in range(r))
        return np.cumsum(hist)[:n_alpha] / (r * weights.sum())

    ecp = ecp_of(np.ones(n))
    if n_bootstrap > 1:
        boots = np.stack([ecp_of(np.bincount(rng.integers(0, n, n), minlength=n).astype(float))
                          for _ in range(n_bootstrap)])
        lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    else:
        lo, hi = ecp.copy(), ecp.copy()
    upper = alpha >= 0.5
    diff = ecp[upper] - alpha[upper]
    atc = float(np.trapezoid(diff, alpha[upper]) if hasattr(np, "trapezoid") else np.trapz(diff, alpha[upper]))
    pval = float(stats.kstest(f[0], "uniform").pvalue)
    return TarpResult(alpha=alpha, ecp=ecp, ecp_lo=lo, ecp_hi=hi, atc=atc, ks_pvalue=pval, f=f[0])


def tarp(samples, truth, priors: Sequence[Prior] | None = None, bounds=None, n_refs: int = 1,
         rng: np.random.Generator | None = None, n_alpha: int = 101, n_bootstrap: int = 100) -> TarpResult:
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
        n_bootstrap: bootstrap resamples of the items for the ECP band.

    See :func:`tarp_credibility` and :func:`tarp_from_credibility`.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    truth = _f(truth)
    if priors is None and bounds is None:
        bounds = (truth.min(axis=0), truth.max(axis=0))
    n, p = truth.shape
    f = np.stack([tarp_credibility(samples, truth, rng.uniform(size=(n, p)), priors, bounds, rng)
                  for _ in range(max(int(n_refs), 1))])
    return tarp_from_credibility(f, rng, n_alpha, n_bootstrap)


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


def compute_metrics(pred, levels=DEFAULT_LEVELS, rng: np.random.Generator | None = None, *,
                    n_posterior_samples: int = 500, tarp_refs: int = 1, n_bootstrap: int = 100,
                    return_arrays: bool = False):
    """Metrics of one :class:`Predictions` in the ``metrics.json`` shape.

    Returns ``{"method", "n", "params": {name: {...}}, "joint": {...}}``. Per parameter: ``rmse, r2,
    mean_rel_err, chi2, nll, crps, coverage ({"0.68": x, "0.95": y}), coverage_error`` (max over
    ``levels``), ``mean_std``, plus ``miscalibration_area``, ``interval_score_0.68/0.95``,
    ``coverage_curve``, ``sbc_ks_pvalue``, the aleatoric/epistemic split and, with member arrays,
    the mixture's ``nll_mixture``, ``crps_mixture``, ``coverage_mixture``. ``joint``: ``tarp_atc,
    tarp_ks_pvalue, sbc_ks_pvalue`` (Bonferroni over parameters), ``ellipse_coverage`` and
    ``ellipse_coverage_error``. Posterior samples come from each item's Gaussian (diagonal, or
    ``cov`` when present) drawn with the local ``rng`` (default ``default_rng(0)``).

    With ``return_arrays=True`` returns ``(metrics, arrays)`` where ``arrays`` holds the PIT,
    z-scores, coverage curves, SBC ranks and the :class:`TarpResult` for the figures.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    lv = _levels(levels)
    if pred.task == "classification":
        m = {"method": pred.method, "n": pred.n, "task": "classification",
             "params": {pred.param_names[0]: classification_metrics(pred.truth, pred.mean)}, "joint": {}}
        return (m, {}) if return_arrays else m

    t, mu, sd = pred.truth, pred.mean, pred.std
    pit_v = pit(t, mu, sd)
    cov_curve = coverage_from_pit(pit_v, lv)
    cov_rep = coverage_from_pit(pit_v, REPORTED_LEVELS)
    cerr = coverage_error(cov_curve, lv)
    cols = {
        "rmse": rmse(t, mu), "r2": r2(t, mu), "mean_rel_err": mean_rel_err(t, mu), "chi2": chi2(t, mu, sd),
        "nll": gaussian_nll(t, mu, sd), "crps": crps_gaussian(t, mu, sd), "coverage_error": cerr,
        "mean_std": sharpness(sd), "miscalibration_area": miscalibration_area(pit_v),
        "mean_z": np.mean(zscore(t, mu, sd), axis=0),
        "mean_std_aleatoric": sharpness(pred.std_aleatoric), "mean_std_epistemic": sharpness(pred.std_epistemic),
        "epistemic_fraction": np.mean(pred.std_epistemic**2 / sd**2, axis=0),
    }
    for level in REPORTED_LEVELS:
        cols[f"interval_score_{level:.2f}"] = interval_score(t, mu, sd, level)
    arrays: dict = {"pit": pit_v, "z": zscore(t, mu, sd), "coverage_curve": cov_curve, "levels": lv}

    mix = {}
    if pred.has_members:
        w = pred.mixture_weights
        pit_m = pit_mixture(t, pred.member_mean, pred.member_std, w)
        cm = coverage_from_pit(pit_m, lv)
        mix = {
            "nll_mixture": mixture_nll(t, pred.member_mean, pred.member_std, w),
            "crps_mixture": crps_mixture(t, pred.member_mean, pred.member_std, w),
            "coverage_error_mixture": coverage_error(cm, lv),
            "_cov_mix": coverage_from_pit(pit_m, REPORTED_LEVELS),
        }
        arrays["coverage_curve_mixture"] = cm
        arrays["pit_mixture"] = pit_m

    # Posterior samples are drawn once per chunk of items and feed both SBC and TARP; chunks keep
    # memory at O(S × chunk × P) for large test sets.
    bounds = None if pred.priors is not None else (t.min(axis=0), t.max(axis=0))
    n_refs = max(int(tarp_refs), 1)
    refs = rng.uniform(size=(n_refs,) + t.shape)
    ranks = np.empty(t.shape, dtype=np.int64)
    f = np.empty((n_refs, pred.n))
    chunk = max(1, int(4_000_000 // max(n_posterior_samples * pred.p, 1)))
    for a in range(0, pred.n, chunk):
        sl = slice(a, min(a + chunk, pred.n))
        samples = gaussian_samples(mu[sl], sd[sl], n_posterior_samples, rng,
                                   cov=None if pred.cov is None else pred.cov[sl])
        ranks[sl] = sbc_ranks(samples, t[sl])
        for k in range(n_refs):
            f[k, sl] = tarp_credibility(samples, t[sl], refs[k, sl], pred.priors, bounds, rng)
    sbc_p = sbc_ks_pvalues(ranks, n_posterior_samples, rng)
    tr = tarp_from_credibility(f, rng, n_bootstrap=n_bootstrap)
    ell = joint_ellipse_coverage(t, mu, pred.cov, lv, std=sd)
    ell_rep = joint_ellipse_coverage(t, mu, pred.cov, REPORTED_LEVELS, std=sd)
    arrays.update(sbc_ranks=ranks, tarp=tr, ellipse_curve=ell)

    params = {}
    for j, name in enumerate(pred.param_names):
        d = {k: float(v[j]) for k, v in cols.items()}
        d["coverage"] = {_level_key(lvl): float(cov_rep[i, j]) for i, lvl in enumerate(REPORTED_LEVELS)}
        d["coverage_curve"] = {_level_key(lvl): float(cov_curve[i, j]) for i, lvl in enumerate(lv)}
        d["sbc_ks_pvalue"] = float(sbc_p[j])
        if mix:
            d["nll_mixture"] = float(mix["nll_mixture"][j])
            d["crps_mixture"] = float(mix["crps_mixture"][j])
            d["coverage_mixture"] = {_level_key(lvl): float(mix["_cov_mix"][i, j])
                                     for i, lvl in enumerate(REPORTED_LEVELS)}
            d["coverage_error_mixture"] = float(mix["coverage_error_mixture"][j])
        params[name] = d
    joint = {
        "tarp_atc": tr.atc,
        "tarp_ks_pvalue": tr.ks_pvalue,
        "sbc_ks_pvalue": float(min(1.0, sbc_p.min() * len(sbc_p))),
        "ellipse_coverage": {_level_key(lvl): float(ell_rep[i]) for i, lvl in enumerate(REPORTED_LEVELS)},
        "ellipse_coverage_error": float(np.max(np.abs(ell - lv))),
        "covariance": "full" if pred.cov is not None else "diagonal",
        "n_posterior_samples": int(n_posterior_samples),
        "tarp_refs": int(tarp_refs),
        "tarp_scaling": "prior" if pred.priors is not None else "range of truth",
    }
    m = {"method": pred.method, "n": pred.n, "params": params, "joint": joint}
    return (m, arrays) if return_arrays else m
