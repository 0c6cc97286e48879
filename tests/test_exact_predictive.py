"""The exact GRF posterior as a predictive (GridPredictive), and the shared exact-posterior figures.

References: a brute-force grid in physical units (midpoint rule, 1500 x 6000 cells over the prior
box) for the normalisation, moments and log-density at the truth, and the closed-form column
integrals of the noise-free case (sigma_8^2 is inverse-gamma given Omega_m: regularised incomplete
gamma functions; superlevel sets by Lambert W) on 20 001 Omega_m columns for the marginal CDFs and
HPD credibilities.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import gammainc, gammaln, lambertw

from cosmoinfer.calibration.exact import efficiency, expected_kl, mean_shift, std_ratio_median
from cosmoinfer.data.priors import sample, standard_priors
from cosmoinfer.posterior import Bijection, MixturePredictive
from cosmoinfer.posterior.grid import GridPredictive
from cosmoinfer.simulators.exact import GRFLogDensity, exact_predictive, log_likelihood, ring_spectrum
from cosmoinfer.simulators.grf import GRFSimulator

PRIORS = standard_priors()[:2]  # Omega_m U[0.1, 0.5], sigma_8 U[0.6, 1.0]
#: truths near every edge and corner of the box, and in the middle
THETAS = np.array([[0.12, 0.62], [0.45, 0.97], [0.30, 0.80], [0.20, 0.95], [0.48, 0.61], [0.33, 0.99],
                   [0.11, 0.70]])


@pytest.fixture(scope="module")
def sim64():
    return GRFSimulator(grid=64)


@pytest.fixture(scope="module")
def case(sim64):
    rng = np.random.default_rng(5)
    maps = np.concatenate([sim64.simulate(t, rng, n_maps=1) for t in THETAS])
    return maps, exact_predictive(maps, sim64, PRIORS)


def test_spectrum_and_log_likelihood_match_the_direct_sums(sim64):
    rng = np.random.default_rng(0)
    om = rng.uniform(0.1, 0.5, 40)
    sp = ring_spectrum(sim64, PRIORS)
    assert np.abs(sp.ln_b(np.log(om)) - np.log(sim64.signal_ring_power(om))).max() < 1e-8
    theta = np.stack([om[:8], rng.uniform(0.6, 1.0, 8)], axis=1)
    maps = np.concatenate([sim64.simulate(t, rng, n_maps=1) for t in theta])
    dens = GRFLogDensity(sim64.rings.ring_sums(maps), sim64, PRIORS)
    exact = log_likelihood(maps, theta[:, 0], theta[:, 1], sim64)
    np.testing.assert_allclose(dens.log_likelihood(theta, np.arange(8)), exact, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dens(theta, np.arange(8)), exact - np.log(0.16), rtol=0, atol=1e-6)
    assert np.all(dens(theta + [0.5, 0], np.arange(8)) == -np.inf)  # outside the box
    # the interpolated column sums S1, S2 that the grid uses: ln L to 1e-6 nats
    x = np.log(theta[:, :1])
    s1, s2 = dens.s12(x, np.arange(8))
    y = np.log(theta[:, 1])[:, None, None]
    col = dens.columns(x, y, np.arange(8))[:, 0, 0] - x[:, 0] - y[:, 0, 0]
    np.testing.assert_allclose(col, exact - np.log(0.16), rtol=0, atol=1e-6)


def _brute_force(sim, maps, n_om=1500, n_s8=6000):
    """Midpoint-rule posterior in physical units: (log Z, mean (M, 2), cov (M, 2, 2)) for noise-free maps."""
    om = 0.1 + 0.4 * (np.arange(n_om) + 0.5) / n_om
    s8 = 0.6 + 0.4 * (np.arange(n_s8) + 0.5) / n_s8
    lb = ring_spectrum(sim, PRIORS).ln_b(np.log(om))
    q = sim.rings.ring_sums(maps) / sim.grid**2
    m = sim.rings.count
    s1, s2 = q @ np.exp(-lb).T, lb @ m
    out = []
    for k in range(len(maps)):
        ll = -0.5 * (s1[k][:, None] / s8**2 + s2[:, None] + 2 * m.sum() * np.log(s8) + m.sum() * np.log(2 * np.pi))
        top = ll.max()
        w = np.exp(ll - top)
        lz = np.log(w.sum() * (0.4 / n_om) * (0.4 / n_s8)) + top - np.log(0.16)
        w /= w.sum()
        mean = np.array([w.sum(1) @ om, w.sum(0) @ s8])
        d0, d1 = om - mean[0], s8 - mean[1]
        cov = np.array([[w.sum(1) @ d0**2, d0 @ w @ d1], [d0 @ w @ d1, w.sum(0) @ d1**2]])
        out.append((lz, mean, cov))
    return out


def _closed_form(sim, map_, theta, n_om=20001):
    """Marginal CDFs (2,) and HPD credibility at ``theta`` of a noise-free map, from exact column integrals."""
    om = np.linspace(0.1, 0.5, n_om)
    lb = ring_spectrum(sim, PRIORS).ln_b(np.log(om))
    s1 = (sim.rings.ring_sums(map_) / sim.grid**2) @ np.exp(-lb).T
    s2 = lb @ sim.rings.count
    M = sim.rings.count.sum()
    a = (M - 1) / 2

    def col(lo, hi):  # ln int_lo^hi s8^-M exp(-S1 / (2 s8^2)) ds8 - S2 / 2
        p = gammainc(a, s1 / (2 * lo**2)) - gammainc(a, s1 / (2 * hi**2))
        with np.errstate(divide="ignore"):
            return np.log(np.maximum(p, 0)) + gammaln(a) + (1 - M) / 2 * np.log(s1 / 2) - s2 / 2

    w = np.full(n_om, 1.0)
    w[0] = w[-1] = 0.5
    tot = col(0.6, 1.0)
    top = tot.max()
    z = np.sum(w * np.exp(tot - top))
    f_om = np.sum((w * np.exp(tot - top))[om < theta[0]]) / z
    f_s8 = np.sum(w * np.exp(col(0.6, theta[1]) - top)) / z
    lt = float(log_likelihood(map_, theta[0], theta[1], sim)) + 0.5 * M * np.log(2 * np.pi)
    kappa = (-2 * lt - s2) / M - np.log(s1 / M)  # {S1/s + M ln s < -2 lt - S2}: v - ln v < kappa, v = S1/(M s)
    ok = kappa > 1
    e = -np.exp(-np.where(ok, kappa, 2.0))
    lo = np.clip(np.sqrt(s1 / (M * np.real(-lambertw(e, -1)))), 0.6, 1.0)
    hi = np.clip(np.sqrt(s1 / (M * np.real(-lambertw(e, 0)))), 0.6, 1.0)
    above = np.where(ok & (hi > lo), col(lo, np.maximum(hi, lo + 1e-12)), -np.inf)
    return np.array([f_om, f_s8]), np.sum(w * np.exp(above - top)) / z


def test_grid_matches_brute_force_and_closed_form(sim64, case):
    maps, q = case
    assert q.n == len(THETAS) and q.p == 2 and q.param_names == ["Omega_m", "sigma_8"]
    mean, cov = q.moments()
    lp = q.log_prob(THETAS)
    pit = q.marginal_cdf(THETAS)
    hpd = q.hpd_credibility(THETAS)
    for k, (lz, m_ref, c_ref) in enumerate(_brute_force(sim64, maps)):
        sd_ref = np.sqrt(np.diag(c_ref))
        lp_ref = float(log_likelihood(maps[k], *THETAS[k], sim64)) - np.log(0.16) - lz
        assert abs(lp[k] - lp_ref) < 1e-3, (k, lp[k], lp_ref)  # measured: < 3e-6 nats
        assert np.all(np.abs(mean[k] - m_ref) < 1e-3 * sd_ref), (k, mean[k], m_ref)
        np.testing.assert_allclose(np.sqrt(np.diag(cov[k])), sd_ref, rtol=1e-3)
        rho, rho_ref = cov[k, 0, 1] / np.sqrt(cov[k, 0, 0] * cov[k, 1, 1]), c_ref[0, 1] / sd_ref.prod()
        assert abs(rho - rho_ref) < 1e-4 and rho < -0.9, (k, rho, rho_ref)
        f_ref, h_ref = _closed_form(sim64, maps[k], THETAS[k])
        np.testing.assert_allclose(pit[k], f_ref, atol=1e-3)  # measured: < 2e-4
        assert abs(hpd[k] - h_ref) < 2e-3, (k, hpd[k], h_ref)  # measured: < 5e-4


def test_pit_and_hpd_of_truths_from_the_prior_are_uniform(sim64):
    """One map per simulation, truths drawn from the prior: marginal PITs and HPD credibilities ~ U(0, 1)."""
    rng = np.random.default_rng(11)
    n = 300
    theta = sample(PRIORS, n, rng)
    maps = np.concatenate([sim64.simulate(t, rng, n_maps=1) for t in theta])
    q = exact_predictive(maps, sim64, PRIORS)
    pit, hpd = q.marginal_cdf(theta), q.hpd_credibility(theta)
    for u in (pit[:, 0], pit[:, 1], hpd):
        assert stats.kstest(u, "uniform").pvalue > 0.01
    # the posterior mean's error matches the posterior width
    mean, cov = q.moments()
    ratio = np.mean((mean - theta) ** 2, axis=0) / np.mean(np.diagonal(cov, axis1=1, axis2=2), axis=0)
    assert np.all(np.abs(ratio - 1) < 0.25), ratio


def test_noisy_maps_match_a_brute_force_grid():
    """With pixel noise the spectrum is not separable: windows from a scan, every node sums over rings."""
    sim = GRFSimulator(grid=16, noise_std=0.5)
    rng = np.random.default_rng(3)
    theta = np.array([[0.15, 0.7], [0.4, 0.9]])
    maps = np.concatenate([sim.simulate(t, rng, n_maps=1) for t in theta])
    q = exact_predictive(maps, sim, PRIORS)
    mean, cov = q.moments()
    lp = q.log_prob(theta)
    om = 0.1 + 0.4 * (np.arange(400) + 0.5) / 400
    s8 = 0.6 + 0.4 * (np.arange(800) + 0.5) / 800
    b = sim.signal_ring_power(om)
    for k in range(2):
        p = s8[None, :, None] ** 2 * b[:, None, :] + 0.25
        qk = sim.rings.ring_sums(maps[k]) / 16**2
        ll = -0.5 * ((qk / p).sum(-1) + np.log(p) @ sim.rings.count + sim.rings.count.sum() * np.log(2 * np.pi))
        w = np.exp(ll - ll.max())
        lz = np.log(w.sum() * 0.4 / 400 * 0.4 / 800) + ll.max() - np.log(0.16)
        w /= w.sum()
        m_ref = np.array([w.sum(1) @ om, w.sum(0) @ s8])
        sd_ref = np.sqrt([w.sum(1) @ (om - m_ref[0]) ** 2, w.sum(0) @ (s8 - m_ref[1]) ** 2])
        assert abs(lp[k] - (log_likelihood(maps[k], *theta[k], sim) - np.log(0.16) - lz)) < 1e-3
        assert np.all(np.abs(mean[k] - m_ref) < 1e-3 * sd_ref)
        np.testing.assert_allclose(np.sqrt(np.diag(cov[k])), sd_ref, rtol=1e-3)


def test_three_thousand_maps_give_finite_statistics(sim64):
    """At the benchmark's size (200 simulations x 15 maps) every statistic is finite and in range; how fast
    is measured by ``make bench`` (benchmarks/perf_exact.py), not here."""
    rng = np.random.default_rng(2)
    theta = sample(PRIORS, 200, rng)
    maps = np.concatenate([sim64.simulate(t, rng) for t in theta])  # 200 simulations x 15 maps
    truth = np.repeat(theta, 15, axis=0)
    q = exact_predictive(maps, sim64, PRIORS)
    mean, cov = q.moments()
    lp, pit, hpd = q.log_prob(truth), q.marginal_cdf(truth), q.hpd_credibility(truth)
    assert q.n == 3000 and np.all(np.isfinite(lp)) and np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))
    assert np.all((pit >= 0) & (pit <= 1)) and np.all((hpd >= 0) & (hpd <= 1))


def test_methods_agree_with_each_other(case):
    maps, q = case
    rng = np.random.default_rng(1)
    draws = q.sample(20000, rng)  # (S, N, 2)
    assert draws.shape == (20000, q.n, 2)
    lo, hi = q.box
    assert np.all((draws >= lo) & (draws <= hi))
    mean, cov = q.moments()
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * sd / np.sqrt(20000))
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.03)
    # HPD credibility: the fraction of draws denser than the truth
    frac = np.mean(q.log_prob(draws) > q.log_prob(THETAS), axis=0)
    hpd = q.hpd_credibility(THETAS)
    assert np.all(np.abs(frac - hpd) < 4 * np.sqrt(hpd * (1 - hpd) / 20000) + 2e-3), (frac, hpd)
    # marginal CDFs: the draws' and the quantile function's
    pit = q.marginal_cdf(THETAS)
    assert np.all(np.abs(np.mean(draws < THETAS, axis=0) - pit) < 0.015)
    qs = np.array([[0.1, 0.3]] * q.n)
    np.testing.assert_allclose(q.marginal_cdf(q.marginal_ppf(qs)), qs, atol=1e-6)
    a, b = q.central_interval(0.68)
    assert np.all(a < mean) and np.all(mean < b)
    # marginal densities integrate to 1 (their CDFs are the marginal CDFs)
    three = q.subset([0, 1, 2])
    for j in range(2):
        t = np.linspace(lo[j], hi[j], 1201)
        pts = np.repeat(THETAS[None, :3], t.size, axis=0)
        pts[..., j] = t[:, None]
        dens = np.exp(np.stack([three.marginal_log_prob(p)[:, j] for p in pts]))
        np.testing.assert_allclose(np.trapezoid(dens, t, axis=0), 1.0, atol=2e-3)
        cum = np.concatenate([np.zeros((1, 3)), np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(t)[:, None], 0)])
        np.testing.assert_allclose([np.interp(THETAS[i, j], t, cum[:, i]) for i in range(3)], pit[:3, j], atol=3e-3)
    # a subset gives the same answers as the whole (up to the round-off of the level in the HPD)
    sub = q.subset([2, 0])
    np.testing.assert_allclose(sub.log_prob(THETAS[[2, 0]]), q.log_prob(THETAS)[[2, 0]])
    np.testing.assert_allclose(sub.hpd_credibility(THETAS[[2, 0]]), hpd[[2, 0]], atol=1e-4)
    # the axis-aligned grid for corner plots holds the whole mass
    om, s8, ld = q.axis_grid(200)
    assert om.shape == (q.n, 200) and s8.shape == (q.n, 200) and ld.shape == (q.n, 200, 200)
    mass = [np.trapezoid(np.trapezoid(np.exp(ld[i]), s8[i], axis=1), om[i]) for i in range(q.n)]
    np.testing.assert_allclose(mass, 1.0, atol=0.01)
    assert isinstance(q.bijection, Bijection) and np.allclose(q.bijection.forward(np.ones(2)), [0.5, 1.0])


def test_blockwise_methods_equal_per_item_ones(sim64):
    from cosmoinfer.posterior import grid_quadrature as grid

    rng = np.random.default_rng(4)
    theta = sample(PRIORS, grid.ITEMS_PER_BLOCK + 5, rng)
    maps = np.concatenate([sim64.simulate(t, rng, n_maps=1) for t in theta])
    q = exact_predictive(maps, sim64, PRIORS, block=100)
    last = q.subset(np.arange(q.n - 3, q.n))
    np.testing.assert_allclose(q.marginal_cdf(theta)[-3:], last.marginal_cdf(theta[-3:]))
    np.testing.assert_allclose(q.hpd_credibility(theta)[-3:], last.hpd_credibility(theta[-3:]), atol=1e-4)
    np.testing.assert_allclose(q.moments()[1][-3:], last.moments()[1])
    assert q.sample(7, rng).shape == (7, q.n, 2)


def test_without_the_point_density_the_grid_is_interpolated(case):
    _, q = case
    bare = GridPredictive(q.x, q.lo, q.hi, q.log_q, q.log_norm, q.bijection, q.param_names)
    draws = q.sample(500, np.random.default_rng(0))
    err = np.abs(bare.log_prob(draws) - q.log_prob(draws))
    assert np.median(err) < 0.005 and err.max() < 0.1, (np.median(err), err.max())
    np.testing.assert_allclose(bare.hpd_credibility(THETAS), q.hpd_credibility(THETAS), atol=0.02)
    assert np.all(bare.log_prob(np.full((q.n, 2), 0.05)) == -np.inf)


# --------------------------------------------------------------------------- shared figures


def test_efficiency_std_ratio_and_mean_shift():
    rng = np.random.default_rng(0)
    n = 50000
    es = rng.uniform(0.05, 0.2, (n, 2))
    em = rng.uniform(0.3, 0.7, (n, 2))
    truth = em + es * rng.standard_normal((n, 2))
    np.testing.assert_allclose(efficiency(truth, em, em), 1.0)
    np.testing.assert_allclose(std_ratio_median(1.1 * es, es), 1.1)
    np.testing.assert_allclose(mean_shift(em + 0.3 * es, em, es), 0.3)
    # means off by half a posterior std: MSE grows by 1.25
    np.testing.assert_allclose(efficiency(truth, em + 0.5 * es, em), 1 / 1.25, rtol=0.02)


def _gaussian_case(n_sims=400, per=15, seed=0):
    """Truths from a prior, per map an observation x ~ N(theta, Sigma): the exact posterior is N(x, Sigma)."""
    rng = np.random.default_rng(seed)
    theta = np.repeat(rng.uniform(0, 1, (n_sims, 2)), per, axis=0)
    sd = rng.uniform(0.05, 0.2, theta.shape)
    rho = rng.uniform(-0.9, 0.9, len(theta))
    cov = np.empty((len(theta), 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = sd[:, 0] ** 2, sd[:, 1] ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = rho * sd[:, 0] * sd[:, 1]
    x = theta + np.einsum("nij,nj->ni", np.linalg.cholesky(cov), rng.standard_normal(theta.shape))
    p_log = np.array([stats.multivariate_normal(x[i], cov[i]).logpdf(theta[i]) for i in range(len(x))])
    return theta, x, cov, p_log, np.repeat(np.arange(n_sims), per)


def test_expected_kl_of_the_exact_posterior_is_zero():
    theta, x, cov, p_log, sid = _gaussian_case()
    q = MixturePredictive.from_gaussians(x[:, None], cov[:, None], Bijection.identity(2), ["a", "b"])
    r = expected_kl(p_log, q.log_prob(theta), sid, np.random.default_rng(0))
    assert r["n_sims"] == 400 and abs(r["value"]) < 1e-9
    assert r["lo"] <= 1e-9 and r["hi"] >= -1e-9


def test_expected_kl_of_a_wider_gaussian_matches_the_analytic_kl():
    theta, x, cov, p_log, sid = _gaussian_case()
    q = MixturePredictive.from_gaussians(x[:, None], 2.25 * cov[:, None], Bijection.identity(2), ["a", "b"])
    r = expected_kl(p_log, q.log_prob(theta), sid, np.random.default_rng(0))
    # KL(N(m, S) || N(m, c S)) = P/2 (c - 1 - ln c) / c ... per dimension: ln 1.5 + 1 / (2 * 2.25) - 1/2
    kl = 2 * (np.log(1.5) + 1 / 4.5 - 0.5)
    assert r["lo"] < kl < r["hi"], (r, kl)
    assert r["hi"] - r["lo"] < 0.1


def test_expected_kl_bootstrap_resamples_simulations():
    rng = np.random.default_rng(3)
    d = np.repeat(rng.standard_normal(200), 15)  # the 15 maps of a simulation share their value
    by_sim = expected_kl(d, np.zeros_like(d), np.repeat(np.arange(200), 15), rng)
    by_map = expected_kl(d, np.zeros_like(d), np.arange(d.size), rng)
    assert by_sim["n_sims"] == 200 and by_map["n_sims"] == 3000
    assert (by_sim["hi"] - by_sim["lo"]) > 2.5 * (by_map["hi"] - by_map["lo"])  # sqrt(15) ~ 3.9
    one = expected_kl(d[:15], np.zeros(15), np.zeros(15))
    assert one["n_sims"] == 1 and np.isnan(one["lo"]) and np.isnan(one["hi"])


# --------------------------------------------------------------------------- predictions.h5


def test_exact_datasets_round_trip_through_predictions_h5(tmp_path, case):
    from cosmoinfer.errors import InputError
    from cosmoinfer.posterior import read_predictions, write_predictions

    _, q = case
    n = q.n
    mean, cov = q.moments()
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    om, s8, ld = q.subset([0, 1]).axis_grid(16)
    extra = {"exact_mean": mean, "exact_std": sd, "exact_cov": cov, "exact_log_prob": q.log_prob(THETAS),
             "exact_pit": q.marginal_cdf(THETAS), "exact_hpd": q.hpd_credibility(THETAS),
             "exact_grid": {"index": np.array([0, 1]), "omega_m": om, "sigma_8": s8, "log_density": ld}}
    base = dict(truth=THETAS, mean=mean, std=sd, std_aleatoric=sd, std_epistemic=0 * sd, sim_id=np.arange(n),
                param_names=["Omega_m", "sigma_8"], method="single", split="test", priors=PRIORS)
    path = write_predictions(tmp_path / "p.h5", **base, extra_datasets=extra)
    pred = read_predictions(path)
    for k, v in extra.items():
        if k == "exact_grid":
            assert set(pred.extra[k]) == set(v)
            for kk in v:
                np.testing.assert_allclose(pred.extra[k][kk], v[kk])
        else:
            np.testing.assert_allclose(pred.extra[k], v)
    sub = pred.subset(np.array([1, 4]))
    assert list(sub.extra["exact_grid"]["index"]) == [0]
    np.testing.assert_allclose(sub.extra["exact_grid"]["log_density"][0], ld[1])
    assert sub.extra["exact_log_prob"].shape == (2,) and sub.extra["exact_cov"].shape == (2, 2, 2)

    for bad, msg in ((dict(exact_log_prob=np.zeros(n + 1)), "'exact_log_prob' has shape"),
                     (dict(exact_cov=np.zeros((n, 2))), "'exact_cov' has shape"),
                     (dict(exact_hpd=np.full(n, 1.5)), "'exact_hpd' has values outside"),
                     (dict(exact_pit=np.zeros((n, 3))), "'exact_pit' has shape"),
                     (dict(exact_grid={**extra["exact_grid"], "log_density": ld[:, :3]}), "group 'exact_grid' has shapes"),
                     (dict(exact_grid={**extra["exact_grid"], "index": np.array([0, n])}), "exact_grid/index")):
        p2 = write_predictions(tmp_path / "bad.h5", **base, extra_datasets={**extra, **bad})
        with pytest.raises(InputError, match=msg):
            read_predictions(p2)


def test_evaluate_adds_the_exact_posterior_datasets(sim64):
    """The grf simulator's hook on grf maps: every dataset, aligned with the split's items, and the corner grid."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from cosmoinfer.errors import InputError
    from cosmoinfer.simulators import extra_datasets_hook
    from cosmoinfer.simulators.grf_exact_datasets import extra_datasets as exact_posterior_datasets
    from cosmoinfer.uncertainty.evaluate import simulator_datasets

    rng = np.random.default_rng(8)
    theta = sample(PRIORS, 3, rng)
    maps = np.concatenate([sim64.simulate(t, rng) for t in theta])  # 45 maps
    truth = np.repeat(theta, 15, axis=0)
    order = rng.permutation(45)[:20]  # the split's items, in the order evaluate predicts them
    source = SimpleNamespace(manifest=SimpleNamespace(extra={"simulator": {"name": "grf", **sim64.config()}}),
                             read_one=lambda i: (maps[i], truth[i]), root="data")
    dm = SimpleNamespace(source=source, datasets={"test": SimpleNamespace(indices=order)}, priors=PRIORS)
    post = SimpleNamespace(param_names=["Omega_m", "sigma_8"], truth=truth[order])
    out = exact_posterior_datasets(OmegaConf.create({"exact_posterior": "auto", "exact_grid": 32}), dm, "test", post)
    q = exact_predictive(maps[order], sim64, PRIORS)
    mean, cov = q.moments()
    np.testing.assert_allclose(out["exact_mean"], mean)
    np.testing.assert_allclose(out["exact_std"], np.sqrt(np.diagonal(cov, axis1=1, axis2=2)))
    np.testing.assert_allclose(out["exact_cov"], cov)
    np.testing.assert_allclose(out["exact_log_prob"], q.log_prob(truth[order]))
    np.testing.assert_allclose(out["exact_pit"], q.marginal_cdf(truth[order]))
    np.testing.assert_allclose(out["exact_hpd"], q.hpd_credibility(truth[order]))
    g = out["exact_grid"]
    assert list(g["index"]) == list(range(8)) and g["omega_m"].shape == (8, 32) and g["log_density"].shape == (8, 32, 32)
    off = OmegaConf.create({"exact_posterior": "false"})
    assert exact_posterior_datasets(off, dm, "test", post) == {}
    # the evaluator finds the hook by the simulator's name; other simulators add nothing
    assert extra_datasets_hook("grf") is exact_posterior_datasets and extra_datasets_hook("camels_like") is None
    assert simulator_datasets(off, dm, "test", post) == {}
    source.manifest.extra["simulator"]["name"] = "camels_like"
    assert simulator_datasets(OmegaConf.create({"exact_posterior": "auto"}), dm, "test", post) == {}
    with pytest.raises(InputError, match="needs maps from the grf simulator"):
        simulator_datasets(OmegaConf.create({"exact_posterior": "true"}), dm, "test", post)
