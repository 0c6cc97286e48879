"""predictions.h5 I/O, verdicts, the HTML report and the cosmoinfer-report CLI."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cosmoinfer.calibration import build_report, mixture_moments, read_predictions, write_predictions
from cosmoinfer.calibration.verdict import verdict
from cosmoinfer.data.priors import Prior
from cosmoinfer.errors import InputError

REPO = Path(__file__).resolve().parents[1]
NAMES = ["Omega_m", "sigma_8"]
PRIORS = [Prior("Omega_m", 0.1, 0.5), Prior("sigma_8", 0.6, 1.0)]
FAST = {"n_posterior_samples": 100, "n_bootstrap": 10, "dpi": 40}
DESIGN_PARAM_KEYS = {"rmse", "r2", "mean_rel_err", "chi2", "nll", "crps", "coverage", "coverage_error", "mean_std"}


def synthetic(n, seed, width_factor=1.0):
    """Calibrated-by-construction arrays (truth = mean + sigma * N(0,1)), widths scaled by width_factor."""
    rng = np.random.default_rng(seed)
    sig = np.array([0.03, 0.02]) * rng.uniform(0.5, 1.5, (n, 2))
    mean = np.column_stack([rng.uniform(0.15, 0.45, n), rng.uniform(0.65, 0.95, n)])
    return mean + sig * rng.standard_normal((n, 2)), mean, sig * width_factor


def write_single(path, n=300, seed=0, width_factor=1.0, split="test", **kw):
    truth, mean, std = synthetic(n, seed, width_factor)
    kw.setdefault("priors", PRIORS)
    return write_predictions(path, truth=truth, mean=mean, std=std, std_aleatoric=std,
                             std_epistemic=np.zeros_like(std), sim_id=np.arange(n) // 15, param_names=NAMES,
                             method="single", split=split, **kw)


def write_ensemble(path, n=300, seed=1, m=4, with_cov=True, with_exact=True):
    rng = np.random.default_rng(seed)
    truth, mean, std = synthetic(n, seed)
    mm = mean[None] + 0.4 * std[None] * rng.standard_normal((m, n, 2))
    ms = np.repeat(0.9 * std[None], m, 0)
    mu, var, alea, epi = mixture_moments(mm, ms**2)
    extra = {}
    cov = None
    if with_cov:
        cov = np.zeros((n, 2, 2))
        cov[:, 0, 0], cov[:, 1, 1] = var[:, 0], var[:, 1]
        cov[:, 0, 1] = cov[:, 1, 0] = 0.3 * np.sqrt(var[:, 0] * var[:, 1])
    if with_exact:
        extra = {"exact_mean": truth + 0.7 * std * rng.standard_normal((n, 2)), "exact_std": 0.7 * std}
    return write_predictions(path, truth=truth, mean=mu, std=np.sqrt(var), std_aleatoric=np.sqrt(alea),
                             std_epistemic=np.sqrt(epi), sim_id=np.arange(n), param_names=NAMES, method="ensemble",
                             split="test", member_mean=mm, member_std=ms, cov=cov, n_members=m, priors=PRIORS,
                             extra_datasets=extra)


# --------------------------------------------------------------------------- predictions.h5


def test_write_read_roundtrip(tmp_path):
    p = write_ensemble(tmp_path / "e.h5")
    with h5py.File(p) as f:  # the DESIGN.md layout
        assert {"truth", "mean", "std", "std_aleatoric", "std_epistemic", "sim_id", "member_mean", "member_std",
                "cov", "exact_mean", "exact_std"} <= set(f.keys())
        assert f["member_mean"].shape == (4, 300, 2) and f["cov"].shape == (300, 2, 2) and f["sim_id"].shape == (300,)
        assert {"param_names", "method", "split", "n_members", "priors"} <= set(f.attrs)
    pred = read_predictions(p)
    assert pred.param_names == NAMES and pred.method == "ensemble" and pred.split == "test"
    assert pred.n_members == 4 and pred.n_samples is None and pred.task == "regression"
    assert pred.priors == PRIORS
    assert pred.member_mean.shape == (4, 300, 2) and pred.cov.shape == (300, 2, 2)
    assert set(pred.extra) == {"exact_mean", "exact_std"}
    assert pred.warnings == []
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_read_warns_when_sigmas_were_averaged(tmp_path):
    rng = np.random.default_rng(0)
    truth, mean, std = synthetic(50, 0)
    mm = mean[None] + std[None] * rng.standard_normal((3, 50, 2))
    ms = np.repeat(std[None], 3, 0)
    write_predictions(tmp_path / "bad.h5", truth=truth, mean=mm.mean(0), std=ms.mean(0), std_aleatoric=std,
                      std_epistemic=np.zeros_like(std), sim_id=np.arange(50), param_names=NAMES,
                      method="ensemble", split="test", member_mean=mm, member_std=ms, n_members=3)
    assert any("averaging member sigmas" in w for w in read_predictions(tmp_path / "bad.h5").warnings)


def _corrupt(path, drop=(), put=None, attrs=None, del_attrs=()):
    with h5py.File(path, "a") as f:
        for k in drop:
            del f[k]
        for k, v in (put or {}).items():
            if k in f:
                del f[k]
            f.create_dataset(k, data=v)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for k in del_attrs:
            del f.attrs[k]
    return path


@pytest.mark.parametrize("change,message", [
    (dict(drop=["std"]), "missing dataset 'std'"),
    (dict(drop=["sim_id"]), "missing dataset 'sim_id'"),
    (dict(put={"mean": np.zeros((299, 2))}), "dataset 'mean' has shape (299, 2)"),
    (dict(put={"std": np.full((300, 2), np.nan)}), "dataset 'std' has 600 non-finite values"),
    (dict(put={"std": np.zeros((300, 2))}), "dataset 'std' has 600 values <= 0"),
    (dict(put={"truth": np.zeros((300, 3))}), "'param_names' has 2 names but 'truth' has 3 columns"),
    (dict(put={"member_mean": np.zeros((2, 300, 2))}), "missing dataset 'member_std'"),
    (dict(put={"cov": -np.ones((300, 2, 2))}), "dataset 'cov' is not positive definite"),
    (dict(put={"cov": np.tile([[1.0, 0.5], [0.2, 1.0]], (300, 1, 1))}), "dataset 'cov' is not symmetric"),
    (dict(put={"cov": np.tile(np.eye(2), (300, 1, 1))}), "dataset 'cov' diagonal does not match"),
    (dict(put={"exact_std": np.zeros((300, 2))}), "dataset 'exact_std' has values <= 0"),
    (dict(put={"mean": np.array(["a"] * 300, dtype="S1")}), "dataset 'mean' is not numeric"),
    (dict(attrs={"priors": "{not json"}), "attribute 'priors' is not a valid JSON"),
    (dict(del_attrs=["param_names"]), "missing attribute 'param_names'"),
])
def test_read_rejects_bad_files_with_one_line(tmp_path, change, message):
    p = _corrupt(write_single(tmp_path / "p.h5"), **change)
    with pytest.raises(InputError) as err:
        read_predictions(p)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(p)) and message in text


def test_read_rejects_missing_and_non_hdf5(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_predictions(tmp_path / "nope.h5")
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_predictions(tmp_path / "x.h5")


def test_classification_predictions_are_accepted(tmp_path):
    rng = np.random.default_rng(3)
    prob = rng.uniform(0.02, 0.98, (200, 1))
    y = (rng.uniform(size=(200, 1)) < prob).astype(float)
    std = np.sqrt(prob * (1 - prob))
    write_predictions(tmp_path / "c.h5", truth=y, mean=prob, std=std, std_aleatoric=std,
                      std_epistemic=np.zeros_like(std), sim_id=np.arange(200), param_names=["is_astrid"],
                      method="single", split="test", task="classification")
    pred = read_predictions(tmp_path / "c.h5")
    assert pred.task == "classification" and pred.truth.shape == (200, 1)
    _corrupt(tmp_path / "c.h5", put={"truth": np.full((200, 1), 0.5)})
    with pytest.raises(InputError, match="0/1 labels"):
        read_predictions(tmp_path / "c.h5")


# --------------------------------------------------------------------------- verdicts


def test_verdict_texts():
    v = verdict("sigma_8", 1.23, 0.15, 0.008, 0.03, n=2000)
    assert v.status == "too narrow"
    assert v.text == ("sigma_8 intervals too narrow by 23% (s_test = 1.23); rescaling by s_fit = 1.23 fixes coverage "
                      "to within 0.8%")
    assert v.summary == "too narrow by 23% (s_test = 1.23)" and v.worsened == []
    assert verdict("Omega_m", 0.8, 0.1, 0.01, 0.03, n=2000).text.startswith("Omega_m intervals too wide by 25%")
    assert verdict("Omega_m", 1.01, 0.01, 0.01, 0.03, n=2000).status == "well calibrated"
    v = verdict("A_SN1", 1.0, 0.08, 0.08, 0.03, err_isotonic=0.01, n=2000)
    assert v.status == "miscalibrated" and "isotonic" in v.text
    assert "biased low" in verdict("x", 1.0, 0.01, 0.01, 0.03, mean_z=0.5, n=2000).text
    # coverage inside its tolerance, but a scale significantly above 1: still too narrow
    v = verdict("sigma_8", 1.12, 0.05, 0.02, 0.06, n=500, scale_se=0.03)
    assert v.status == "too narrow" and "slightly too narrow by 12%" in v.text
    assert verdict("sigma_8", 1.12, 0.05, 0.02, 0.06, n=500, scale_se=0.07).status == "well calibrated"


@pytest.mark.parametrize("factor,status", [(1.0, "well calibrated"), (0.6, "too narrow"), (1.6, "too wide")])
def test_report_verdicts_on_synthetic_predictors(tmp_path, factor, status):
    from cosmoinfer.calibration.metrics import DEFAULT_LEVELS
    from cosmoinfer.calibration.report_analysis import recalibrate as _recalibrate

    pred = read_predictions(write_single(tmp_path / "p.h5", n=1000, seed=11, width_factor=factor))
    block, verdicts, curves, band, g_eval = _recalibrate(pred, None, DEFAULT_LEVELS, np.random.default_rng(0),
                                                         {"n_posterior_samples": 50, "n_bootstrap": 2})
    # the fallback splits by simulation: 67 simulations of 15 maps, about half held out
    assert 30 <= g_eval <= 37 and block["n_sims"] == g_eval and set(curves) >= {"original", "isotonic"}
    assert band[0].shape == band[1].shape == (len(DEFAULT_LEVELS), 2)
    assert [v.status for v in verdicts] == [status, status], [v.text for v in verdicts]
    for name in NAMES:
        assert block["scale"][name] == pytest.approx(1 / factor, rel=0.1)


def test_verdict_judges_the_evaluated_set_not_the_validation_set(tmp_path):
    """A foreign suite: the validation predictions are calibrated, the evaluated ones 2.5x too narrow.
    The status describes the evaluated set; the fix reported is the val-fitted scale, which fails."""
    from cosmoinfer.calibration.metrics import DEFAULT_LEVELS
    from cosmoinfer.calibration.report_analysis import recalibrate as _recalibrate

    val = read_predictions(write_single(tmp_path / "val.h5", n=1000, seed=3, width_factor=1.0))
    foreign = read_predictions(write_single(tmp_path / "f.h5", n=1000, seed=4, width_factor=0.4))
    block, verdicts, _, _, _ = _recalibrate(foreign, val, DEFAULT_LEVELS, np.random.default_rng(0),
                                            {"n_posterior_samples": 50, "n_bootstrap": 2})
    assert block["n"] == 1000
    for name, v in zip(NAMES, verdicts):
        assert block["scale"][name] == pytest.approx(1.0, abs=0.1)  # what val asks for
        assert v.status == "too narrow", v.text
        # the val-fitted s_fit is near 1: it fixes nothing, and where it shrinks the too narrow intervals
        # further (s_fit < 1) the verdict says it makes coverage worse
        if v.s_fit < 1:
            assert "(fitted on val) makes coverage worse" in v.text and "width scaling" in v.worsened, v.text
        else:
            assert "(fitted on val) leaves coverage off" in v.text, v.text


# --------------------------------------------------------------------------- report


def _imgs(html):
    return re.findall(r'<img src="([^"]*)"', html)


def test_report_single_file_without_validation(tmp_path):
    p = write_single(tmp_path / "p.h5", n=400, width_factor=0.5)
    out = tmp_path / "report"
    paths = build_report(p, out, **FAST)
    assert paths.html == out / "report.html" and paths.html.exists() and paths.metrics.exists()
    html = paths.html.read_text()
    imgs = _imgs(html)
    assert len(imgs) == len(paths.figures) >= 6
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    assert not re.search(r'(src|href)="(http|//|[^"d#])', html)  # self-contained: no external assets
    for f in paths.figures:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads(paths.metrics.read_text())
    assert {"method", "n", "params", "joint", "recalibrated"} <= set(m) and "comparison" not in m
    assert m["method"] == "single" and m["n"] == 400
    for name in NAMES:
        assert DESIGN_PARAM_KEYS <= set(m["params"][name])
        assert set(m["params"][name]["coverage"]) >= {"0.68", "0.95"}
        assert DESIGN_PARAM_KEYS <= set(m["recalibrated"]["params"][name])
        assert m["recalibrated"]["scale"][name] == pytest.approx(2.0, rel=0.15)
        assert m["verdicts"][name]["status"] == "too narrow"
        # after scaling, the held-out half is calibrated
        assert m["recalibrated"]["params"][name]["coverage_error"] <= m["recalibrated"]["coverage_tolerance"][name]
    assert {"tarp_atc", "tarp_ks_pvalue", "sbc_ks_pvalue"} <= set(m["joint"])
    assert {"tarp_atc", "tarp_ks_pvalue", "sbc_ks_pvalue"} <= set(m["recalibrated"]["joint"])
    assert m["joint"]["tarp_atc"] < 0 and 150 <= m["recalibrated"]["n"] <= 250
    assert "random half" in m["recalibrated"]["fit_on"] and "random half of the test simulations" in html
    assert "intervals too narrow by" in html


def test_report_comparison_with_validation(tmp_path):
    single = write_single(tmp_path / "single.h5", n=300, width_factor=0.7, seed=5)
    single_val = write_single(tmp_path / "single_val.h5", n=300, width_factor=0.7, seed=6, split="val")
    ens = write_ensemble(tmp_path / "ens.h5")
    out = tmp_path / "cmp"
    paths = build_report([single, ens], out, val_predictions=[single_val, None], labels=["one net", "ensemble"],
                         **FAST)
    html = paths.html.read_text()
    m = json.loads(paths.metrics.read_text())
    assert [b["label"] for b in m["comparison"]] == ["one net", "ensemble"]
    assert m["label"] == "one net" and "fitted on the validation predictions" in m["recalibrated"]["fit_on"]
    assert m["recalibrated"]["n"] == 300 and m["recalibrated"]["n_fit"] == 300
    ens_block = m["comparison"][1]
    assert "random half" in ens_block["recalibrated"]["fit_on"]
    assert ens_block["joint"]["predictive"].startswith("gaussian_mixture")
    assert set(ens_block["exact"]["sigma_8"]) >= {"efficiency", "median_std_ratio"}
    assert ens_block["exact"]["sigma_8"]["median_std_ratio"] == pytest.approx(np.sqrt(0.81 + 0.16) / 0.7, rel=0.2)
    for block in m["comparison"]:
        for name in NAMES:
            assert DESIGN_PARAM_KEYS <= set(block["params"][name])
    names = {f.name for f in paths.figures}
    assert {"0_comparison_calibration.png", "2_ensemble_corner.png", "2_ensemble_exact.png",
            "2_ensemble_aleatoric_epistemic.png"} <= names
    assert len(_imgs(html)) == len(paths.figures)
    assert all(s.startswith("data:image/png;base64,") for s in _imgs(html))
    assert "Comparison of methods" in html and "Against the exact posterior" in html


def test_report_classification(tmp_path):
    rng = np.random.default_rng(9)
    prob = rng.uniform(0.02, 0.98, (300, 1))
    y = (rng.uniform(size=(300, 1)) < prob ** 2).astype(float)  # overconfident probabilities
    std = np.sqrt(prob * (1 - prob))
    write_predictions(tmp_path / "c.h5", truth=y, mean=prob, std=std, std_aleatoric=std,
                      std_epistemic=np.zeros_like(std), sim_id=np.arange(300), param_names=["is_tng"],
                      method="single", split="test", task="classification")
    paths = build_report(tmp_path / "c.h5", tmp_path / "out", **FAST)
    m = json.loads(paths.metrics.read_text())
    assert {"accuracy", "log_loss", "brier", "reliability"} <= set(m["params"]["is_tng"])
    assert m["recalibrated"]["params"]["is_tng"]["ece"] < m["recalibrated"]["before"]["is_tng"]["ece"]
    html = paths.html.read_text()
    assert "Reliability diagram" in html and len(_imgs(html)) == len(paths.figures) == 1


def test_bad_input_leaves_no_report(tmp_path):
    good = write_single(tmp_path / "good.h5")
    bad = _corrupt(write_single(tmp_path / "bad.h5"), drop=["std"])
    out = tmp_path / "out"
    with pytest.raises(InputError, match="missing dataset 'std'"):
        build_report([good, bad], out, **FAST)
    assert not out.exists() or not any(out.rglob("*"))
    with pytest.raises(InputError, match="val_predictions"):
        build_report([good], out, val_predictions=[good, good], **FAST)
    other = write_predictions(tmp_path / "other.h5", **{k: v for k, v in _arrays(50).items()},
                              param_names=["a", "b"], method="x", split="val")
    with pytest.raises(InputError, match="param_names"):
        build_report(good, out, val_predictions=other, **FAST)


def test_report_is_written_as_one_set(tmp_path, monkeypatch):
    """A failed rerun leaves the previous report whole; a good one replaces every file of it."""
    from pathlib import Path as _Path

    first = build_report(write_single(tmp_path / "a.h5", n=200, width_factor=0.5), tmp_path / "out", **FAST)
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    (tmp_path / "out" / "figures" / "stale.png").write_bytes(b"old")
    # the disk fills while the second report is written: nothing of the first is touched
    calls, write = [0], _Path.write_bytes

    def failing(self, data):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(_Path, "write_bytes", failing)
    second = write_single(tmp_path / "b.h5", n=300, width_factor=2.0)
    with pytest.raises(OSError):
        build_report(second, tmp_path / "out", **FAST)
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != "stale.png"}
    assert after == before and not list((tmp_path / "out").glob(".report-*"))
    # a good rerun: new metrics, new figures only (the stale one is gone), report.html beside them
    paths = build_report(second, tmp_path / "out", **FAST)
    assert json.loads(paths.metrics.read_text())["n"] == 300 != json.loads(before[first.metrics])["n"]
    assert sorted((tmp_path / "out" / "figures").iterdir()) == sorted(paths.figures)
    assert not list((tmp_path / "out").glob(".report-*"))


def _arrays(n):
    truth, mean, std = synthetic(n, 0)
    return dict(truth=truth, mean=mean, std=std, std_aleatoric=std, std_epistemic=0 * std, sim_id=np.arange(n))


# --------------------------------------------------------------------------- CLI


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "cosmoinfer.cli.report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_writes_report(tmp_path):
    write_single(tmp_path / "pred.h5", n=200)
    run_dir = tmp_path / "run"
    r = _cli("predictions=pred.h5", f"hydra.run.dir={run_dir}", "n_posterior_samples=100", "n_bootstrap=10",
             "dpi=40", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    printed = Path(r.stdout.strip().splitlines()[-1])
    assert printed == run_dir / "report.html" and printed.exists()  # out_dir defaults to Hydra's run dir
    m = json.loads((run_dir / "metrics.json").read_text())
    assert DESIGN_PARAM_KEYS <= set(m["params"]["sigma_8"]) and "recalibrated" in m
    assert all(s.startswith("data:image/png;base64,") for s in _imgs(printed.read_text()))


@pytest.mark.slow
def test_cli_bad_input_is_one_line(tmp_path):
    _corrupt(write_single(tmp_path / "pred.h5", n=50), drop=["std"])
    r = _cli("predictions=pred.h5", f"out_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}",
             cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "missing dataset 'std'" in lines[-1] and "pred.h5" in lines[-1]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "report.html").exists()


def test_cli_config_and_missing_predictions(capsys):
    from omegaconf import OmegaConf

    from cosmoinfer.cli.report import run

    cfg = OmegaConf.load(REPO / "conf" / "report.yaml")
    assert OmegaConf.is_missing(cfg, "predictions") and cfg.val_predictions is None and cfg.seed == 0
    assert list(cfg.levels) == pytest.approx([0.05 * i for i in range(1, 20)])
    with pytest.raises(SystemExit) as exc:
        run(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: predictions: missing") and "\n" not in err


# --------------------------------------------------------------------------- headline, contents, wording


def test_verdict_says_when_a_recalibration_makes_coverage_worse():
    # too narrow on test, but the scale fitted elsewhere (and isotonic) leave coverage further from nominal
    v = verdict("sigma_8", 1.3, 0.05, 0.09, 0.03, err_isotonic=0.08, n=2000, fit_scale=0.8, fit_on="val")
    assert v.status == "too narrow" and v.worsened == ["width scaling", "isotonic"]
    assert "rescaling by s_fit = 0.80 (fitted on val) makes coverage worse: off by 9.0% (was 5.0%" in v.text
    assert "isotonic recalibration (fitted on val) also makes it worse" in v.text
    # calibrated to start with: the text says the recalibration would make it worse
    v = verdict("Omega_m", 1.0, 0.01, 0.04, 0.03, n=2000, fit_scale=1.2)
    assert v.status == "well calibrated" and "would make coverage worse" in v.text
    assert v.worsened == ["width scaling"] and v.s_test == 1.0 and v.s_fit == 1.2
    # a recalibration that helps is never called worse
    v = verdict("Omega_m", 1.3, 0.1, 0.01, 0.03, err_isotonic=0.02, n=2000)
    assert "worse" not in v.text and v.worsened == []


def _block(label, nll, statuses, n_sims=500, tol=None, run=None):
    """A hand-made metrics.json block: one verdict per parameter, a joint NLL, the judged simulations."""
    from cosmoinfer.calibration.headline import dkw_tolerance

    tol = dkw_tolerance(n_sims) if tol is None else tol
    names = list(statuses)
    b = {"method": label, "label": label, "split": "test", "n": 15 * n_sims, "n_sims": n_sims,
         "joint": {"nll": nll}, "params": {nm: {"coverage_tolerance": tol} for nm in names},
         "recalibrated": {"n_sims": n_sims, "coverage_tolerance": {nm: tol for nm in names}},
         "verdicts": {nm: {"param": nm, "status": st, "summary": f"{st} (s_test = 1.00)", "text": f"{nm} {st}"}
                      for nm, st in statuses.items()}}
    if run is not None:
        b["run"] = run
    return b


def _doc(*blocks):
    doc = dict(blocks[0])
    if len(blocks) > 1:
        doc["comparison"] = list(blocks)
    return doc


def test_headline_picks_lowest_nll_among_calibrated_methods():
    from cosmoinfer.calibration.headline import RULE, headline

    ok = {"Omega_m": "well calibrated", "sigma_8": "well calibrated"}
    bad = {"Omega_m": "well calibrated", "sigma_8": "too narrow"}
    doc = _doc(_block("single", -2.0, ok), _block("ensemble", -3.0, ok), _block("mc_dropout", -5.0, bad))
    h = headline(doc)
    # mc_dropout has the lowest NLL but is not calibrated on sigma_8: the rule skips it
    assert h["method"] == "ensemble" and "lowest joint NLL" in h["why"] and "2 methods well calibrated" in h["why"]
    assert h["verdicts"] == {"Omega_m": "well calibrated (s_test = 1.00)", "sigma_8": "well calibrated (s_test = 1.00)"}
    assert h["statuses"]["sigma_8"] == "well calibrated" and h["rule"] == RULE
    assert h["warning"] is None
    assert set(h) >= {"method", "why", "verdicts", "warning", "trained"}
    # none calibrated: the lowest NLL of all, and the reason says so
    h = headline(_doc(_block("single", -2.0, bad), _block("ensemble", -3.0, bad), _block("mc", None, bad)))
    assert h["method"] == "ensemble" and "no method is calibrated" in h["why"]
    assert h["verdicts"]["sigma_8"] == "too narrow (s_test = 1.00)"
    # one method only
    h = headline(_doc(_block("single", -2.0, ok)))
    assert h["method"] == "single" and "only method" in h["why"]


def test_headline_trained_line_from_run_details():
    from cosmoinfer.calibration.headline import headline

    run = {"code_version": "0.1.0 (git abc1234)", "model": {"arch": "cmd_cnn", "hidden": 8},
           "loss": {"name": "gaussian_nll"}, "n_networks": 3, "epochs_trained": [8, 8, 7],
           "training_data": {"suite": "SynthTNG", "set": "LH", "fields": ["Mtot"], "params": NAMES, "grid": 32,
                             "simulator": "camels_like", "n_sims": {"train": 84}, "n_maps": {"train": 1260}},
           "evaluated": {"split": "test", "n_maps": 270, "n_sims": 18, "suite": "SynthTNG"}}
    h = headline(_doc(_block("ensemble", -3.0, {"Omega_m": "well calibrated"}, n_sims=500, run=run)))
    for piece in ("camels_like", "SynthTNG", "Mtot", "32×32", "84 training simulations", "cmd_cnn",
                  "gaussian_nll", "7–8 epochs", "3 networks", "0.1.0 (git abc1234)"):
        assert piece in h["trained"], (piece, h["trained"])
    assert h["evaluated"].startswith("test split of suite SynthTNG: 270 maps of 18 simulations")
    assert "not recorded" in headline(_doc(_block("x", -1.0, {"Omega_m": "well calibrated"})))["trained"]


def test_headline_warns_when_the_test_set_is_too_small_to_decide():
    from cosmoinfer.calibration.headline import detectable_error, dkw_tolerance, headline, min_sims

    need = min_sims()
    # the threshold is where the tolerance of independent simulations crosses the error of intervals
    # DETECT_WIDTH_FACTOR times too narrow or too wide: just below it calibration cannot be decided
    assert dkw_tolerance(need) <= detectable_error() < dkw_tolerance(need - 1)
    ok = {"Omega_m": "well calibrated", "sigma_8": "well calibrated"}
    few = headline(_doc(_block("single", -2.0, ok, n_sims=need - 1)))
    assert few["warning"] is not None and f"only {need - 1} test simulations" in few["warning"]
    assert f"about {need} simulations" in few["warning"] and "cannot be decided" in few["warning"]
    assert headline(_doc(_block("single", -2.0, ok, n_sims=need)))["warning"] is None
    assert headline(_doc(_block("single", -2.0, ok, n_sims=20 * need)))["warning"] is None
    # enough simulations, but their maps so correlated that the measured tolerance is too wide
    wide = headline(_doc(_block("single", -2.0, ok, n_sims=2 * need, tol=1.5 * detectable_error())))
    assert wide["warning"] is not None and "cannot be decided" in wide["warning"]
    # the smallest judged set of any method decides
    h = headline(_doc(_block("a", -2.0, ok, n_sims=10 * need), _block("b", -1.0, ok, n_sims=need // 2)))
    assert h["method"] == "a" and f"only {need // 2} test simulations" in h["warning"]


RUN = {"code_version": "9.9.9 (git feedbee)", "model": {"arch": "cmd_cnn", "hidden": 8},
       "loss": {"name": "gaussian_nll"}, "n_networks": 1, "epochs_trained": [5],
       "training_data": {"suite": "SynthTNG", "fields": ["Mtot"], "params": NAMES, "grid": 32,
                         "simulator": "camels_like", "n_sims": {"train": 84}, "n_maps": {"train": 1260}},
       "evaluated": {"split": "test", "n_maps": 300, "n_sims": 20, "suite": "SynthTNG"}}


def test_run_details_are_read_back(tmp_path):
    pred = read_predictions(write_single(tmp_path / "p.h5", n=60, extra_attrs={"run": RUN}))
    assert pred.run == RUN and pred.warnings == []
    assert read_predictions(write_single(tmp_path / "old.h5", n=60)).run is None  # older files: no run details
    bad = _corrupt(write_single(tmp_path / "bad.h5", n=60), attrs={"run": "{not json"})
    pred = read_predictions(bad)
    assert pred.run is None and any("'run'" in w for w in pred.warnings)


def test_report_has_headline_and_contents(tmp_path):
    from cosmoinfer.calibration.figures import CSS_PX_PER_INCH, FULL_WIDTH
    from cosmoinfer.calibration.headline import headline
    from cosmoinfer.study import summary_lines

    single = write_single(tmp_path / "single.h5", n=300, width_factor=0.7, seed=5, extra_attrs={"run": RUN})
    single_val = write_single(tmp_path / "single_val.h5", n=300, width_factor=0.7, seed=6, split="val")
    ens = write_ensemble(tmp_path / "ens.h5")
    paths = build_report([single, ens], tmp_path / "out", val_predictions=[single_val, None],
                         labels=["one net", "ensemble"], **FAST)
    html = paths.html.read_text()
    m = json.loads(paths.metrics.read_text())
    assert m["run"] == RUN and "run" not in m["comparison"][1]  # the run details travel into metrics.json
    h = headline(m)

    # the headline box comes first, before the contents and every section
    box = re.search(r'<section class="headline" id="headline">(.*?)</section>', html, re.S)
    assert box is not None and html.index('id="headline"') < html.index('id="toc"') < html.index("<h2 id=")
    box = box.group(1)
    assert f"<b>{h['method']}</b>" in box and h["why"] in box
    assert "Method to trust" in box and "Trained" in box and "Evaluated on" in box
    trusted = next(b for b in m["comparison"] if b["label"] == h["method"])
    lines = re.findall(r'<li class="verdict ([a-z-]+)">.*?<b>([^<]+)</b>: ([^<]*)</li>', box)
    assert [(nm, text) for _, nm, text in lines] == [(nm, v["summary"]) for nm, v in trusted["verdicts"].items()]
    assert [cls for cls, _, _ in lines] == [v["status"].replace(" ", "-") for v in trusted["verdicts"].values()]
    # the single network's 20 test simulations are too few to decide: the warning is in the box
    assert h["warning"] and 'class="warn small-test-set"' in box and "cannot be decided" in box

    # the contents link every h2 (and every figure), and every link lands on an id of the page
    toc = re.search(r'<nav class="toc" id="toc">(.*?)</nav>', html, re.S).group(1)
    links = re.findall(r'href="#([^"]+)"', toc)
    h2_ids = re.findall(r'<h2 id="([^"]+)"', html)
    assert h2_ids[0] == "comparison" and len(h2_ids) == 3 and set(h2_ids) <= set(links)
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    assert set(links) <= ids and len(links) == len(set(links))
    assert sum(link.startswith("fig-") for link in links) == len(paths.figures)

    # figures at their design size: full-width ones fill the text column
    widths = [int(w) for w in re.findall(r'<img src="data:image/png;base64,[^"]*" alt="[^"]*" width="(\d+)"', html)]
    assert len(widths) == len(paths.figures) and max(widths) == round(FULL_WIDTH * CSS_PX_PER_INCH)
    # one "scale" word per meaning, as in the verdicts
    assert "scale s<" not in html and "<th>s_test</th>" in html and "<th>s_fit</th>" in html
    # a single network has no epistemic part: one sentence instead of an empty figure
    assert "1_one_net_aleatoric_epistemic.png" not in {f.name for f in paths.figures}
    assert "2_ensemble_aleatoric_epistemic.png" in {f.name for f in paths.figures}
    assert html.count('class="note no-epistemic"') == 1 and "no epistemic part" in html

    # the pipeline's terminal summary prints the same headline
    out = summary_lines(paths.metrics)
    assert out[0] == f"trust: {h['method']} ({h['why']})" and out[-1] == f"warning: {h['warning']}"


@pytest.mark.parametrize("scale,words", [(0.0, "too wide by a factor of more than a million (s_test = 0)"),
                                         (0.05, "too wide by a factor of 20 (s_test = 0.05)"),
                                         (1.23, "too narrow by 23% (s_test = 1.23)"),
                                         (1e300, "too narrow by a factor of more than a million (s_test = 1e+300)"),
                                         (float("inf"), "too narrow by a factor of more than a million")])
def test_verdict_words_extreme_width_ratios_without_failing(scale, words):
    v = verdict("a", scale, 0.5, 0.5, 0.05, n=100)
    assert v.summary.startswith(words) and "\n" not in v.text


def test_validation_file_of_the_test_maps_is_refused_and_labels_are_plain_text(tmp_path):
    test = write_single(tmp_path / "test.h5", n=150)
    copy = tmp_path / "copy.h5"
    copy.write_bytes(test.read_bytes())
    for val in (test, copy):  # the file itself, or the same maps under another name
        with pytest.raises(InputError, match="holds the same maps as the test predictions"):
            build_report(test, tmp_path / "out", val_predictions=val, **FAST)
    assert not (tmp_path / "out" / "report.html").exists()
    # labels are text, never matplotlib mathtext ("$\\frac{a$" would not parse)
    other = write_single(tmp_path / "other.h5", n=150, seed=3)
    paths = build_report([test, other], tmp_path / "out", labels=["$\\frac{a$", "b$_1"], **FAST)
    assert "$\\frac{a$" in paths.html.read_text()


def test_absurd_widths_are_refused_in_one_line(tmp_path):
    p = write_single(tmp_path / "wide.h5", n=150, width_factor=1e300)
    with pytest.raises(InputError, match=r"wide\.h5: dataset 'std' of Omega_m reaches .* not a posterior width"):
        build_report(p, tmp_path / "out", **FAST)
    assert not (tmp_path / "out" / "report.html").exists()
    # very wide but finite widths are a verdict, not an error
    paths = build_report(write_single(tmp_path / "ok.h5", n=150, width_factor=1e3), tmp_path / "out", **FAST)
    assert "too wide by a factor of" in paths.metrics.read_text()


def test_a_long_figure_legend_wraps_onto_rows_that_fit_the_figure():
    """The README's corner plot ran its legend off both edges of the figure: five long entries on one
    line. They now wrap to as many columns as fit; short ones stay on one line."""
    from cosmoinfer.calibration.figure_style import fits_one_row, legend_columns, styled

    @styled
    def layout(labels):
        ncol, rows = legend_columns(labels)
        return ncol, rows, all(fits_one_row(labels[i: i + ncol]) for i in range(0, len(labels), ncol))

    assert layout(["single", "ensemble", "exact posterior"]) == (3, 1, True)
    long = [f"sbi NPE, spline flow on the power spectrum {i} (★ its truth)" for i in range(5)]
    ncol, rows, fits = layout(long)
    assert fits and 1 <= ncol < 5 and rows == -(-5 // ncol)
    assert not fits_one_row(long)  # the case that ran off the figure
