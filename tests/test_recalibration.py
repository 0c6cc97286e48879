"""Variance scaling and isotonic recalibration: fitted on a 'val' draw, judged on a separate 'test' draw."""

import numpy as np
import pytest
from scipy import optimize, stats

from cosmoinfer.calibration import metrics as mt
from cosmoinfer.calibration import recalibration as rc

LEVELS = np.array(mt.DEFAULT_LEVELS)


def draw(n, rng, width_factor=1.0, noise="gauss"):
    """Calibrated-by-construction predictor (truth = mean + sigma * noise) with widths scaled by width_factor."""
    sig = np.array([0.03, 0.02]) * rng.uniform(0.5, 1.5, (n, 2))
    mean = np.column_stack([rng.uniform(0.15, 0.45, n), rng.uniform(0.65, 0.95, n)])
    if noise == "gauss":
        eps = rng.standard_normal((n, 2))
    else:  # Laplace with unit variance: heavy tails that no single scale fixes at every level
        eps = rng.laplace(0, 1 / np.sqrt(2), (n, 2))
    return mean + sig * eps, mean, sig * width_factor


def test_scale_is_closed_form_nll_minimiser():
    truth, mean, std = draw(500, np.random.default_rng(0), 0.7)
    s = rc.fit_std_scaling(truth, mean, std)
    for j in range(2):
        res = optimize.minimize_scalar(
            lambda a, j=j: mt.gaussian_nll(truth[:, j:j + 1], mean[:, j:j + 1], a * std[:, j:j + 1])[0],
            bounds=(0.1, 10), method="bounded", options={"xatol": 1e-10})
        assert s[j] == pytest.approx(res.x, abs=1e-6)
    np.testing.assert_allclose(s**2, mt.chi2(truth, mean, std), rtol=1e-12)
    np.testing.assert_allclose(rc.apply_std_scaling(std, s), std * s)


def test_variance_scaling_restores_halved_sigmas():
    n = 3000
    val = draw(n, np.random.default_rng(1), 0.5)
    test = draw(n, np.random.default_rng(2), 0.5)
    s = rc.fit_std_scaling(*val)
    # s² = mean z² ~ 4 chi²_n / n: standard error of s is about 2 / sqrt(2n)
    np.testing.assert_allclose(s, 2.0, atol=4 * 2 / np.sqrt(2 * n))
    truth, mean, std = test
    before = mt.coverage(truth, mean, std, LEVELS)
    c68 = mt.coverage(truth, mean, std, [0.68])[0]
    assert np.all(np.abs(c68 - 0.381) < 4 * np.sqrt(0.381 * 0.619 / n))
    assert np.all(mt.coverage_error(before, LEVELS) > 0.2)
    after = mt.coverage(truth, mean, rc.apply_std_scaling(std, s), LEVELS)
    assert np.all(mt.coverage_error(after, LEVELS) <= mt.coverage_tolerance(n))


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_isotonic_restores_coverage(factor):
    n = 3000
    iso = rc.fit_isotonic(*draw(n, np.random.default_rng(3), factor))
    truth, mean, std = draw(n, np.random.default_rng(4), factor)
    assert np.all(mt.coverage_error(mt.coverage(truth, mean, std, LEVELS), LEVELS) > 0.15)
    cov = iso.recalibrated_coverage(truth, mean, std, LEVELS)
    # fitting noise (val, n) and judging noise (test, n) add up: allow the tolerance of n/2 items
    assert np.all(mt.coverage_error(cov, LEVELS) <= mt.coverage_tolerance(n // 2))
    # the explicit intervals cover what recalibrated_coverage says they cover
    for level in (0.5, 0.9):
        lo, hi = iso.interval(mean, std, level)
        inside = np.mean((truth >= lo) & (truth <= hi), axis=0)
        np.testing.assert_allclose(inside, iso.recalibrated_coverage(truth, mean, std, [level])[0], atol=2 / n)
        assert np.all(np.abs(inside - level) <= mt.coverage_tolerance(n // 2))
    # widths grow (factor 0.5) or shrink (factor 2) roughly by 1/factor
    lo, hi = iso.interval(mean, std, 0.68)
    ratio = np.median((hi - lo) / (2 * std * stats.norm.ppf(0.84)), axis=0)
    np.testing.assert_allclose(ratio, 1 / factor, rtol=0.1)


def test_isotonic_fixes_shape_that_scaling_cannot():
    n = 4000
    val = draw(n, np.random.default_rng(5), 1.0, noise="laplace")
    truth, mean, std = draw(n, np.random.default_rng(6), 1.0, noise="laplace")
    s = rc.fit_std_scaling(*val)
    np.testing.assert_allclose(s, 1.0, atol=0.08)  # the variance is right ...
    scaled_err = mt.coverage_error(mt.coverage(truth, mean, std * s, LEVELS), LEVELS)
    assert np.all(scaled_err > mt.coverage_tolerance(n))  # ... but the shape is not
    iso_err = mt.coverage_error(rc.fit_isotonic(*val).recalibrated_coverage(truth, mean, std, LEVELS), LEVELS)
    assert np.all(iso_err <= mt.coverage_tolerance(n // 2))


def test_isotonic_is_near_identity_when_calibrated():
    iso = rc.fit_isotonic(*draw(2000, np.random.default_rng(7)))
    grid = np.linspace(0, 1, 101)[:, None].repeat(2, 1)
    # R is the ECDF of the val PITs: within the 99% DKW band of the identity
    assert np.max(np.abs(iso.calibrate_pit(grid) - grid)) < mt.coverage_tolerance(2000, alpha=0.01)
    np.testing.assert_allclose(iso.inverse(0.5), 0.5, atol=0.05)
    assert iso.calibrate_pit(np.array([[0.0, 1.0]])).tolist() == [[0.0, 1.0]]


def test_pava_fallback_matches_scipy(monkeypatch):
    rng = np.random.default_rng(8)
    y = rng.normal(size=200).cumsum() * 0.1 + rng.normal(size=200)
    w = rng.uniform(0.5, 2, 200)
    ref = rc.pava(y, w)
    assert np.all(np.diff(ref) >= -1e-12)
    monkeypatch.setattr(rc, "_scipy_iso", None)
    np.testing.assert_allclose(rc.pava(y, w), ref, rtol=1e-10, atol=1e-12)


def _sims(n_sims: int, per_sim: int, factor: float, seed: int):
    """Truths around unit-width Gaussian predictions, off by ``factor``, in simulations of ``per_sim``
    maps that share a common offset (half the variance), as the maps of one simulation do."""
    rng = np.random.default_rng(seed)
    common = np.repeat(rng.standard_normal((n_sims, 2)), per_sim, axis=0)
    z = np.sqrt(0.5) * common + np.sqrt(0.5) * rng.standard_normal((n_sims * per_sim, 2))
    sim_id = np.repeat(np.arange(n_sims), per_sim)
    return factor * z, np.zeros_like(z), np.ones_like(z), sim_id


@pytest.mark.parametrize("factor", [1.0, 1.4, 0.7])
def test_fit_coverage_scaling_finds_the_width_factor(factor):
    """Independent draws, widths off by ``factor``: the fitted scale is ``factor`` within the sampling
    error of a quantile-matched scale (a few times 1.2 / sqrt(n) relative, n = 6000)."""
    from cosmoinfer.calibration.recalibration import fit_coverage_scaling

    rng = np.random.default_rng(int(10 * factor))
    n = 6000
    truth = factor * rng.standard_normal((n, 2))
    s = fit_coverage_scaling(truth, np.zeros((n, 2)), np.ones((n, 2)))
    np.testing.assert_allclose(s, factor, rtol=4 * 1.2 / np.sqrt(n))


def test_fit_coverage_scaling_is_not_moved_by_one_outlying_simulation():
    """100 simulations of 15 maps, then one simulation put 6 widths off on every map (1% of the maps):
    the mean z^2 (fit_std_scaling) moves by > 10%, the coverage fit by < 3% (1% of the indicators
    move, a coverage shift of <= 0.01 at any level)."""
    from cosmoinfer.calibration.recalibration import fit_coverage_scaling, fit_std_scaling

    truth, mean, std, sim_id = _sims(100, 15, 1.0, seed=3)
    nll0, cov0 = fit_std_scaling(truth, mean, std), fit_coverage_scaling(truth, mean, std)
    truth[sim_id == 0] = 6.0 * np.sign(truth[sim_id == 0] + 1e-9)
    assert np.all(fit_std_scaling(truth, mean, std) / nll0 > 1.1)
    assert np.all(np.abs(fit_coverage_scaling(truth, mean, std) / cov0 - 1) < 0.03)


@pytest.mark.parametrize("seed", range(3))
def test_val_width_scale_leaves_calibrated_widths_alone_and_fixes_flagged_ones(seed):
    """``coverage``: on calibrated validation maps (100 simulations of 15 correlated maps) the verdict
    flags nothing (false-alarm rate 5% per parameter; fixed seeds) and every factor is exactly 1; widths
    40% too narrow are flagged and get a factor near 1.4 (within the sampling error by simulation), the
    same parameter of ``nll`` as a check."""
    from cosmoinfer.training.width_refit import val_width_scale

    truth, mean, std, sim_id = _sims(100, 15, 1.0, seed=seed)
    scale, flagged = val_width_scale(truth, mean, std, sim_id, "coverage")
    assert not flagged.any() and np.all(scale == 1.0)
    truth[:, 1] *= 1.4
    scale, flagged = val_width_scale(truth, mean, std, sim_id, "coverage")
    assert flagged.tolist() == [False, True] and scale[0] == 1.0
    assert abs(scale[1] / 1.4 - 1) < 3 * 1.2 / np.sqrt(100)
    nll, none = val_width_scale(truth, mean, std, sim_id, "nll")
    assert none is None and abs(nll[1] / 1.4 - 1) < 3 * 0.71 / np.sqrt(100)
