"""The sbi peer of the statistical benchmark (``python -m pipelines.physical_limit.sbi_npe``): a tiny real run.

sbi is an optional benchmark dependency (``pip install -e '.[bench]'``): without it the run is skipped
(the one-line errors, "sbi is not installed" among them, are checked either way). Only the shape and
consistency of the output are checked, never its statistical quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def grf_folder(tmp_path_factory) -> Path:
    """12 grf simulations (180 maps of 32^2) written by the real simulate CLI."""
    pytest.importorskip("sbi")
    out = tmp_path_factory.mktemp("sbi_npe") / "grf"
    r = subprocess.run([sys.executable, "-m", "cosmoinfer.cli.simulate", "simulator=grf", "n_sims=12", "grid=32",
                        "progress=false", f"out_dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_tiny_run_writes_scorable_predictions(grf_folder, tmp_path):
    from cosmoinfer.calibration import compute_metrics
    from cosmoinfer.data.splits import split_by_simulation
    from cosmoinfer.posterior import read_predictions

    out = tmp_path / "sbi"
    r = subprocess.run([sys.executable, "-m", "pipelines.physical_limit.sbi_npe", "--data", str(grf_folder),
                        "--out", str(out), "--embedding", "cnn", "--budget-min", "0.1", "--seed", "0",
                        "--split-fractions", "0.6,0.2,0.2", "--exact-grid", "16", "--n-samples", "200",
                        "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pred = read_predictions(out / "predictions.h5")
    assert pred.method == "sbi_npe_cnn" and pred.split == "test" and pred.param_names == ["Omega_m", "sigma_8"]
    # the test split is cosmoinfer-train's (by simulation, data.split_seed 0), all 15 maps of each simulation
    split = split_by_simulation(12, [0.6, 0.2, 0.2], 0)
    assert sorted(np.unique(pred.sim_id).tolist()) == split["test"] and pred.n == 15 * len(split["test"])
    assert json.loads((out / "split.json").read_text())["test"] == split["test"]
    params = np.loadtxt(grf_folder / "params_LH_GRF.txt")
    assert np.allclose(pred.truth, params[pred.sim_id, :2], rtol=1e-6)
    # the whole predictive: 200 draws per map, all inside the prior box (sbi's posterior is the flow restricted
    # to it), log-densities finite there
    q = pred.predictive
    assert q.kind == "samples" and q.samples.shape == (pred.n, 200, 2)
    assert q.bijection.in_box(q.bijection.inverse(q.samples)).all()
    assert np.isfinite(q.sample_log_prob).all() and np.isfinite(q.truth_log_prob).all()
    assert np.allclose(pred.mean, q.samples.mean(axis=1)) and (pred.std_epistemic == 0).all()
    assert 0 <= pred.attrs["leakage_mean"] <= pred.attrs["leakage_max"] < 1
    assert {"exact_mean", "exact_std", "exact_log_prob", "exact_hpd", "exact_grid"} <= set(pred.extra)
    m = compute_metrics(pred)
    assert np.isfinite(m["joint"]["expected_kl"]["value"])
    info = json.loads((out / "train_info.json").read_text())
    assert info["embedding"] == "cnn" and info["epochs"] >= 1 and info["n_train"] == 15 * len(split["train"])
    assert info["stop_reason"] in ("budget", "early_stopping") and info["train_minutes"] > 0


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    from pipelines.physical_limit import sbi_npe

    args = ["--out", str(tmp_path / "o"), "--embedding", "ps", "--budget-min", "0.1"]
    assert sbi_npe.main(["--data", str(tmp_path / "missing"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "missing") in err[0] and "not a folder" in err[0]
    (tmp_path / "camels").mkdir()
    assert sbi_npe.main(["--data", str(tmp_path / "camels"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no grf maps" in err[0]
    (tmp_path / "camels" / "Maps_delta_GRF_LH_z=0.00.npy").write_bytes(b"")  # sbi is looked for before it is read
    monkeypatch.setitem(sys.modules, "sbi", None)  # as if sbi were not installed
    assert sbi_npe.main(["--data", str(tmp_path / "camels"), *args]) == 2
    assert capsys.readouterr().err.strip() == "error: " + sbi_npe.NOT_INSTALLED
    assert not (tmp_path / "o").exists()


def test_ps_features_are_the_baseline_spectra():
    from cosmoinfer.simulators.summary import binned_power_spectrum_np
    from pipelines.physical_limit.sbi_npe import ps_features

    maps = np.random.default_rng(0).normal(size=(5, 32, 32)).astype(np.float32)
    f = ps_features(maps, 16, block=2)
    ref = binned_power_spectrum_np(maps[:, None], 16, overdensity=False, k_max="corner")[:, 0]
    assert f.shape == (5, 16) and np.allclose(f, np.log10(ref))
