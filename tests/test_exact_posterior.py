"""Exact GRF likelihood, Fisher matrix and grid posterior: checked against simulated maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cosmoinfer.data.priors import sample, standard_priors
from cosmoinfer.simulators.exact import (
    cramer_rao,
    exact_posterior,
    fisher_matrix,
    fisher_matrix_n,
    log_likelihood,
    marginal_cdf_at,
)
from cosmoinfer.simulators.grf import GRFSimulator

PRIORS = standard_priors()[:2]  # Omega_m U[0.1, 0.5], sigma_8 U[0.6, 1.0]


def _maps(sim, theta, n_maps, seed):
    rng = np.random.default_rng(seed)
    n_sims = -(-n_maps // 15)
    return np.concatenate([sim.simulate(theta, rng) for _ in range(n_sims)])[:n_maps]


def test_log_likelihood_matches_direct_full_grid_sum():
    sim = GRFSimulator(grid=16, noise_std=0.3)
    x = _maps(sim, (0.3, 0.8), 4, 0).astype(np.float64)
    P = sim.power_spectrum(0.35, 0.75)
    X = np.fft.fft2(x)
    mask = np.ones((16, 16), bool)
    mask[0, 0] = False
    direct = -0.5 * (np.abs(X[:, mask]) ** 2 / (16**2 * P[mask]) + np.log(2 * np.pi * P[mask])).sum(axis=1)
    np.testing.assert_allclose(log_likelihood(x, 0.35, 0.75, sim), direct, rtol=1e-10)
    # per-map parameters broadcast
    ll = log_likelihood(x, np.array([0.3, 0.35, 0.4, 0.45]), 0.75, sim)
    assert ll.shape == (4,) and ll[1] == pytest.approx(direct[1])


def test_fisher_is_full_grid_sum_and_scales_with_maps():
    sim = GRFSimulator(grid=16)
    F = fisher_matrix(sim, 0.3, 0.8)
    # direct: 1/2 sum over every mode k != 0 of the full grid (not the half plane)
    eps = 1e-4
    d = []
    for i in range(2):
        hi, lo = [0.3, 0.8], [0.3, 0.8]
        hi[i] += eps
        lo[i] -= eps
        p_hi, p_lo = sim.power_spectrum(*hi).ravel()[1:], sim.power_spectrum(*lo).ravel()[1:]  # drop k = 0
        d.append((np.log(p_hi) - np.log(p_lo)) / (2 * eps))
    d = np.stack(d)
    np.testing.assert_allclose(F, 0.5 * d @ d.T, rtol=1e-8)
    # sigma_8 is an amplitude: d ln P / d sigma_8 = 2 / sigma_8 on all 255 modes
    assert F[1, 1] == pytest.approx(0.5 * 255 * (2 / 0.8) ** 2, rel=1e-6)
    np.testing.assert_allclose(fisher_matrix_n(sim, 0.3, 0.8, 15), 15 * F)
    assert np.all(cramer_rao(F) > 0) and cramer_rao(15 * F)[0] == pytest.approx(
        cramer_rao(F)[0] / np.sqrt(15)
    )


@pytest.mark.parametrize("noise_std", [0.0, 1.0])
def test_fisher_equals_score_covariance(noise_std):
    """E[score score^T] = F at the truth; score by central differences of the exact log-likelihood."""
    sim = GRFSimulator(grid=32, noise_std=noise_std)
    truth = (0.3, 0.8)
    x = _maps(sim, truth, 400, seed=1).astype(np.float64)
    eps = 1e-4
    score = np.empty((len(x), 2))
    for i in range(2):
        hi, lo = list(truth), list(truth)
        hi[i] += eps
        lo[i] -= eps
        score[:, i] = (log_likelihood(x, *hi, sim) - log_likelihood(x, *lo, sim)) / (2 * eps)
    F = fisher_matrix(sim, *truth)
    n = len(x)
    # the score has mean zero
    se_mean = np.sqrt(np.diag(F) / n)
    assert np.all(np.abs(score.mean(0)) < 5 * se_mean), (score.mean(0), se_mean)
    # and covariance F, elementwise within 5 Monte Carlo standard errors
    for i in range(2):
        for j in range(2):
            prod = score[:, i] * score[:, j]
            se = prod.std(ddof=1) / np.sqrt(n)
            assert abs(prod.mean() - F[i, j]) < 5 * se, (i, j, prod.mean(), F[i, j], se)


def test_log_likelihood_peaks_near_truth():
    sim = GRFSimulator(grid=32)
    truth = np.array([0.32, 0.77])
    x = _maps(sim, truth, 150, seed=2)
    post = exact_posterior(x, sim, PRIORS, n_grid=96, return_log_post=True)
    joint = post["log_post"].sum(axis=0)  # flat prior: sum of log posteriors = joint log-likelihood + const
    i, j = np.unravel_index(np.argmax(joint), joint.shape)
    mle = np.array([post["grid_Omega_m"][i], post["grid_sigma_8"][j]])
    bound = cramer_rao(fisher_matrix_n(sim, *truth, len(x)))
    spacing = 0.4 / 96
    assert np.all(np.abs(mle - truth) < 4 * bound + spacing), (mle, truth, bound)
    # the grid log posterior is the exact log-likelihood up to a per-map constant
    ll_a = log_likelihood(x[:5], post["grid_Omega_m"][10], post["grid_sigma_8"][20], sim)
    ll_b = log_likelihood(x[:5], post["grid_Omega_m"][50], post["grid_sigma_8"][70], sim)
    np.testing.assert_allclose(
        ll_a - ll_b, post["log_post"][:5, 10, 20] - post["log_post"][:5, 50, 70], rtol=1e-8, atol=1e-6
    )


@pytest.mark.parametrize("noise_std", [0.0, 0.5])
def test_exact_posterior_coverage(noise_std):
    """Truths drawn from the prior: the exact posterior's central intervals cover at their levels."""
    sim = GRFSimulator(grid=32, noise_std=noise_std)
    rng = np.random.default_rng(10 + int(noise_std * 10))
    n = 300
    theta = sample(PRIORS, n, rng)
    x = np.concatenate([sim.simulate(t, rng, n_maps=1) for t in theta])
    post = exact_posterior(x, sim, PRIORS, n_grid=96, return_log_post=True)
    assert post["mean"].shape == (n, 2) and post["std"].shape == (n, 2) and post["cov"].shape == (n, 2, 2)
    assert np.all(post["std"] > 0)
    np.testing.assert_allclose(np.exp(post["log_post"]).sum(axis=(1, 2)), 1.0, rtol=1e-10)
    for axis, grid in ((1, post["grid_Omega_m"]), (2, post["grid_sigma_8"])):
        u = marginal_cdf_at(post["log_post"], grid, theta[:, axis - 1], axis)
        for level in (0.68, 0.95):
            cov = np.mean(np.abs(u - 0.5) <= level / 2)
            tol = 4 * np.sqrt(level * (1 - level) / n)
            assert abs(cov - level) < tol, (axis, level, cov)
        assert stats.kstest(u, "uniform").pvalue > 1e-4
    # the posterior mean beats the prior mean, and its error matches the posterior width
    err2 = ((post["mean"] - theta) ** 2).mean(0)
    assert np.all(err2 < np.array([0.4, 0.4]) ** 2 / 12)
    ratio = err2 / (post["std"] ** 2).mean(0)  # = 1 in expectation for a calibrated posterior
    assert np.all(np.abs(ratio - 1) < 0.3), ratio


def test_exact_posterior_of_a_thousand_maps_resolves_each_posterior():
    """The benchmark's size and grid (speed: ``make bench``, benchmarks/perf_exact.py)."""
    sim = GRFSimulator(grid=64)
    x = _maps(sim, (0.3, 0.8), 1005, seed=3)
    post = exact_posterior(x, sim, PRIORS, n_grid=128)
    assert post["mean"].shape == (1005, 2)
    # for a posterior well inside the box, the cell-centre grid resolves it (>= 3 cells per std)
    assert np.median(post["std"], axis=0).min() > 3 * 0.4 / 128
