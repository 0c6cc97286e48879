"""Statistics of the whole predictive: calibrated-by-construction predictives pass at the nominal
rate (counting simulations, not maps), 20 % too narrow or too wide ones are caught, and the
report's numbers are those of the stored predictive."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import scoringrules as sr
from scipy import stats
from scipy.special import ndtr

from cosmoinfer.calibration import scores
from cosmoinfer.calibration.metrics import DEFAULT_LEVELS, compute_metrics
from cosmoinfer.calibration.report import build_report
from cosmoinfer.calibration.verdict import assess
from cosmoinfer.posterior import Bijection, MixturePredictive, read_predictions, write_predictions
from tests.synthetic_predictives import NAMES, PRIORS, calibrated


def _write(path, q, truth, sim):
    mean, cov = q.moments()
    std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    write_predictions(path, truth=truth, mean=mean, std=std, std_aleatoric=std, std_epistemic=0 * std,
                      sim_id=sim, param_names=NAMES, method="single", split="test", priors=PRIORS, predictive=q)
    return path


@pytest.mark.parametrize("kind", ["gaussian", "mixture"])
def test_calibrated_predictive_flagged_at_nominal_rate(kind):
    # 40 replicates x 3 parameters (one lognormal) of 50 simulations x 15 maps correlated at rho = 0.7.
    flags = []
    for r in range(40):
        rng = np.random.default_rng(r)
        q, truth, sim = calibrated(kind, 50, rng, rho=0.7)
        flags.append(assess(q, truth, sim, rng, DEFAULT_LEVELS, n_boot=400).flagged)
    n_trials = len(flags) * 3
    # the verdict's family-wise rate is 5 %; allow the binomial 99.9 % quantile of that rate
    assert np.sum(flags) <= stats.binom.ppf(0.999, n_trials, 0.05), np.mean(flags, axis=0)


def test_maps_counted_as_independent_would_overflag():
    # the reason for counting simulations: the DKW bound for N independent maps is exceeded far
    # more often than 5 % when maps of a simulation are correlated
    over = []
    for r in range(30):
        rng = np.random.default_rng(500 + r)
        q, truth, sim = calibrated("gaussian", 50, rng, rho=0.9)
        a = assess(q, truth, sim, rng, DEFAULT_LEVELS, n_boot=200)
        over.append(a.coverage_error > np.sqrt(np.log(2 / 0.05) / (2 * truth.shape[0])))
    assert np.mean(over) > 0.3


@pytest.mark.parametrize("kind", ["gaussian", "mixture"])
@pytest.mark.parametrize("scale", [0.8, 1.2])
def test_too_narrow_or_too_wide_is_caught_at_100_simulations(kind, scale):
    for r in range(5):
        rng = np.random.default_rng(100 + r)
        q, truth, sim = calibrated(kind, 100, rng, rho=0.5)
        a = assess(q.scaled(np.full(3, scale)), truth, sim, rng, DEFAULT_LEVELS, n_boot=400)
        assert a.flagged.all(), (a.coverage_error, a.tolerance, a.scale, a.scale_se)
        assert np.all((a.scale > 1) == (scale < 1))  # direction: narrower predictive -> s > 1


def test_report_numbers_are_those_of_the_stored_predictive(tmp_path):
    rng = np.random.default_rng(3)
    q, truth, sim = calibrated("mixture", 30, rng, rho=0.3)
    path = _write(tmp_path / "predictions.h5", q, truth, sim)
    back = read_predictions(path)
    assert back.format_version == 2 and back.predictive.k == 2
    np.testing.assert_allclose(back.predictive.loc, q.loc)
    out = build_report(path, tmp_path / "report", n_posterior_samples=200)
    m = json.loads(out.metrics.read_text())
    log_q = back.predictive.log_prob(back.truth)
    assert m["joint"]["nll"] == pytest.approx(-np.mean(log_q), rel=1e-10)
    for j, nm in enumerate(NAMES):
        marg = back.predictive.marginal_log_prob(back.truth)[:, j]
        assert m["params"][nm]["nll"] == pytest.approx(-np.mean(marg), rel=1e-10)
        pit = back.predictive.marginal_cdf(back.truth)[:, j]
        assert m["params"][nm]["coverage"]["0.68"] == pytest.approx(np.mean(np.abs(pit - 0.5) <= 0.34))
    assert "S8" in m["params"] and m["n_sims"] == 30
    assert (tmp_path / "report" / "report.html").exists()


def test_lognormal_judged_as_lognormal_not_gaussian():
    # A_SN1 (log-uniform prior): wide predictive in log space. Judged on the real (lognormal)
    # predictive its 68 % coverage is nominal; a Gaussian with the same moments is not.
    rng = np.random.default_rng(4)
    bij = Bijection.from_priors(PRIORS)
    n = 6000
    loc = rng.uniform(0.4, 0.6, (n, 1, 3))
    sd = np.array([0.03, 0.03, 0.2])
    u_true = loc[:, 0] + sd * rng.standard_normal((n, 3))
    q = MixturePredictive.from_gaussians(loc, np.broadcast_to(sd**2, (n, 1, 3)), bij, NAMES)
    truth = bij.forward(u_true)
    pit = scores.pit(q, truth)
    assert abs(np.mean(np.abs(pit[:, 2] - 0.5) <= 0.34) - 0.68) < 0.02
    mean, cov = q.moments()
    z = (truth[:, 2] - mean[:, 2]) / np.sqrt(cov[:, 2, 2])
    assert abs(np.mean(np.abs(z) <= stats.norm.ppf(0.84)) - 0.68) > 0.03  # the moment stand-in is off
    assert np.mean(mean[:, 2] - 3 * np.sqrt(cov[:, 2, 2]) <= 0) > 0.5  # and puts mass below zero


def test_crps_closed_forms_match_quadrature():
    rng = np.random.default_rng(5)
    bij = Bijection.from_priors(PRIORS)
    n = 20
    loc = rng.uniform(0.3, 0.7, (n, 2, 3))
    var = rng.uniform(0.01, 0.05, (n, 2, 3)) ** 2
    q2 = MixturePredictive.from_gaussians(loc, var, bij, NAMES, weights=np.array([0.3, 0.7]))
    q1 = MixturePredictive.from_gaussians(loc[:, :1], var[:, :1], bij, NAMES)
    truth = bij.forward(rng.uniform(0.3, 0.7, (n, 3)))
    for q in (q1, q2):
        got = scores.crps(q, truth)
        for j in range(3):  # brute force: ∫ (F(x) - 1[x >= y])² dx on a fine physical grid
            lo, hi = q.marginal_ppf(1e-9)[:, j], q.marginal_ppf(1 - 1e-9)[:, j]
            for i in range(0, n, 7):
                x = np.linspace(min(lo[i], truth[i, j]), max(hi[i], truth[i, j]), 200001)
                u = (np.log(x) if bij.log[j] else x)
                u = (u - bij.shift[j]) / bij.scale[j]
                f = np.sum(q.weights[i, :, None] * ndtr((u[None] - q.loc[i, :, j, None]) / q.std_unit[i, :, j, None]),
                           axis=0)
                ref = np.trapezoid((f - (x >= truth[i, j])) ** 2, x)
                assert got[i, j] == pytest.approx(ref, rel=2e-3, abs=1e-7)
    # one component in a log coordinate is scoringrules' lognormal closed form
    b = bij.shift[2] + bij.scale[2] * loc[:, 0, 2]
    np.testing.assert_allclose(scores.crps(q1, truth)[:, 2],
                               sr.crps_lognormal(truth[:, 2], b, bij.scale[2] * np.sqrt(var[:, 0, 2])))


def test_format_1_file_still_loads_and_reports(tmp_path):
    rng = np.random.default_rng(6)
    n, p = 60, 2
    truth = rng.uniform(0.2, 0.4, (n, p))
    mean = truth + 0.02 * rng.standard_normal((n, p))
    std = np.full((n, p), 0.02)
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:  # the layout written before the predictive was stored
        for k, v in (("truth", truth), ("mean", mean), ("std", std), ("std_aleatoric", std),
                     ("std_epistemic", 0 * std), ("sim_id", np.repeat(np.arange(20), 3))):
            f.create_dataset(k, data=v)
        f.attrs["param_names"] = np.array(["Omega_m", "sigma_8"], dtype=h5py.string_dtype())
        f.attrs["method"], f.attrs["split"] = "single", "test"
    pred = read_predictions(path)
    assert pred.format_version == 1 and pred.predictive.k == 1
    np.testing.assert_allclose(pred.predictive.moments()[0], mean)
    np.testing.assert_allclose(pred.predictive.marginal_cdf(truth), ndtr((truth - mean) / std))
    m = compute_metrics(pred, n_posterior_samples=100)
    assert m["joint"]["nll"] == pytest.approx(-np.mean(pred.predictive.log_prob(truth)))
