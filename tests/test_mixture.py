"""Gaussian-mixture moments, CDF/PPF and sampling against Monte Carlo and closed forms."""

import numpy as np
import pytest
from scipy import stats

from cosmoinfer.calibration.mixture import (
    mixture_cdf,
    mixture_cov,
    mixture_moments,
    mixture_pdf,
    mixture_ppf,
    mixture_sample,
)

M, N, P = 4, 3, 2


@pytest.fixture
def members():
    rng = np.random.default_rng(0)
    mu = rng.normal(0.3, 0.05, (M, N, P))
    sd = rng.uniform(0.01, 0.04, (M, N, P))
    return mu, sd


def _mc(mu, sd, n_draw, rng, weights=None):
    """Draws from each (N, P) marginal mixture by picking a member then a Gaussian: (n_draw, N, P)."""
    m = mu.shape[0]
    w = np.full(m, 1 / m) if weights is None else np.asarray(weights) / np.sum(weights)
    comp = rng.choice(m, size=(n_draw, N, P), p=w)
    idx_n, idx_p = np.arange(N)[None, :, None], np.arange(P)[None, None, :]
    return mu[comp, idx_n, idx_p] + sd[comp, idx_n, idx_p] * rng.standard_normal((n_draw, N, P))


def test_moments_match_monte_carlo(members):
    mu, sd = members
    mean, var, alea, epi = mixture_moments(mu, sd**2)
    assert mean.shape == var.shape == alea.shape == epi.shape == (N, P)
    x = _mc(mu, sd, 200_000, np.random.default_rng(1))
    n_draw = x.shape[0]
    # 5-sigma Monte Carlo tolerances: SE(mean) = sd/sqrt(n); SE(var) ≈ var*sqrt((kurt-1)/n), kurt < 6 here.
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n_draw))
    assert np.all(np.abs(x.var(0) - var) < 5 * var * np.sqrt(5 / n_draw))


def test_moment_split_is_exact_and_matches_definitions(members):
    mu, sd = members
    mean, var, alea, epi = mixture_moments(mu, sd**2)
    np.testing.assert_allclose(var, alea + epi, rtol=1e-12)
    np.testing.assert_allclose(mean, mu.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, np.mean(sd**2 + mu**2, 0) - mean**2, rtol=1e-9)
    np.testing.assert_allclose(alea, np.mean(sd**2, 0), rtol=1e-12)
    np.testing.assert_allclose(epi, np.var(mu, axis=0), rtol=1e-9)  # population variance (ddof=0)
    # Averaging the members' sigmas drops the epistemic part: it is strictly too small here.
    assert np.all(np.mean(sd, 0) ** 2 < var)


def test_single_member_is_the_member(members):
    mu, sd = members
    mean, var, alea, epi = mixture_moments(mu[:1], sd[:1] ** 2)
    np.testing.assert_allclose(mean, mu[0])
    np.testing.assert_allclose(var, sd[0] ** 2)
    np.testing.assert_allclose(epi, 0, atol=1e-15)


def test_weighted_moments_match_monte_carlo(members):
    mu, sd = members
    w = np.array([0.1, 0.2, 0.3, 0.4])
    mean, var, _, _ = mixture_moments(mu, sd**2, weights=w * 7)  # normalised internally
    x = _mc(mu, sd, 200_000, np.random.default_rng(2), weights=w)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / x.shape[0]))
    assert np.all(np.abs(x.var(0) - var) < 5 * var * np.sqrt(5 / x.shape[0]))


def test_mixture_cov_matches_monte_carlo_and_diagonal():
    rng = np.random.default_rng(3)
    mu = rng.normal(0, 1, (M, N, P))
    a = rng.normal(0, 0.5, (M, N, P, P))
    cov = a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(P)
    mean, c, alea, epi = mixture_cov(mu, cov)
    np.testing.assert_allclose(c, alea + epi, rtol=1e-12)
    _, var, _, _ = mixture_moments(mu, np.diagonal(cov, axis1=-2, axis2=-1))
    np.testing.assert_allclose(np.diagonal(c, axis1=-2, axis2=-1), var, rtol=1e-10)
    # Monte Carlo for item 0.
    n_draw = 200_000
    comp = rng.integers(0, M, n_draw)
    chol = np.linalg.cholesky(cov[:, 0])
    x = mu[comp, 0] + np.einsum("kij,kj->ki", chol[comp], rng.standard_normal((n_draw, P)))
    mc = np.cov(x.T)
    scale = np.sqrt(np.outer(np.diag(c[0]), np.diag(c[0])))
    assert np.all(np.abs(mc - c[0]) < 6 * scale * np.sqrt(5 / n_draw))
    np.testing.assert_allclose(x.mean(0), mean[0], atol=5 * np.sqrt(np.diag(c[0]).max() / n_draw))


def test_cdf_pdf_match_monte_carlo_and_quadrature(members):
    mu, sd = members
    x = np.random.default_rng(4).normal(0.3, 0.05, (N, P))
    draws = _mc(mu, sd, 100_000, np.random.default_rng(5))
    emp = np.mean(draws <= x, axis=0)
    f = mixture_cdf(x, mu, sd)
    assert np.all(np.abs(emp - f) < 5 * np.sqrt(f * (1 - f) / draws.shape[0]) + 1e-4)
    # pdf is the derivative of the cdf
    h = 1e-6
    np.testing.assert_allclose((mixture_cdf(x + h, mu, sd) - mixture_cdf(x - h, mu, sd)) / (2 * h),
                               mixture_pdf(x, mu, sd), rtol=1e-5)


def test_ppf_inverts_cdf(members):
    mu, sd = members
    for q in (0.01, 0.16, 0.5, 0.84, 0.999):
        x = mixture_ppf(q, mu, sd)
        np.testing.assert_allclose(mixture_cdf(x, mu, sd), q, atol=1e-9)
    # one member: the normal quantile
    np.testing.assert_allclose(mixture_ppf(0.975, mu[:1], sd[:1]), mu[0] + sd[0] * stats.norm.ppf(0.975),
                               rtol=1e-9)
    with pytest.raises(ValueError):
        mixture_ppf(1.0, mu, sd)


def test_mixture_sample_moments(members):
    mu, sd = members
    s = mixture_sample(mu, sd, 100_000, np.random.default_rng(6))
    assert s.shape == (100_000, N, P)
    mean, var, _, _ = mixture_moments(mu, sd**2)
    assert np.all(np.abs(s.mean(0) - mean) < 5 * np.sqrt(var / s.shape[0]))
    assert np.all(np.abs(s.var(0) - var) < 5 * var * np.sqrt(5 / s.shape[0]))
