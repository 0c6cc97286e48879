"""A predictive against the exact posterior (grf data): one definition of each figure.

The report and the physical-limit benchmark both use these, so a figure means the same thing in
``metrics.json`` and in ``benchmarks/RESULTS.md``. Pure numpy; arrays are ``(N, P)`` over ``N``
test maps and ``P`` parameters in physical units unless stated, and per-parameter figures are
``(P,)``.

* :func:`efficiency` = MSE(exact posterior mean) / MSE(network mean): 1 at the physical limit.
* :func:`std_ratio_median` = median over maps of network std / exact std.
* :func:`mean_shift` = RMS over maps of (network mean - exact mean) / exact std.
* :func:`expected_kl` = mean over maps of ``log p_exact(theta_true | x) - log q(theta_true | x)``
  (nats), with a percentile bootstrap interval over simulations. The truth is a draw from the
  exact posterior of its map, so this estimates ``E_x KL(p_exact || q)``: 0 for the exact
  posterior, positive for anything else (up to noise).
"""

from __future__ import annotations

import numpy as np


def efficiency(truth, mean, exact_mean) -> np.ndarray:
    """``MSE(exact_mean) / MSE(mean)`` per parameter, ``(P,)``; all inputs ``(N, P)``, physical units."""
    truth = np.asarray(truth, dtype=np.float64)
    mse_net = np.mean((np.asarray(mean, dtype=np.float64) - truth) ** 2, axis=0)
    mse_ex = np.mean((np.asarray(exact_mean, dtype=np.float64) - truth) ** 2, axis=0)
    return mse_ex / mse_net


def std_ratio_median(std, exact_std) -> np.ndarray:
    """Median over maps of ``std / exact_std`` per parameter, ``(P,)``; inputs ``(N, P)``."""
    return np.median(np.asarray(std, dtype=np.float64) / np.asarray(exact_std, dtype=np.float64), axis=0)


def mean_shift(mean, exact_mean, exact_std) -> np.ndarray:
    """RMS over maps of ``(mean - exact_mean) / exact_std`` per parameter, ``(P,)`` (in exact-posterior widths)."""
    z = (np.asarray(mean, dtype=np.float64) - np.asarray(exact_mean, dtype=np.float64)) / np.asarray(
        exact_std, dtype=np.float64)
    return np.sqrt(np.mean(z**2, axis=0))


def expected_kl(exact_log_prob, log_q, sim_id, rng: np.random.Generator | None = None, n_boot: int = 1000,
                level: float = 0.95) -> dict:
    """Expected KL divergence from the exact posterior, in nats, with a simulation bootstrap interval.

    Args:
        exact_log_prob: ``(N,)`` ``log p_exact(theta_true | x)`` of each test map (physical units).
        log_q: ``(N,)`` ``log q(theta_true | x)`` of the predictive being judged, same units.
        sim_id: ``(N,)`` simulation of each map; the maps of one simulation share their truth, so
            the bootstrap resamples simulations (with replacement), never maps.
        rng: generator of the bootstrap draws (default ``default_rng(0)``).
        n_boot, level: bootstrap draws and interval level (percentile interval).

    Returns:
        ``{"value", "lo", "hi", "n_sims"}``: the mean of ``exact_log_prob - log_q`` over maps and
        its interval (``nan`` bounds with fewer than 2 simulations). A map where ``q`` is 0 at
        the truth makes it ``inf``.
    """
    d = np.asarray(exact_log_prob, dtype=np.float64) - np.asarray(log_q, dtype=np.float64)
    sid = np.asarray(sim_id)
    if d.ndim != 1 or sid.shape != d.shape:
        raise ValueError(f"exact_log_prob, log_q and sim_id must be (N,) alike, got {d.shape} and {sid.shape}")
    if d.size == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_sims": 0}
    _, inv = np.unique(sid, return_inverse=True)
    inv = inv.ravel()
    n_sims = int(inv.max()) + 1
    sums = np.bincount(inv, weights=np.where(np.isfinite(d), d, 0.0), minlength=n_sims)
    counts = np.bincount(inv, minlength=n_sims).astype(np.float64)
    value = float(np.mean(d))
    if not np.isfinite(value) or n_sims < 2:
        return {"value": value, "lo": float("nan"), "hi": float("nan"), "n_sims": n_sims}
    rng = np.random.default_rng(0) if rng is None else rng
    pick = rng.integers(0, n_sims, size=(int(n_boot), n_sims))
    boot = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)  # mean over the maps of the drawn simulations
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"value": value, "lo": float(lo), "hi": float(hi), "n_sims": n_sims}
