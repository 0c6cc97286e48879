"""The ``metrics.json`` block of one set of predictions: :func:`compute_metrics`.

It bundles the array functions of the modules below for one
:class:`~cosmoinfer.posterior.predictions.Predictions`, from its whole predictive:

* :mod:`~cosmoinfer.calibration.accuracy`: point accuracy (rmse, r2, mean_rel_err, chi2) and proper
  scores of Gaussian / mixture summaries (NLL, CRPS, interval score), classification metrics;
* :mod:`~cosmoinfer.calibration.coverage`: PIT, coverage curves and their bands, joint ellipsoids;
* :mod:`~cosmoinfer.calibration.sbc_tarp`: SBC ranks and TARP from posterior draws;
* :mod:`~cosmoinfer.calibration.levels`: nominal levels and false-alarm rates.

Every name those modules define stays importable from here, as before the split.
"""

from __future__ import annotations

import numpy as np

from cosmoinfer.calibration import by_simulation as bysim
from cosmoinfer.calibration import scores
from cosmoinfer.calibration.accuracy import (  # noqa: F401  (re-exported)
    chi2,
    classification_metrics,
    crps_gaussian,
    crps_mixture,
    gaussian_nll,
    interval_score,
    interval_score_from_bounds,
    mean_rel_err,
    mixture_nll,
    r2,
    rmse,
    sharpness,
    sr_crps_ensemble,
    zscore,
)
from cosmoinfer.calibration.by_simulation import ks_uniform_pvalue
from cosmoinfer.calibration.coverage import (  # noqa: F401  (re-exported)
    binomial_band,
    coverage,
    coverage_error,
    coverage_from_pit,
    coverage_mixture,
    coverage_tolerance,
    joint_ellipse_coverage,
    mahalanobis2,
    miscalibration_area,
    mixture_interval,
    pit,
    pit_mixture,
)
from cosmoinfer.calibration.levels import (  # noqa: F401  (re-exported)
    ALPHA_COVERAGE,
    ALPHA_SCALE,
    ALPHA_VERDICT,
    DEFAULT_LEVELS,
    REPORTED_LEVELS,
)
from cosmoinfer.calibration.levels import check_levels as _levels
from cosmoinfer.calibration.levels import level_key as _level_key
from cosmoinfer.calibration.sbc_tarp import (  # noqa: F401  (re-exported)
    TarpResult,
    gaussian_samples,
    sbc_ks_pvalues,
    sbc_ranks,
    tarp,
    tarp_credibility,
    tarp_from_credibility,
    unit_scale,
)


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
