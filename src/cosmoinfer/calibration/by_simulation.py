"""Tolerances, bands and p-values that respect the simulation structure.

The 15 maps of a simulation are correlated (they share the parameters and, for CMD, the same
volume), so a test that treats ``N`` maps as independent flags calibrated posteriors far more
often than its nominal rate. Everything here counts simulations, not maps:

* p-values of uniformity tests (PIT, SBC ranks, TARP credibilities) use **one map per
  simulation**, drawn at random with the caller's generator: the test is then exact.
* tolerances and bands of statistics averaged over all maps (coverage at each level, the width
  scale) come from a **bootstrap over simulations** (whole simulations are resampled), with the
  small-sample factor ``sqrt(G / (G - 1))`` for ``G`` simulations.

Inputs are ``sim_id (N,)`` integer labels; values are ``(N,)`` or ``(N, P)`` arrays over maps.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _f(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def n_sims(sim_id) -> int:
    """Number of distinct simulations."""
    return int(np.unique(np.asarray(sim_id)).size)


def one_per_sim(sim_id, rng: np.random.Generator) -> np.ndarray:
    """Indices of one map drawn at random from each simulation, ``(G,)``, in simulation order."""
    sim_id = np.asarray(sim_id)
    order = rng.permutation(sim_id.size)
    _, first = np.unique(sim_id[order], return_index=True)
    return np.sort(order[first])


def ks_uniform_pvalue(u, sim_id, rng: np.random.Generator) -> np.ndarray:
    """KS test of U(0, 1) on one map per simulation; ``u (N,)`` -> scalar, ``(N, P)`` -> ``(P,)`` p-values."""
    u = _f(u)
    idx = one_per_sim(sim_id, rng)
    if u.ndim == 1:
        return float(stats.kstest(u[idx], "uniform").pvalue)
    return np.array([stats.kstest(u[idx, j], "uniform").pvalue for j in range(u.shape[1])])


def _cluster_sums(values: np.ndarray, sim_id) -> tuple[np.ndarray, np.ndarray]:
    """Per-simulation sums of ``values (N, ...)`` -> ``(G, ...)`` and map counts ``(G,)``."""
    _, inv = np.unique(np.asarray(sim_id), return_inverse=True)
    g = inv.max() + 1
    flat = values.reshape(values.shape[0], -1)
    sums = np.zeros((g, flat.shape[1]))
    np.add.at(sums, inv, flat)
    return sums.reshape((g,) + values.shape[1:]), np.bincount(inv, minlength=g).astype(np.float64)


def bootstrap_means(values, sim_id, rng: np.random.Generator, n_boot: int = 1000) -> np.ndarray:
    """Means over maps of ``values (N, ...)`` for ``n_boot`` resamples of whole simulations, ``(B, ...)``."""
    values = _f(values)
    sums, counts = _cluster_sums(values, sim_id)
    g = counts.size
    w = np.stack([np.bincount(rng.integers(0, g, g), minlength=g) for _ in range(n_boot)]).astype(np.float64)
    flat = sums.reshape(g, -1)
    out = (w @ flat) / (w @ counts)[:, None]
    return out.reshape((n_boot,) + values.shape[1:])


def small_sample_factor(sim_id) -> float:
    """``sqrt(G / (G - 1))``: the bootstrap's spread underestimates the sampling spread by this much."""
    g = n_sims(sim_id)
    return float(np.sqrt(g / max(g - 1, 1)))


def coverage_indicators(pit_values, levels) -> np.ndarray:
    """Whether each map's truth lies in the central interval at each level, ``(N, L, P)`` floats."""
    lv = _f(levels).ravel()
    d = np.abs(_f(pit_values) - 0.5)
    if d.ndim == 1:
        d = d[:, None]
    return (d[:, None, :] <= lv[None, :, None] / 2).astype(np.float64)


def coverage_tolerance(pit_values, sim_id, levels, rng: np.random.Generator, alpha: float = 0.05,
                       n_boot: int = 1000) -> np.ndarray:
    """How large ``coverage_error`` may be for a calibrated predictor on these simulations, ``(P,)``.

    The ``1 - alpha`` quantile of ``max_levels |c*(level) - c(level)|`` over bootstrap resamples
    of simulations (``c``: coverage of the central intervals over all maps), times
    :func:`small_sample_factor`. For independent maps this is close to the DKW/KS bound; for
    correlated maps it widens as the effective sample size shrinks.
    """
    ind = coverage_indicators(pit_values, levels)  # (N, L, P)
    c = ind.mean(axis=0)
    boot = bootstrap_means(ind, sim_id, rng, n_boot)  # (B, L, P)
    dev = np.max(np.abs(boot - c[None]), axis=1)  # (B, P)
    return np.quantile(dev, 1 - alpha, axis=0) * small_sample_factor(sim_id)


def coverage_band(pit_values, sim_id, levels, rng: np.random.Generator, conf: float = 0.95,
                  n_boot: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise ``conf`` band ``(lo, hi)``, each ``(L, P)``, of a calibrated predictor's coverage.

    Centred on the nominal levels, with the bootstrap-over-simulations spread of the empirical
    coverage at each level (times :func:`small_sample_factor`).
    """
    lv = _f(levels).ravel()
    ind = coverage_indicators(pit_values, levels)
    c = ind.mean(axis=0)
    boot = bootstrap_means(ind, sim_id, rng, n_boot) - c[None]
    q_lo, q_hi = np.quantile(boot, [(1 - conf) / 2, (1 + conf) / 2], axis=0) * small_sample_factor(sim_id)
    return np.clip(lv[:, None] + q_lo, 0, 1), np.clip(lv[:, None] + q_hi, 0, 1)


def mean_with_se(values, sim_id, rng: np.random.Generator, n_boot: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Mean over maps of ``values (N, ...)`` and its standard error from a bootstrap over simulations."""
    values = _f(values)
    boot = bootstrap_means(values, sim_id, rng, n_boot)
    return values.mean(axis=0), boot.std(axis=0, ddof=1) * small_sample_factor(sim_id)


def bootstrap_interval(values, sim_id, rng: np.random.Generator, level: float = 0.95,
                       n_boot: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over maps with a percentile bootstrap interval over simulations: ``(mean, lo, hi)``."""
    values = _f(values)
    boot = bootstrap_means(values, sim_id, rng, n_boot)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return values.mean(axis=0), lo, hi


def critical_t(sim_id, alpha: float) -> float:
    """Two-sided Student-t critical value with ``G - 1`` degrees of freedom (cluster-robust tests)."""
    return float(stats.t.ppf(1 - alpha / 2, max(n_sims(sim_id) - 1, 1)))
