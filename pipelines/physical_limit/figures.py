"""The benchmark's statistics: the package's definitions (:mod:`cosmoinfer.calibration`) applied to
the stages' ``predictions.h5``.

Nothing is defined twice: the exact-posterior figures are :mod:`cosmoinfer.calibration.exact`'s,
the coverage and recalibration figures :mod:`~cosmoinfer.calibration.metrics`' and
:mod:`~cosmoinfer.calibration.recalibration`'s, the whole-predictive figures
:func:`~cosmoinfer.calibration.compute_metrics`' ``joint`` block, and the bootstraps resample
whole simulations as :mod:`~cosmoinfer.calibration.by_simulation` does. What is here is the glue:
which predictions are fitted and judged on which, and the per-parameter layout of the JSON.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def calibration_figures(test, val, ci: bool = False) -> dict[str, np.ndarray]:
    """Per parameter ``(P,)``: rmse, coverage error before and after variance scaling (fitted on val).

    ``ci``: also ``coverage_error_isotonic_ci_low`` / ``_high``, the simulation bootstrap interval
    of the isotonic figure (:func:`isotonic_error_interval`).
    """
    from cosmoinfer.calibration.metrics import coverage, coverage_error, rmse
    from cosmoinfer.calibration.recalibration import fit_isotonic, fit_std_scaling

    out = {"rmse": rmse(test.truth, test.mean),
           "coverage_error": coverage_error(coverage(test.truth, test.mean, test.std))}
    if val is not None:
        s = fit_std_scaling(val.truth, val.mean, val.std)
        out["coverage_error_recalibrated"] = coverage_error(coverage(test.truth, test.mean, test.std * s))
        out["recalibration_scale"] = s
        # isotonic recalibration of the PIT (fixes the shape, not only the width), also fitted on val
        iso = fit_isotonic(val.truth, val.mean, val.std)
        out["coverage_error_isotonic"] = coverage_error(iso.recalibrated_coverage(test.truth, test.mean,
                                                                                  test.std))
        if ci:
            lo, hi = isotonic_error_interval(test, val)
            out["coverage_error_isotonic_ci_low"], out["coverage_error_isotonic_ci_high"] = lo, hi
    return out


def isotonic_error_interval(test, val, n_boot: int = 200, level: float = 0.95,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the coverage error after isotonic recalibration, each bound ``(P,)``.

    ``test`` and ``val`` carry ``truth``, ``mean``, ``std`` ``(N, P)`` and ``sim_id (N,)``. Each
    draw resamples the simulations of both sets with replacement (the maps of one simulation share
    their parameters), refits the recalibration on the val draw and judges it on the test draw. It
    measures how far the figure moves with the val and test sets alone: the floor below which a
    coverage-error target cannot tell two predictors apart.
    """
    from cosmoinfer.calibration.metrics import coverage_error, pit
    from cosmoinfer.calibration.recalibration import IsotonicCalibrator

    rng = np.random.default_rng(seed)
    pits, groups = [], []
    for p in (val, test):
        pits.append(pit(p.truth, p.mean, p.std))
        _, inv = np.unique(np.asarray(p.sim_id), return_inverse=True)
        order = np.argsort(inv, kind="stable")
        groups.append(np.split(order, np.cumsum(np.bincount(inv))[:-1]))  # map indices of each simulation
    errs = []
    for _ in range(int(n_boot)):
        v, t = (np.concatenate([g[i] for i in rng.integers(0, len(g), len(g))]) for g in groups)
        iso = IsotonicCalibrator.from_pit(pits[0][v])
        errs.append(coverage_error(iso.recalibrated_coverage_from_pit(pits[1][t])))
    lo, hi = np.quantile(np.array(errs), [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lo, hi


def exact_figures(test, val=None, ci: bool = False, reference: dict | None = None) -> dict[str, np.ndarray]:
    """Network vs exact posterior, per parameter ``(P,)`` (needs ``exact_mean``/``exact_std``).

    Also the reference figures of the exact posterior itself, :func:`exact_reference` of the same
    maps; ``reference`` passes them in when they are already computed (``{}``: leave them out).
    """
    from cosmoinfer.calibration.exact import efficiency, mean_shift, std_ratio_median

    em, es = test.extra["exact_mean"], test.extra["exact_std"]
    out = {"efficiency": efficiency(test.truth, test.mean, em),
           "std_ratio_median": std_ratio_median(test.std, es),
           "mean_shift": mean_shift(test.mean, em, es)}
    out.update(exact_reference(test, val, ci) if reference is None else reference)
    return out


def exact_reference(test, val=None, ci: bool = False) -> dict[str, np.ndarray]:
    """The exact posterior summarised as a Gaussian (its mean and std), scored like a network, ``(P,)``.

    ``exact_rmse`` and ``exact_coverage_error`` (before and, with ``val``, after variance scaling
    and after isotonic recalibration fitted on val; ``ci``: the latter's bootstrap interval). The
    exact posterior is non-Gaussian (truncated by the prior box), so its Gaussian intervals are not
    exactly calibrated: that is the floor for a Gaussian-head network; after isotonic
    recalibration what is left is the fitting noise of the val maps, the floor of any recalibrated
    predictor. Depends only on the maps, not on the network that predicted them.
    """
    fit = _exact_as_gaussian(val) if val is not None and "exact_mean" in val.extra else None
    ref = calibration_figures(_exact_as_gaussian(test), fit, ci=ci)
    return {f"exact_{k}": v for k, v in ref.items() if k != "recalibration_scale"}


def predictive_coverage_errors(test, metrics: dict | None = None) -> np.ndarray:
    """Marginal coverage error ``(P,)`` of the whole stored predictive (its PIT, equal-tailed intervals).

    ``compute_metrics``' per-parameter ``coverage_error``, before any recalibration: for a flow,
    mixture or BNN it is read from the predictive's own marginal CDFs, not from a Gaussian with its
    moments (:func:`calibration_figures`' ``coverage_error`` is the Gaussian-interval figure).
    ``metrics``: that ``compute_metrics`` result, if already computed.
    """
    from cosmoinfer.calibration.metrics import compute_metrics

    m = metrics or compute_metrics(test, rng=np.random.default_rng(0), n_posterior_samples=200, n_bootstrap=200)
    return np.array([float(np.squeeze(m["params"][nm]["coverage_error"])) for nm in test.param_names])


def interval_figures(test, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, np.ndarray]:
    """RMSE and the whole predictive's marginal coverage error, each with a bootstrap interval over simulations.

    Per parameter ``(P,)``: ``rmse`` with ``rmse_lo`` / ``rmse_hi`` (percentile interval of the RMSE over
    ``n_boot`` resamples of whole simulations) and ``coverage_error`` (max over the levels 0.05 ... 0.95
    of |coverage of the central intervals - level|, read from the predictive's PIT as the report reads
    it, before any recalibration) with ``coverage_error_lo`` / ``_hi`` (the same statistic on each
    resample). The maps of one simulation share their parameters, so whole simulations are resampled
    (:mod:`cosmoinfer.calibration.by_simulation`).
    """
    from cosmoinfer.calibration import scores
    from cosmoinfer.calibration.by_simulation import bootstrap_means, coverage_indicators
    from cosmoinfer.calibration.levels import DEFAULT_LEVELS

    rng = np.random.default_rng(seed)
    q = ((1 - level) / 2, (1 + level) / 2)
    sq = (np.asarray(test.truth) - np.asarray(test.mean)) ** 2  # (N, P)
    rmse_b = np.sqrt(bootstrap_means(sq, test.sim_id, rng, n_boot))  # (B, P)
    lv = np.asarray(DEFAULT_LEVELS)
    ind = coverage_indicators(scores.pit(test.predictive, test.truth), lv)  # (N, L, P)
    err = np.max(np.abs(ind.mean(axis=0) - lv[:, None]), axis=0)  # (P,)
    err_b = np.max(np.abs(bootstrap_means(ind, test.sim_id, rng, n_boot) - lv[None, :, None]), axis=1)  # (B, P)
    return {"rmse": np.sqrt(sq.mean(axis=0)), "rmse_lo": np.quantile(rmse_b, q[0], axis=0),
            "rmse_hi": np.quantile(rmse_b, q[1], axis=0), "coverage_error": err,
            "coverage_error_lo": np.quantile(err_b, q[0], axis=0), "coverage_error_hi": np.quantile(err_b, q[1], axis=0)}


def joint_figures(test, prefix: str = "", exact: bool = False, metrics: dict | None = None) -> dict:
    """Figures of the whole predictive of ``test`` (a :class:`Predictions`), for the ``joint`` entry.

    ``expected_kl`` / ``_lo`` / ``_hi``, ``hpd_coverage_error`` and ``nll`` from the ``joint`` block
    of :func:`cosmoinfer.calibration.compute_metrics`, keys prefixed ``prefix``; ``exact``: also the
    exact posterior's own ``exact_hpd_coverage_error`` (the same definition, from the stored
    ``exact_hpd`` credibilities) and ``exact_nll`` (from ``exact_log_prob``). ``metrics``: the
    ``compute_metrics`` result of ``test``, if already computed. ``None`` where a
    figure cannot be computed (a predictive with zero density at some truth has no NLL or KL).
    """
    from cosmoinfer.calibration.metrics import DEFAULT_LEVELS, compute_metrics
    from cosmoinfer.calibration.scores import coverage_from_credibility

    joint = (metrics or compute_metrics(test, rng=np.random.default_rng(0), n_posterior_samples=200,
                                        n_bootstrap=200))["joint"]
    kl = joint.get("expected_kl") or {}
    out = {"expected_kl": kl.get("value"), "expected_kl_lo": kl.get("lo"), "expected_kl_hi": kl.get("hi"),
           "hpd_coverage_error": joint.get("hpd_coverage_error"), "nll": joint.get("nll")}
    out = {prefix + k: None if v is None else _num(v) for k, v in out.items()}
    if exact and "exact_hpd" in test.extra:
        levels = np.asarray(DEFAULT_LEVELS, dtype=np.float64)
        curve = coverage_from_credibility(test.extra["exact_hpd"], levels)
        out["exact_hpd_coverage_error"] = _num(np.max(np.abs(curve - levels)))  # as compute_metrics' figure
    if exact and "exact_log_prob" in test.extra:
        out["exact_nll"] = _num(-np.mean(test.extra["exact_log_prob"]))
    return out


def kl_gain(test, ref) -> dict | None:
    """How much closer ``test``'s predictive is to the exact posterior than ``ref``'s, on the same maps, nats.

    ``KL(ref) - KL(test)`` = the mean over maps of ``log q_test(truth) - log q_ref(truth)`` (the exact
    posterior's term cancels), with the simulation bootstrap interval of
    :func:`cosmoinfer.calibration.exact.expected_kl` (the same draws for both: a paired difference,
    far tighter than the two KL intervals side by side). Positive: ``test`` is closer. ``None`` unless
    both are predictions of the same maps with finite densities at every truth.
    """
    from cosmoinfer.calibration.exact import expected_kl
    from cosmoinfer.calibration.scores import log_score

    if not _same_maps(test, ref):
        return None
    a, b = log_score(test.predictive, test.truth), log_score(ref.predictive, ref.truth)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    d = expected_kl(a, b, test.sim_id)  # mean(a - b) with its simulation bootstrap
    return {k: _num(d[k]) for k in ("value", "lo", "hi")}


def bootstrap_gain(truth, mean_a, mean_b, sim_id, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the RMSE gain ``1 − RMSE(a) / RMSE(b)``, each bound ``(P,)``.

    ``truth``, ``mean_a``, ``mean_b`` are ``(N, P)`` for the same maps, ``sim_id (N,)`` their
    simulations: the maps of one simulation share their parameters, so whole simulations are
    resampled (:func:`cosmoinfer.calibration.by_simulation.bootstrap_means`, ``n_boot`` times,
    fixed ``seed``), the same draws for both predictors.
    """
    from cosmoinfer.calibration.by_simulation import bootstrap_means

    t = np.asarray(truth, dtype=np.float64)
    sq = np.stack([(np.asarray(m, dtype=np.float64) - t) ** 2 for m in (mean_a, mean_b)], axis=1)  # (N, 2, P)
    mse = bootstrap_means(sq, sim_id, np.random.default_rng(seed), n_boot)  # (n_boot, 2, P)
    gain = 1 - np.sqrt(mse[:, 0] / mse[:, 1])
    lo, hi = np.quantile(gain, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lo, hi


def _same_maps(a, b) -> bool:
    """Whether two prediction sets (or ``None``s) are of the same maps (simulations, truths, exact means)."""
    if a is None or b is None:
        return a is b
    return (a.n == b.n and np.array_equal(a.sim_id, b.sim_id) and np.array_equal(a.truth, b.truth)
            and np.array_equal(a.extra.get("exact_mean"), b.extra.get("exact_mean")))


def _exact_as_gaussian(p) -> SimpleNamespace:
    """``p``'s exact posterior summarised as a Gaussian: ``truth``, ``mean``, ``std`` ``(N, P)``."""
    return SimpleNamespace(truth=p.truth, mean=p.extra["exact_mean"], std=p.extra["exact_std"],
                           sim_id=getattr(p, "sim_id", None))


def _per_param(names, figs: dict, prefix: str = "") -> dict:
    """``{parameter: {prefix + figure: value}}`` from figures ``(P,)`` each."""
    return {nm: {prefix + k: _num(v[j]) for k, v in figs.items()} for j, nm in enumerate(names)}


def _num(x) -> float | None:
    """A JSON number with 6 significant digits; ``None`` for nan and inf."""
    x = float(x)
    return None if not np.isfinite(x) else float(f"{x:.6g}")


def _merge(a: dict, b: dict) -> dict:
    """``a`` with the per-parameter dicts of ``b`` merged in."""
    for k, v in b.items():
        a.setdefault(k, {}).update(v)
    return a
