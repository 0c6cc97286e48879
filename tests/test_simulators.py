"""Simulator physics and layout: power spectra, GRF and CAMELS-like maps, summaries, data sets.

Small grids and fixed seeds; statistical tolerances come from the sample sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmoinfer.data.priors import standard_priors
from cosmoinfer.errors import InputError
from cosmoinfer.models import build_network
from cosmoinfer.simulators.camels_like import SUITES, CamelsLikeSimulator, slab_matrix
from cosmoinfer.simulators.grf import GRFSimulator, Rings
from cosmoinfer.simulators.power import linear_power, sigma_R, slab_power_2d
from cosmoinfer.simulators.suite_writer import maps_filename, params_filename, sim_seeds, simulate_dataset
from cosmoinfer.simulators.summary import (
    _binning,
    binned_power_spectrum,
    binned_power_spectrum_np,
    power_bin_centers,
    power_bin_edges,
)

FIDUCIAL = np.array([0.3, 0.8, 1.0, 1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- power spectra
@pytest.mark.parametrize("Om,s8", [(0.1, 0.6), (0.3, 0.8), (0.5, 1.0)])
def test_linear_power_matches_colossus(Om, s8):
    cosmology = pytest.importorskip("colossus.cosmology.cosmology")
    cosmo = cosmology.setCosmology(
        "cosmoinfer_test",
        params=dict(flat=True, H0=67.11, Om0=Om, Ob0=0.049, sigma8=s8, ns=0.9624),
        persistence="",
    )
    k = np.logspace(-3, 1.5, 40)  # h/Mpc
    ref = cosmo.matterPowerSpectrum(k, model="eisenstein98_zb")  # (Mpc/h)^3
    np.testing.assert_allclose(linear_power(k, Om, s8), ref, rtol=1e-2)


def test_linear_power_normalisation_and_broadcasting():
    Om = np.array([0.1, 0.3, 0.5])[:, None]
    s8 = np.array([0.6, 0.8, 1.0])[:, None]
    k = np.logspace(-2, 1, 7)
    p = linear_power(k, Om, s8)
    assert p.shape == (3, 7)
    for i in range(3):
        np.testing.assert_allclose(p[i], linear_power(k, Om[i, 0], s8[i, 0]))
    np.testing.assert_allclose(sigma_R(8.0, Om[:, 0], s8[:, 0]), s8[:, 0], rtol=1e-6)
    # P scales as sigma_8^2 at fixed shape
    np.testing.assert_allclose(linear_power(k, 0.3, 1.0) / linear_power(k, 0.3, 0.5), 4.0, rtol=1e-12)


def test_slab_power_limits_and_convergence():
    k = np.array([0.3, 1.0, 5.0, 10.0])
    # a slab as thick as the box: only n = 0 survives, P2D = P3D / L
    np.testing.assert_allclose(
        slab_power_2d(k, 0.3, 0.8, 25.0, 25.0), linear_power(k, 0.3, 0.8) / 25.0, rtol=1e-12
    )
    # the default truncation of the line-of-sight sum has converged
    p = slab_power_2d(k, 0.3, 0.8, 25.0, 5.0)
    p_long = slab_power_2d(k, 0.3, 0.8, 25.0, 5.0, n_max=4000)
    np.testing.assert_allclose(p, p_long, rtol=1e-5)
    # broadcasting over parameters equals a loop
    Om = np.array([0.2, 0.4])
    pb = slab_power_2d(k, Om[:, None], 0.7)
    for i in range(2):
        np.testing.assert_allclose(pb[i], slab_power_2d(k, Om[i], 0.7), rtol=1e-12)


# ----------------------------------------------------------------------------- GRF
def test_rings_half_plane_weights_equal_full_grid():
    r = Rings.for_grid(16)
    assert r.count.sum() == 16 * 16 - 1
    x = np.random.default_rng(0).standard_normal((3, 16, 16))
    X = np.fft.fft2(x)
    full = np.stack(
        [
            np.bincount(r.index_full[r.index_full >= 0], (np.abs(X[i]) ** 2)[r.index_full >= 0])
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(r.ring_sums(x), full, rtol=1e-12)


@pytest.mark.parametrize("noise_std", [0.0, 0.5])
def test_grf_measured_power_matches_power_spectrum(noise_std):
    sim = GRFSimulator(grid=32, noise_std=noise_std)
    rng = np.random.default_rng(1)
    maps = np.concatenate([sim.simulate((0.3, 0.8), rng) for _ in range(20)]).astype(np.float64)  # 300 maps
    assert maps.shape == (300, 32, 32)
    P = sim.power_spectrum(0.3, 0.8)
    assert P.shape == (32, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(np.fft.fft2(maps)) ** 2 / (32**2 * P)  # E = 1 for every mode k != 0
    ratio = ratio.mean(axis=0)
    # a mode and its conjugate carry the same draw: average the map's modes in 8 |k| bins,
    # counting each independent real degree of freedom once (var of |X|^2/E per mode ~ 1 / n_maps)
    k = np.sqrt(sim.rings.k2)[sim.rings.index_full]
    k[0, 0] = 0
    edges = np.linspace(1, 16 * np.sqrt(2) + 1e-9, 9)
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (k >= lo) & (k < hi)
        n_indep = sel.sum() / 2 * maps.shape[0]
        assert abs(ratio[sel].mean() - 1) < 5 / np.sqrt(n_indep), (lo, hi, ratio[sel].mean())
    # zero-mean maps without noise
    if noise_std == 0:
        assert np.abs(maps.mean(axis=(1, 2))).max() < 1e-5


def test_grf_output_and_determinism():
    sim = GRFSimulator(grid=16)
    a = sim.simulate(FIDUCIAL, np.random.default_rng(5))
    b = sim.simulate(FIDUCIAL[:2], np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == (15, 16, 16)
    np.testing.assert_array_equal(a, b)
    # the 15 maps are independent draws, not copies
    assert np.abs(np.corrcoef(a.reshape(15, -1))[np.triu_indices(15, 1)]).max() < 0.5
    assert set(sim.simulate_fields(FIDUCIAL, np.random.default_rng(0), ["delta"])) == {"delta"}
    with pytest.raises(ValueError):
        sim.simulate_fields(FIDUCIAL, np.random.default_rng(0), ["Mtot"])


def test_grf_amplitude_follows_sigma8_squared():
    sim = GRFSimulator(grid=16)
    v1 = sim.simulate((0.3, 0.6), np.random.default_rng(3)).var()
    v2 = sim.simulate((0.3, 0.9), np.random.default_rng(3)).var()  # same noise: exact scaling
    np.testing.assert_allclose(v2 / v1, (0.9 / 0.6) ** 2, rtol=1e-5)


# ----------------------------------------------------------------------------- CAMELS-like
def _slab_identity_holds(sim, m):
    """Maps of axes 0 and 1 are slab means of one box: the y-slab s' strip of the axis-0 map s
    equals the x-slab s strip of the axis-1 map s'."""
    w = slab_matrix(sim.grid, sim.n_slabs)
    n = sim.n_slabs
    for s in range(n):
        for s2 in range(n):
            a = w[s2] @ m[s]  # axis-0 map (y, z): average over y in slab s2 -> (z,)
            b = w[s] @ m[n + s2]  # axis-1 map (x, z): average over x in slab s -> (z,)
            np.testing.assert_allclose(a, b, rtol=1e-4)


def test_camels_like_layout_and_positivity():
    sim = CamelsLikeSimulator(grid=16)
    out = sim.simulate(FIDUCIAL, np.random.default_rng(0), fields=sim.fields)
    assert set(out) == {"Mtot", "Mgas", "T", "Mstar"}
    for f, m in out.items():
        assert m.dtype == np.float32 and m.shape == (15, 16, 16), f
        assert np.all(np.isfinite(m)) and np.all(m > 0), f
    # the slab means along each axis add up to the same box mean
    mt = out["Mtot"].astype(np.float64).reshape(3, 5, -1).mean(axis=(1, 2))
    np.testing.assert_allclose(mt, mt[0], rtol=1e-5)
    _slab_identity_holds(sim, out["Mtot"].astype(np.float64))
    # CMD-like units: Mtot surface density ~ rho_crit Omega_m (5 Mpc/h)
    assert 1e11 < out["Mtot"].mean() < 1e12
    with pytest.raises(ValueError):
        sim.simulate(FIDUCIAL, np.random.default_rng(0), fields=["delta"])


def test_camels_like_fields_share_one_box_and_seed_is_deterministic():
    sim = CamelsLikeSimulator(grid=16)
    a = sim.simulate(FIDUCIAL, np.random.default_rng(7), fields=["Mtot", "Mgas"])
    b = sim.simulate(FIDUCIAL, np.random.default_rng(7), fields=["Mgas"])
    np.testing.assert_array_equal(a["Mgas"], b["Mgas"])
    c = sim.simulate(FIDUCIAL, np.random.default_rng(8), fields=["Mgas"])
    assert not np.allclose(a["Mgas"], c["Mgas"])
    la, lg = np.log(a["Mtot"]).ravel(), np.log(a["Mgas"]).ravel()
    assert np.corrcoef(la, lg)[0, 1] > 0.8  # gas traces the same matter


def test_log_mtot_variance_rises_with_sigma8():
    sim = CamelsLikeSimulator(grid=32)
    diffs = []
    for seed in range(4):  # paired: same random numbers at both sigma_8
        lo = sim.simulate([0.3, 0.6, 1, 1, 1, 1], np.random.default_rng(seed))["Mtot"]
        hi = sim.simulate([0.3, 1.0, 1, 1, 1, 1], np.random.default_rng(seed))["Mtot"]
        diffs.append(np.log10(hi).var(axis=(1, 2)) - np.log10(lo).var(axis=(1, 2)))
    diffs = np.concatenate(diffs)  # 60 maps
    assert diffs.mean() > 5 * diffs.std(ddof=1) / np.sqrt(len(diffs))
    assert np.all(diffs > 0)


def _small_scale_gas_power(suite, A_AGN1, seed=0):
    sim = CamelsLikeSimulator(grid=32, suite=suite)
    m = sim.simulate([0.3, 0.8, 1.0, A_AGN1, 1.0, 1.0], np.random.default_rng(seed), fields=["Mgas"])["Mgas"]
    p = binned_power_spectrum_np(m[:, None].astype(np.float64), n_bins=8)[:, 0]  # (15, 8)
    return p[:, 4:].mean(axis=0)  # the four highest-k bins (k > ~3.5 h/Mpc), averaged over 15 maps


def test_gas_small_scale_power_falls_with_agn_feedback_in_both_suites():
    ratios = {}
    for suite in SUITES:
        p = [_small_scale_gas_power(suite, a) for a in (0.25, 1.0, 4.0)]
        assert np.all(p[1] < p[0]) and np.all(p[2] < p[1]), suite  # same random numbers: paired
        ratios[suite] = p[2] / p[0]
        assert ratios[suite].mean() < 0.8, (suite, ratios[suite])
    # the suites respond differently to the same A_AGN1 change (by construction, clearly)
    r_tng, r_simba = ratios["SynthTNG"], ratios["SynthSIMBA"]
    assert np.all(np.abs(np.log(r_tng / r_simba)) > 0.1), (r_tng, r_simba)


def test_suites_differ_and_feedback_shape():
    k = np.logspace(-2, 1.5, 50)
    for fm in SUITES.values():
        s = fm.suppression(k, 1.0, 1.0, 1.0, 1.0)
        assert s[0] > 0.99 and np.all(np.diff(s) <= 1e-12) and s[-1] > 0
        # stronger AGN: deeper suppression reaching larger scales
        assert np.all(fm.suppression(k, 1.0, 4.0, 1.0, 1.0) <= fm.suppression(k, 1.0, 0.25, 1.0, 1.0) + 1e-12)
    a = CamelsLikeSimulator(grid=16, suite="SynthTNG").simulate(
        FIDUCIAL, np.random.default_rng(0), ["Mgas", "T"]
    )
    b = CamelsLikeSimulator(grid=16, suite="SynthSIMBA").simulate(
        FIDUCIAL, np.random.default_rng(0), ["Mgas", "T"]
    )
    for f in a:
        assert np.abs(np.log(a[f] / b[f])).mean() > 0.05, f


def test_maps_of_one_simulation_are_correlated():
    """z-profiles of the axis-0 and axis-1 maps share the box's kx = ky = 0 modes within a
    simulation; across simulations (same parameters) they are independent."""
    sim = CamelsLikeSimulator(grid=32)
    profiles = []
    for seed in range(12):
        m = sim.simulate(FIDUCIAL, np.random.default_rng(100 + seed))["Mtot"].astype(np.float64)
        d = m / m.mean() - 1
        profiles.append((d[:5].mean(axis=1), d[5:10].mean(axis=1)))  # (5, z) each

    def mean_corr(pa, pb):
        a = pa - pa.mean(axis=1, keepdims=True)
        b = pb - pb.mean(axis=1, keepdims=True)
        c = (a @ b.T) / np.sqrt((a * a).sum(1)[:, None] * (b * b).sum(1)[None, :])
        return c.mean()

    n = len(profiles)
    within = np.array([mean_corr(profiles[i][0], profiles[i][1]) for i in range(n)])
    across = np.array([mean_corr(profiles[i][0], profiles[(i + 1) % n][1]) for i in range(n)])
    diff = within - across
    assert diff.mean() > 4 * diff.std(ddof=1) / np.sqrt(n), (within, across)
    assert abs(across.mean()) < 4 * across.std(ddof=1) / np.sqrt(n) + 0.02


def test_projected_gaussian_box_matches_slab_power():
    """Without the lognormal (tiny amplitude, no smoothing) the slab maps of the 3D box have the
    projected spectrum P2D of power.slab_power_2d, in every |k| bin up to Nyquist."""
    a = 1e-3
    sim = CamelsLikeSimulator(grid=32, n_slabs=4, lognormal_amplitude=a, lognormal_smoothing=0.0)
    maps = []
    for seed in range(6):
        b = sim.boxes(FIDUCIAL, np.random.default_rng(seed), fields=())
        maps.append(sim.project(b["rho_dm"]))
    d = (np.concatenate(maps) - 1.0) / a  # (72, 32, 32) slab-mean contrasts (linear to O(a))
    n_bins = 15
    p = binned_power_spectrum_np(d[:, None], n_bins=n_bins, overdensity=False)[:, 0].mean(axis=0)
    # expectation: the average over each bin's modes of P2D(|k|) / dx^2
    kc = 2 * np.pi / sim.box_size
    m = np.fft.fftfreq(32) * 32
    kk = np.sqrt(m[:, None] ** 2 + m[None, :] ** 2)
    edges = power_bin_edges(32, n_bins)
    p2d = slab_power_2d(kk * kc, 0.3, 0.8, sim.box_size, sim.slab_thickness) / sim.cell**2
    for i in range(n_bins):
        sel = (kk >= edges[i]) & ((kk < edges[i + 1]) if i < n_bins - 1 else (kk <= edges[i + 1]))
        expected = p2d[sel].mean()
        n_indep = sel.sum() / 2 * 6 * 3  # 6 boxes, ~3 independent views each (conservative)
        assert abs(p[i] / expected - 1) < 5 / np.sqrt(n_indep), (i, p[i], expected)


# ----------------------------------------------------------------------------- summary statistic
def test_binned_power_white_noise_and_shapes():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(0.0, 2.0, size=(64, 2, 32, 32)))
    p = binned_power_spectrum(x, n_bins=6, overdensity=False)
    assert p.shape == (64, 3, 6) and p.dtype == torch.float32
    pm = p.mean(0)
    # auto spectra of white noise with variance 4: P = 4 in pixel units; cross spectrum ~ 0
    assert torch.allclose(pm[0], torch.full((6,), 4.0), rtol=0.05)
    assert torch.allclose(pm[2], torch.full((6,), 4.0), rtol=0.05)
    assert pm[1].abs().max() < 0.2
    # identical channels: cross = auto; positive fields: overdensity removes the mean
    x0 = x[:, :1] - x[:, :1].mean(dim=(-2, -1), keepdim=True)
    y = 10.0 * (1.0 + 0.1 * x0)
    q = binned_power_spectrum(torch.cat([y, y], 1), 6, overdensity=[True, True])
    torch.testing.assert_close(q[:, 0], q[:, 1])
    torch.testing.assert_close(
        q[:, 0], binned_power_spectrum(0.1 * x0, 6, overdensity=False)[:, 0], rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(binned_power_spectrum_np(x.numpy(), 6, False), p.numpy())
    assert power_bin_centers(32, 6).shape == (6,)
    with pytest.raises(ValueError):
        binned_power_spectrum(x, n_bins=200)


def test_binned_power_corner_bins_cover_every_mode():
    """k_max=corner: the bins hold all H*W - 1 nonzero modes (Parseval), nyquist leaves the corners out."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(3, 1, 16, 16)))
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    for k_max, frac in (("corner", 1.0), ("nyquist", None)):
        _, counts = _binning(16, 16, 5, k_max)
        if frac is not None:
            assert counts.sum() == 16 * 16 - 1
        else:
            assert counts.sum() < 16 * 16 - 1
    p = binned_power_spectrum(x, 5, overdensity=False, k_max="corner")[:, 0].double()  # (3, 5)
    _, counts = _binning(16, 16, 5, "corner")
    total = (p * torch.from_numpy(counts)).sum(1)  # sum over modes of |X_k|^2 / (H W) = sum of x^2
    torch.testing.assert_close(total, x.square().sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    assert power_bin_edges(16, 5, "corner")[-1] == pytest.approx(np.hypot(8, 8))
    with pytest.raises(ValueError, match="k_max"):
        binned_power_spectrum(x, 5, k_max="edge")
    with pytest.raises(InputError, match="model.k_max"):
        build_network("ps_mlp", 1, 16, 2, n_bins=5, k_max="edge")


def test_binned_power_of_grf_matches_ring_power():
    sim = GRFSimulator(grid=32)
    rng = np.random.default_rng(2)
    maps = np.concatenate([sim.simulate((0.25, 0.9), rng) for _ in range(10)])[:, None].astype(np.float64)
    n_bins = 8
    p = binned_power_spectrum_np(maps, n_bins, overdensity=False).mean(axis=(0, 1))
    m = np.fft.fftfreq(32) * 32
    kk = np.sqrt(m[:, None] ** 2 + m[None, :] ** 2)
    P = sim.power_spectrum(0.25, 0.9)
    edges = power_bin_edges(32, n_bins)
    for i in range(n_bins):
        sel = (kk >= edges[i]) & ((kk < edges[i + 1]) if i < n_bins - 1 else (kk <= edges[i + 1]))
        n_indep = sel.sum() / 2 * maps.shape[0]
        assert abs(p[i] / P[sel].mean() - 1) < 5 / np.sqrt(n_indep), i


# ----------------------------------------------------------------------------- data sets
def test_simulate_dataset_layout_and_determinism(tmp_path):
    sim = CamelsLikeSimulator(grid=16)
    priors = standard_priors("SynthTNG")
    res = simulate_dataset(sim, 3, 11, tmp_path / "a", "SynthTNG", ["Mtot", "T"], priors, progress=False)
    maps = np.load(tmp_path / "a" / maps_filename("Mtot", "SynthTNG"), mmap_mode="r")
    t = np.load(tmp_path / "a" / maps_filename("T", "SynthTNG"), mmap_mode="r")
    params = np.loadtxt(tmp_path / "a" / params_filename("SynthTNG"))
    assert maps.dtype == np.float32 and maps.shape == (45, 16, 16) and t.shape == (45, 16, 16)
    assert params.shape == (3, 6)
    np.testing.assert_array_equal(params, res["params"])  # %.17g round-trips exactly
    for j, p in enumerate(priors):
        assert np.all((params[:, j] >= p.low) & (params[:, j] <= p.high))
    assert not list((tmp_path / "a").glob(".*tmp"))  # no temporary files left behind
    # map i belongs to simulation i // 15: regenerate simulation 1 from its own seed
    rng = np.random.default_rng(sim_seeds(11, "SynthTNG", 3)[1])
    theta = params[1]
    from cosmoinfer.data.priors import sample

    np.testing.assert_array_equal(sample(priors, 1, rng)[0], theta)
    np.testing.assert_array_equal(sim.simulate(theta, rng, ["Mtot", "T"])["Mtot"], maps[15:30])
    # same seed: identical; a longer run extends a shorter one; another suite / seed: different
    simulate_dataset(sim, 5, 11, tmp_path / "b", "SynthTNG", ["Mtot"], priors, progress=False)
    maps_b = np.load(tmp_path / "b" / maps_filename("Mtot", "SynthTNG"), mmap_mode="r")
    np.testing.assert_array_equal(maps_b[:45], maps)
    p_other = simulate_dataset(sim, 3, 11, tmp_path / "c", "SynthSIMBA", ["Mtot"], priors, progress=False)
    assert not np.allclose(p_other["params"], params)
    p_seed = simulate_dataset(sim, 3, 12, tmp_path / "d", "SynthTNG", ["Mtot"], priors, progress=False)
    assert not np.allclose(p_seed["params"], params)


def test_simulate_dataset_grf_and_bad_input(tmp_path):
    sim = GRFSimulator(grid=16)
    priors = standard_priors("GRF")
    simulate_dataset(sim, 2, 0, tmp_path, "GRF", ["delta"], priors, progress=False)
    m = np.load(tmp_path / "Maps_delta_GRF_LH_z=0.00.npy", mmap_mode="r")
    assert m.shape == (30, 16, 16) and m.dtype == np.float32
    assert np.loadtxt(tmp_path / "params_LH_GRF.txt").shape == (2, 6)
    with pytest.raises(ValueError):
        simulate_dataset(sim, 0, 0, tmp_path, "GRF", ["delta"], priors, progress=False)
    with pytest.raises(ValueError):
        simulate_dataset(sim, 1, 0, tmp_path, "GRF", ["delta"], priors[:2], progress=False)
