"""Exact likelihood, Fisher matrix and grid posterior for Gaussian-random-field maps.

For a map ``x`` (N x N) from :class:`~cosmoinfer.simulators.grf.GRFSimulator` with pixel-unit
spectrum ``P_k`` and ``X = fft2(x)``, the exact log-likelihood (``k = 0`` left out) is

    ln L = -1/2 sum_{k != 0} [ |X_k|^2 / (N^2 P_k) + ln P_k + ln 2 pi ],

summed over the *full* FFT grid (each mode and its conjugate partner both count; this is the
exact Gaussian density of a real field with circulant covariance). ``P_k`` depends on ``k`` only
through ``|k|``, so a map enters only through its ring sums ``Q_r = sum_{|k| in ring r} |X_k|^2``
and

    ln L = -1/2 sum_r [ Q_r / (N^2 P_r) + m_r ln P_r ] - (N^2 - 1)/2 ln 2 pi,

with ``m_r`` the number of modes on ring ``r``. On a parameter grid this is one matrix product
``Q (maps, R) @ (1 / N^2 P)^T (R, grid points)``. The Fisher matrix per map is
``F_ij = 1/2 sum_{k != 0} d_i ln P_k d_j ln P_k``.

Parameters are ``(Omega_m, sigma_8)`` in that order throughout.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cosmoinfer.data.priors import Prior, from_unit
from cosmoinfer.simulators.grf import GRFSimulator

_LOG_2PI = np.log(2 * np.pi)


def _n_modes(sim: GRFSimulator) -> int:
    return int(sim.rings.count.sum())


def log_likelihood(maps, Omega_m, sigma_8, sim: GRFSimulator) -> np.ndarray:
    """Exact log-likelihood of each map, ``(M, N, N)`` -> ``(M,)`` (natural log, ``k = 0`` excluded).

    ``Omega_m`` and ``sigma_8`` are scalars or ``(M,)`` arrays (one parameter pair per map). A single
    map ``(N, N)`` gives a scalar-shaped ``()`` result.
    """
    maps = np.asarray(maps)
    q = sim.rings.ring_sums(maps)  # (..., R)
    p = sim.ring_power(Omega_m, sigma_8)  # (..., R)
    n2 = sim.grid**2
    m = sim.rings.count
    return -0.5 * (np.sum(q / (n2 * p) + m * np.log(p), axis=-1) + _n_modes(sim) * _LOG_2PI)


def dlnP(sim: GRFSimulator, Omega_m: float, sigma_8: float, eps: float = 1e-4) -> np.ndarray:
    """Derivatives ``d ln P_r / d theta_i`` per ring by central differences, shape ``(2, R)``."""
    out = []
    for i in range(2):
        lo = [Omega_m, sigma_8]
        hi = [Omega_m, sigma_8]
        lo[i] -= eps
        hi[i] += eps
        out.append((np.log(sim.ring_power(*hi)) - np.log(sim.ring_power(*lo))) / (2 * eps))
    return np.stack(out)


def fisher_matrix(sim: GRFSimulator, Omega_m: float, sigma_8: float, eps: float = 1e-4) -> np.ndarray:
    """Fisher matrix of one map for ``(Omega_m, sigma_8)``, shape ``(2, 2)``.

    ``F_ij = 1/2 sum_{k != 0, full FFT grid} d_i ln P_k d_j ln P_k``, derivatives by central
    differences of step ``eps``.
    """
    d = dlnP(sim, Omega_m, sigma_8, eps)
    return 0.5 * (d * sim.rings.count) @ d.T


def fisher_matrix_n(
    sim: GRFSimulator, Omega_m: float, sigma_8: float, n_maps: int, eps: float = 1e-4
) -> np.ndarray:
    """Fisher matrix of ``n_maps`` independent maps: ``n_maps * fisher_matrix(...)``, shape ``(2, 2)``."""
    return n_maps * fisher_matrix(sim, Omega_m, sigma_8, eps)


def cramer_rao(F) -> np.ndarray:
    """Cramer-Rao bound on the standard deviation of each parameter, ``sqrt(diag(F^-1))``, shape ``(P,)``."""
    return np.sqrt(np.diag(np.linalg.inv(np.asarray(F, dtype=np.float64))))


def parameter_grid(priors: Sequence[Prior], n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre grid over the prior box: returns ``(Omega_m (n,), sigma_8 (n,))`` in physical units.

    Cells are equal in the prior's own coordinate (log for log-uniform priors), so each cell has
    equal prior mass.
    """
    u = (np.arange(n_grid) + 0.5) / n_grid
    axes = from_unit(np.stack([u, u], axis=1), list(priors))
    return axes[:, 0], axes[:, 1]


#: Parameter-grid terms kept per simulator instance (each can be ~100 MB at n_grid = 256).
_GRID_CACHE_SIZE = 2


def _grid_terms(sim: GRFSimulator, priors: Sequence[Prior], n_grid: int):
    """What :func:`exact_posterior` needs on the parameter grid, independent of the maps.

    ``(om (n,), s8 (n,), inv (R, n^2) = 1 / (N^2 P), const (n^2,), t (n^2, 2), t2 (n^2, 3), centre (2,))``.
    The spectra on the grid (``n`` EH98 transfer functions projected over the slab) cost seconds,
    more than the posterior of hundreds of maps, so they are computed once per simulator, priors
    and grid and kept on ``sim`` (the last :data:`_GRID_CACHE_SIZE`); callers that go through the
    maps block by block pay for them once.
    """
    key = (n_grid, sim.grid, sim.box_size, sim.slab_thickness, sim.noise_std,
           tuple(repr(sorted(p.to_dict().items())) for p in priors))
    cache = sim.__dict__.setdefault("_exact_grid_terms", {})
    if key in cache:
        return cache[key]
    om, s8 = parameter_grid(priors, n_grid)
    b = sim.signal_ring_power(om)  # (n, R)
    p = s8[None, :, None] ** 2 * b[:, None, :] + sim.noise_std**2  # (n, n, R)
    p = p.reshape(n_grid * n_grid, -1)
    inv = np.ascontiguousarray((1.0 / (sim.grid**2 * p)).T)  # (R, n^2)
    const = -0.5 * (np.log(p) @ sim.rings.count + _n_modes(sim) * _LOG_2PI)  # (n^2,)
    theta = np.stack(np.meshgrid(om, s8, indexing="ij"), axis=-1).reshape(-1, 2)  # (n^2, 2)
    centre = theta.mean(axis=0)
    t = theta - centre  # centred, so the second moments lose no precision
    t2 = np.stack([t[:, 0] ** 2, t[:, 0] * t[:, 1], t[:, 1] ** 2], axis=1)  # (n^2, 3)
    terms = (om, s8, inv, const, t, t2, centre)
    for a in terms:
        a.flags.writeable = False
    while len(cache) >= _GRID_CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = terms
    return terms


def exact_posterior(
    maps,
    sim: GRFSimulator,
    priors: Sequence[Prior],
    n_grid: int = 128,
    return_log_post: bool = False,
    chunk: int = 512,
) -> dict[str, np.ndarray]:
    """Exact posterior of ``(Omega_m, sigma_8)`` for each map on an ``n_grid x n_grid`` grid.

    Args:
        maps: ``(M, N, N)`` GRF maps (each gets its own posterior).
        sim: the simulator that made them (spectrum, noise).
        priors: the two priors ``(Omega_m, sigma_8)``; the prior is flat over their box (flat in
            log for a log-uniform prior).
        n_grid: grid points per parameter (cell centres).
        return_log_post: also return the normalised log posterior on the grid.
        chunk: maps per matrix product (memory: ``chunk * n_grid^2`` doubles).

    Returns:
        dict with ``mean (M, 2)``, ``std (M, 2)``, ``cov (M, 2, 2)`` in physical units, the grid
        axes ``grid_Omega_m (n,)`` and ``grid_sigma_8 (n,)``, and with ``return_log_post`` also
        ``log_post (M, n, n)`` (axis 1: Omega_m, axis 2: sigma_8; ``logsumexp`` over a map's grid = 0).
    """
    priors = list(priors)
    if len(priors) != 2:
        raise ValueError(f"exact_posterior needs the two priors (Omega_m, sigma_8), got {len(priors)}")
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    om, s8, inv, const, t, t2, centre = _grid_terms(sim, priors, int(n_grid))

    M = maps.shape[0]
    mean = np.empty((M, 2))
    cov = np.empty((M, 2, 2))
    log_post = np.empty((M, n_grid, n_grid)) if return_log_post else None
    for i in range(0, M, chunk):
        q = sim.rings.ring_sums(maps[i : i + chunk])  # (m, R)
        lp = -0.5 * (q @ inv) + const  # (m, n^2)
        lp -= lp.max(axis=1, keepdims=True)
        w = np.exp(lp)
        z = w.sum(axis=1, keepdims=True)
        w /= z
        mu = w @ t  # (m, 2), centred
        m2 = w @ t2  # (m, 3)
        c = cov[i : i + chunk]
        c[:, 0, 0] = m2[:, 0] - mu[:, 0] ** 2
        c[:, 0, 1] = c[:, 1, 0] = m2[:, 1] - mu[:, 0] * mu[:, 1]
        c[:, 1, 1] = m2[:, 2] - mu[:, 1] ** 2
        mean[i : i + chunk] = mu + centre
        if return_log_post:
            log_post[i : i + chunk] = (lp - np.log(z)).reshape(-1, n_grid, n_grid)
    out = dict(
        mean=mean, std=np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), cov=cov, grid_Omega_m=om.copy(),
        grid_sigma_8=s8.copy()
    )
    if return_log_post:
        out["log_post"] = log_post
    return out


def marginal_cdf_at(log_post: np.ndarray, grid: np.ndarray, truth: np.ndarray, axis: int) -> np.ndarray:
    """Posterior CDF of one parameter at the true value, from grid posteriors.

    ``log_post (M, n, n)``, ``grid (n,)`` cell centres of the parameter on ``axis`` (1 or 2),
    ``truth (M,)``. The marginal mass of each cell is spread uniformly over the cell (edges halfway
    between centres, outer edges mirrored), so the CDF is piecewise linear. Returns ``(M,)`` in
    [0, 1]; for a calibrated posterior these are uniform.
    """
    other = 2 if axis == 1 else 1
    pm = np.exp(log_post).sum(axis=other)  # (M, n)
    pm /= pm.sum(axis=1, keepdims=True)
    edges = np.concatenate(
        [
            [grid[0] - (grid[1] - grid[0]) / 2],
            (grid[1:] + grid[:-1]) / 2,
            [grid[-1] + (grid[-1] - grid[-2]) / 2],
        ]
    )
    cdf = np.concatenate([np.zeros((pm.shape[0], 1)), np.cumsum(pm, axis=1)], axis=1)
    return np.array([np.interp(t, edges, c) for t, c in zip(np.asarray(truth), cdf)])
