"""Metrics with known answers: closed forms, quadrature and synthetic predictors of known calibration."""

import numpy as np
import pytest
from scipy import integrate, stats

from cosmoinfer.calibration import metrics as mt
from cosmoinfer.calibration.mixture import mixture_cdf
from cosmoinfer.calibration.predictions import Predictions
from cosmoinfer.data.priors import Prior

PRIORS = [Prior("Omega_m", 0.1, 0.5), Prior("sigma_8", 0.6, 1.0)]
LEVELS = np.array(mt.DEFAULT_LEVELS)


def synthetic(n, rng, width_factor=1.0, sig=(0.03, 0.02)):
    """A predictor that is exactly calibrated when width_factor == 1.

    The predicted means are drawn first and the truth is ``mean + sigma * N(0,1)``, so
    ``truth | prediction ~ N(mean, sigma²)`` holds exactly (also jointly, for TARP). The reported
    widths are ``width_factor * sigma``.
    """
    sig = np.asarray(sig) * rng.uniform(0.5, 1.5, (n, 2))
    mean = np.column_stack([rng.uniform(0.15, 0.45, n), rng.uniform(0.65, 0.95, n)])
    truth = mean + sig * rng.standard_normal((n, 2))
    return truth, mean, sig * width_factor


def binom_tol(p, n, k=4.0):
    return k * np.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------- point metrics


def test_point_metrics_hand_example():
    truth = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    mean = np.array([[1.5, 2.0], [2.0, 3.0], [2.5, 6.0]])
    std = np.array([[0.5, 1.0], [1.0, 1.0], [0.5, 2.0]])
    np.testing.assert_allclose(mt.rmse(truth, mean), [np.sqrt(0.5 / 3), np.sqrt(1 / 3)])
    np.testing.assert_allclose(mt.r2(truth, mean), [1 - 0.5 / 2, 1 - 1 / 8])
    np.testing.assert_allclose(mt.mean_rel_err(truth, mean), [(0.5 + 0 + 0.5 / 3) / 3, (0 + 0.25 + 0) / 3])
    np.testing.assert_allclose(mt.chi2(truth, mean, std), [(1 + 0 + 1) / 3, (0 + 1 + 0) / 3])
    np.testing.assert_allclose(mt.sharpness(std), [2 / 3, 4 / 3])


def test_gaussian_nll_matches_scipy():
    rng = np.random.default_rng(0)
    truth, mean, std = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)), rng.uniform(0.1, 2, (50, 3))
    ref = -stats.norm.logpdf(truth, mean, std)
    np.testing.assert_allclose(mt.gaussian_nll(truth, mean, std, reduce=False), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mt.gaussian_nll(truth, mean, std), ref.mean(0), rtol=1e-12)


def _crps_quad(y, cdf, lo, hi):
    """CRPS by quadrature: ∫ (F(x) − 1{x ≥ y})² dx, split at y."""
    a = integrate.quad(lambda x: cdf(x) ** 2, lo, y, epsabs=1e-12, epsrel=1e-12, limit=200)[0]
    b = integrate.quad(lambda x: (1 - cdf(x)) ** 2, y, hi, epsabs=1e-12, epsrel=1e-12, limit=200)[0]
    return a + b


def test_crps_gaussian_closed_form_matches_quadrature():
    # z = 0 closed form: sigma (2 phi(0) − 1/sqrt(pi))
    np.testing.assert_allclose(mt.crps_gaussian(np.zeros((1, 1)), 0.0, 2.0, reduce=False),
                               2.0 * (2 * stats.norm.pdf(0) - 1 / np.sqrt(np.pi)), rtol=1e-14)
    for y, mu, s in [(0.3, 0.31, 0.02), (0.8, 0.7, 0.05), (-1.0, 2.0, 0.5)]:
        ref = _crps_quad(y, lambda x, mu=mu, s=s: stats.norm.cdf(x, mu, s), mu - 15 * s - abs(y), mu + 15 * s + abs(y))
        got = mt.crps_gaussian(np.array([[y]]), np.array([[mu]]), np.array([[s]]), reduce=False)[0, 0]
        assert abs(got - ref) < 1e-6


def test_crps_mixture_matches_quadrature_and_gaussian():
    rng = np.random.default_rng(1)
    mu = rng.normal(0.3, 0.05, (3, 4, 1))
    sd = rng.uniform(0.01, 0.05, (3, 4, 1))
    w = np.array([0.2, 0.5, 0.3])
    y = rng.normal(0.3, 0.06, (4, 1))
    got = mt.crps_mixture(y, mu, sd, weights=w, reduce=False)
    for i in range(4):
        def cdf(x, i=i):
            return float(np.sum(w * stats.norm.cdf(x, mu[:, i, 0], sd[:, i, 0])))
        ref = _crps_quad(y[i, 0], cdf, -1.0, 2.0)
        assert abs(got[i, 0] - ref) < 1e-6
    # a one-member mixture is the Gaussian
    np.testing.assert_allclose(mt.crps_mixture(y, mu[:1], sd[:1], reduce=False),
                               mt.crps_gaussian(y, mu[0], sd[0], reduce=False), rtol=1e-12)
    # identical members are the Gaussian too
    same_mu, same_sd = np.repeat(mu[:1], 3, 0), np.repeat(sd[:1], 3, 0)
    np.testing.assert_allclose(mt.crps_mixture(y, same_mu, same_sd), mt.crps_gaussian(y, mu[0], sd[0]), rtol=1e-12)


def test_mixture_nll_matches_direct_density():
    rng = np.random.default_rng(2)
    mu, sd = rng.normal(0, 1, (3, 5, 2)), rng.uniform(0.5, 1, (3, 5, 2))
    y = rng.normal(0, 1, (5, 2))
    dens = np.mean(stats.norm.pdf(y, mu, sd), axis=0)
    np.testing.assert_allclose(mt.mixture_nll(y, mu, sd, reduce=False), -np.log(dens), rtol=1e-12)


def test_interval_score_hand_example():
    z = stats.norm.ppf(0.975)
    truth = np.array([[0.0], [3.0], [-3.0]])
    got = mt.interval_score(truth, np.zeros((3, 1)), np.ones((3, 1)), 0.95, reduce=False)[:, 0]
    np.testing.assert_allclose(got, [2 * z, 2 * z + 40 * (3 - z), 2 * z + 40 * (3 - z)], rtol=1e-12)


# --------------------------------------------------------------------------- coverage


def test_calibrated_predictor_within_binomial_tolerance():
    n = 4000
    truth, mean, std = synthetic(n, np.random.default_rng(10))
    cov = mt.coverage(truth, mean, std, LEVELS)
    assert cov.shape == (len(LEVELS), 2)
    err = mt.coverage_error(cov, LEVELS)
    assert np.all(err <= mt.coverage_tolerance(n)), (err, mt.coverage_tolerance(n))
    # each level inside its own 99.9% binomial band
    lo, hi = mt.binomial_band(n, LEVELS, conf=0.999)
    assert np.all((cov >= lo[:, None]) & (cov <= hi[:, None]))
    # PIT route agrees with the interval route
    np.testing.assert_allclose(mt.coverage_from_pit(mt.pit(truth, mean, std), LEVELS), cov)
    assert np.all(mt.miscalibration_area(mt.pit(truth, mean, std)) < 0.02)


def test_halved_sigmas_cover_38_percent_at_68():
    n = 4000
    truth, mean, std = synthetic(n, np.random.default_rng(11), width_factor=0.5)
    c68 = mt.coverage(truth, mean, std, [0.68])[0]
    expected = 2 * stats.norm.cdf(0.5 * stats.norm.ppf(0.84)) - 1  # 0.381 (0.383 for the exact 1-sigma interval)
    assert abs(expected - 0.383) < 0.005
    assert np.all(np.abs(c68 - expected) < binom_tol(expected, n))
    assert np.all(mt.coverage_error(mt.coverage(truth, mean, std, LEVELS), LEVELS) > 0.2)
    assert np.all(mt.miscalibration_area(mt.pit(truth, mean, std)) > 0.15)
    np.testing.assert_allclose(mt.chi2(truth, mean, std), 4.0, rtol=0.1)


def test_coverage_tolerance_and_band():
    assert mt.coverage_tolerance(10_000) == pytest.approx(np.sqrt(np.log(40) / 20_000))
    lo, hi = mt.binomial_band(200, LEVELS)
    assert np.all(lo <= LEVELS) and np.all(hi >= LEVELS)


def test_mixture_coverage_and_intervals():
    rng = np.random.default_rng(12)
    m, n = 3, 3000
    mu = rng.normal(0.3, 0.03, (m, n, 1))
    sd = rng.uniform(0.01, 0.03, (m, n, 1))
    comp = rng.integers(0, m, n)
    truth = mu[comp, np.arange(n)] + sd[comp, np.arange(n)] * rng.standard_normal((n, 1))
    cov = mt.coverage_mixture(truth, mu, sd, LEVELS)
    assert mt.coverage_error(cov, LEVELS)[0] <= mt.coverage_tolerance(n)
    lo, hi = mt.mixture_interval(mu, sd, 0.9)
    np.testing.assert_allclose(mixture_cdf(hi, mu, sd) - mixture_cdf(lo, mu, sd), 0.9, atol=1e-8)
    inside = np.mean((truth >= lo) & (truth <= hi))
    assert inside == pytest.approx(mt.coverage_mixture(truth, mu, sd, [0.9])[0, 0], abs=1.0 / n)


# --------------------------------------------------------------------------- SBC and TARP


@pytest.mark.parametrize("factor,calibrated", [(1.0, True), (0.5, False), (2.0, False)])
def test_sbc_detects_miscalibration(factor, calibrated):
    rng = np.random.default_rng(20)
    truth, mean, std = synthetic(600, rng, width_factor=factor)
    samples = mt.gaussian_samples(mean, std, 200, rng)
    ranks = mt.sbc_ranks(samples, truth)
    assert ranks.shape == (600, 2) and ranks.min() >= 0 and ranks.max() <= 200
    p = mt.sbc_ks_pvalues(ranks, 200, rng)
    assert np.all(p > 0.01) if calibrated else np.all(p < 1e-4)


@pytest.mark.parametrize("factor,sign", [(1.0, 0), (0.5, -1), (2.0, +1)])
def test_tarp_flags_over_and_underconfidence(factor, sign):
    rng = np.random.default_rng(30)
    truth, mean, std = synthetic(600, rng, width_factor=factor)
    samples = mt.gaussian_samples(mean, std, 300, rng)
    res = mt.tarp(samples, truth, priors=PRIORS, rng=np.random.default_rng(31), n_bootstrap=50)
    assert res.ecp.shape == res.alpha.shape == res.ecp_lo.shape
    assert res.ecp[0] == 0 and res.ecp[-1] == 1
    if sign == 0:
        assert res.ks_pvalue > 0.01
        assert abs(res.atc) < 0.02
        assert np.all(res.ecp_lo <= res.alpha + 0.02) and np.all(res.ecp_hi >= res.alpha - 0.02)
    else:
        assert res.ks_pvalue < 1e-4
        assert np.sign(res.atc) == sign and abs(res.atc) > 0.02


def test_tarp_local_rng_reproducible_and_bootstrap_not_reseeded():
    rng = np.random.default_rng(40)
    truth, mean, std = synthetic(300, rng)
    samples = mt.gaussian_samples(mean, std, 100, rng)
    a = mt.tarp(samples, truth, priors=PRIORS, rng=np.random.default_rng(5), n_bootstrap=30)
    b = mt.tarp(samples, truth, priors=PRIORS, rng=np.random.default_rng(5), n_bootstrap=30)
    np.testing.assert_array_equal(a.ecp, b.ecp)
    np.testing.assert_array_equal(a.ecp_lo, b.ecp_lo)
    # a bootstrap that reseeded inside its loop would repeat one resample: the band would collapse
    assert np.any(a.ecp_hi - a.ecp_lo > 0.02)
    # the global numpy RNG is neither used nor disturbed
    state = np.random.get_state()[1].copy()
    mt.tarp(samples, truth, bounds=(truth.min(0), truth.max(0)), rng=np.random.default_rng(6), n_bootstrap=5)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_unit_scale_uses_log_priors():
    pri = [Prior("A", 0.25, 4.0, log=True)]
    np.testing.assert_allclose(mt.unit_scale(np.array([[1.0], [4.0]]), pri)[:, 0], [0.5, 1.0])
    assert np.isfinite(mt.unit_scale(np.array([[-0.1]]), pri)).all()  # negative Gaussian draws are clipped


def test_joint_ellipse_coverage_full_vs_diagonal():
    rng = np.random.default_rng(50)
    n = 3000
    c = np.array([[1.0, 0.9], [0.9, 1.0]]) * 0.01
    mean = rng.uniform(0, 1, (n, 2))
    truth = mean + rng.multivariate_normal([0, 0], c, n)
    cov = np.broadcast_to(c, (n, 2, 2))
    ell = mt.joint_ellipse_coverage(truth, mean, cov, LEVELS)
    assert np.max(np.abs(ell - LEVELS)) <= mt.coverage_tolerance(n)
    diag = mt.joint_ellipse_coverage(truth, mean, None, LEVELS, std=np.sqrt(np.diag(c)) * np.ones((n, 2)))
    assert np.max(np.abs(diag - LEVELS)) > 0.1  # ignoring the correlation is visibly wrong


# --------------------------------------------------------------------------- bundles


def _pred(truth, mean, std, **kw):
    n = truth.shape[0]
    return Predictions(truth=truth, mean=mean, std=std, std_aleatoric=std, std_epistemic=np.zeros_like(std),
                       sim_id=np.arange(n), param_names=["Omega_m", "sigma_8"], method="single", split="test", **kw)


def test_compute_metrics_schema_and_values():
    rng = np.random.default_rng(60)
    truth, mean, std = synthetic(400, rng)
    m = mt.compute_metrics(_pred(truth, mean, std, priors=PRIORS), rng=np.random.default_rng(0),
                           n_posterior_samples=100, n_bootstrap=10)
    assert m["method"] == "single" and m["n"] == 400
    required = {"rmse", "r2", "mean_rel_err", "chi2", "nll", "crps", "coverage", "coverage_error", "mean_std"}
    for name in ("Omega_m", "sigma_8"):
        d = m["params"][name]
        assert required <= set(d)
        assert set(d["coverage"]) == {"0.68", "0.95"}
        assert "miscalibration_area" in d and "interval_score_0.68" in d
        assert len(d["coverage_curve"]) == 19 and "0.05" in d["coverage_curve"] and "0.95" in d["coverage_curve"]
    assert {"tarp_atc", "tarp_ks_pvalue", "sbc_ks_pvalue"} <= set(m["joint"])
    np.testing.assert_allclose(m["params"]["sigma_8"]["crps"], mt.crps_gaussian(truth, mean, std)[1])
    np.testing.assert_allclose(m["params"]["Omega_m"]["coverage"]["0.68"],
                               mt.coverage(truth, mean, std, [0.68])[0, 0])
    # same rng seed, same numbers
    m2 = mt.compute_metrics(_pred(truth, mean, std, priors=PRIORS), rng=np.random.default_rng(0),
                            n_posterior_samples=100, n_bootstrap=10)
    assert m2 == m


def test_compute_metrics_with_members_and_cov():
    rng = np.random.default_rng(61)
    truth, mean, std = synthetic(200, rng)
    mm = mean[None] + 0.1 * std[None] * rng.standard_normal((3, 200, 2))
    ms = np.repeat(std[None], 3, 0)
    cov = np.zeros((200, 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = std[:, 0] ** 2, std[:, 1] ** 2
    m = mt.compute_metrics(_pred(truth, mean, std, member_mean=mm, member_std=ms, cov=cov),
                           n_posterior_samples=50, n_bootstrap=5)
    # with members the stored predictive is their mixture: the marginal NLL and CRPS are the mixture's
    d = m["params"]["Omega_m"]
    assert m["joint"]["predictive"] == "gaussian_mixture (3 components)"
    assert d["nll"] == pytest.approx(float(mt.mixture_nll(truth, mm, ms)[0]), rel=1e-9)
    assert d["crps"] == pytest.approx(float(mt.crps_mixture(truth, mm, ms)[0]), rel=1e-6)


def test_classification_metrics_hand_example():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.4, 0.6])
    m = mt.classification_metrics(y, p, n_bins=2)
    assert m["accuracy"] == 0.5
    np.testing.assert_allclose(m["brier"], (0.01 + 0.04 + 0.36 + 0.36) / 4)
    np.testing.assert_allclose(m["log_loss"], -np.mean(np.log([0.9, 0.8, 0.4, 0.4])))
    low, high = m["reliability"]
    assert low["count"] == 2 and high["count"] == 2
    np.testing.assert_allclose([low["mean_prob"], low["frac_pos"]], [0.3, 0.5])
    np.testing.assert_allclose(m["ece"], 0.5 * 0.2 + 0.5 * 0.25)


def test_tarp_ecp_is_the_empirical_cdf_of_credibilities():
    rng = np.random.default_rng(70)
    f = rng.uniform(size=(2, 500)) ** 1.3
    res = mt.tarp_from_credibility(f, rng, n_alpha=51, n_bootstrap=20)
    direct = np.mean(f[:, :, None] < res.alpha, axis=(0, 1))
    np.testing.assert_allclose(res.ecp, direct, atol=1e-12)
    assert np.all(res.ecp_lo <= res.ecp + 1e-12) and np.all(res.ecp_hi >= res.ecp - 1e-12)
    assert res.ks_pvalue == pytest.approx(stats.kstest(f[0], "uniform").pvalue)
