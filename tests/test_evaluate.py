"""Evaluation with real checkpoints: ensembles, MC dropout, predictions.h5, the Python API, the report.

Three members are trained once per module with the real ``cosmoinfer-train -m seed=0,1,2`` CLI on
a tiny CMD-layout folder (grid 16, ``model.hidden=4``, one epoch) and compared in a report made by
the real ``cosmoinfer-report``; evaluation runs in-process (the ``cosmoinfer-evaluate`` Hydra app
or :func:`evaluate`), and a few more single networks are trained in-process where a test needs a
different configuration.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import cosmoinfer.uncertainty.predictor as predictor_mod
from cosmoinfer.calibration.mixture import mixture_moments
from cosmoinfer.calibration.predictions import read_predictions
from cosmoinfer.cli.common import CONF_DIR
from cosmoinfer.cli.evaluate import _run as evaluate_cli_body
from cosmoinfer.cli.evaluate import main as evaluate_main
from cosmoinfer.data.manifest import Manifest, maps_filename, params_filename
from cosmoinfer.data.priors import Prior, gaussian_to_physical
from cosmoinfer.data.transforms import dihedral
from cosmoinfer.errors import InputError
from cosmoinfer.training.checkpoint import LoadedModel, build_from_meta, load_checkpoint
from cosmoinfer.training.run import train
from cosmoinfer.uncertainty.evaluate import build_eval_datamodule, evaluate
from cosmoinfer.uncertainty.predictor import Predictor, load_posterior_model

from .conftest import BIN, write_cmd_folder

warnings.filterwarnings("ignore", message=".*inferring one.*")

SUITE = "TestSuite"
N_SIMS = 12
FRACTIONS = "data.split_fractions=[0.6,0.2,0.2]"
T = 4  # MC-dropout passes
REPORT_FAST = ["n_bootstrap=10", "n_posterior_samples=100"]


def run_cli(args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def train_cfg(root, out, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[
            f"data.root={root}", f"data.suite={SUITE}", f"out_dir={out}", "model.hidden=4", FRACTIONS,
            "callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
            *overrides])


def eval_cfg(out, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("evaluate", overrides=[f"out_dir={out}", *overrides])


def train_one(root, out, *overrides) -> Path:
    torch.set_num_threads(1)
    train(train_cfg(root, out, *overrides))
    return out / "checkpoints" / "best.ckpt"


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaldata") / "cmd"
    write_cmd_folder(root, n_sims=N_SIMS, grid=16, fields=("Mtot",), suite=SUITE)
    return root


@pytest.fixture(scope="module")
def members(data, tmp_path_factory) -> Path:
    """A Hydra multirun folder holding three members trained by the real CLI."""
    base = tmp_path_factory.mktemp("ens")
    sweep = base / "multirun"
    r = run_cli(["cosmoinfer-train", "-m", "seed=0,1,2", f"data.root={data}", f"data.suite={SUITE}",
                 "model.hidden=4", "trainer.max_epochs=1", FRACTIONS, "callbacks.progress_bar=null",
                 "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"], base)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(sorted(sweep.glob("*/checkpoints/best.ckpt"))) == 3
    return sweep


@pytest.fixture(scope="module")
def ckpts(members) -> list[Path]:
    return sorted(members.glob("*/checkpoints/best.ckpt"))


@pytest.fixture(scope="module")
def evaluated(members, ckpts, tmp_path_factory) -> dict[str, Path]:
    """predictions.h5 of ensemble (CLI, multirun folder), mc_dropout and ensemble_mc_dropout."""
    base = tmp_path_factory.mktemp("evaluated")
    out = {}
    torch.set_num_threads(1)
    # the cosmoinfer-evaluate Hydra app, in-process (a subprocess would spend most of its time
    # importing Lightning): the multirun folder as checkpoints=X
    argv = ["cosmoinfer-evaluate", "evaluator=ensemble", f"checkpoints={members}", f"hydra.run.dir={base / 'ensemble'}"]
    with mock.patch.object(sys, "argv", argv):
        evaluate_main()
    out["ensemble"] = base / "ensemble" / "predictions.h5"  # out_dir defaults to Hydra's run dir
    assert out["ensemble"].is_file()
    out["mc_dropout"] = evaluate(eval_cfg(base / "mc", "evaluator=mc_dropout", f"evaluator.n_samples={T}",
                                          f"checkpoints={ckpts[0]}"))
    out["ensemble_mc_dropout"] = evaluate(eval_cfg(base / "emc", "evaluator=ensemble_mc_dropout",
                                                   f"evaluator.n_samples={T}", f"checkpoints={members}"))
    return out


def split_loader(meta: dict, batch_size: int = 16) -> DataLoader:
    dm = build_eval_datamodule(OmegaConf.create({"data": {}}), meta)
    return DataLoader(dm.datasets["test"], batch_size=batch_size, shuffle=False)




def bn_buffers(net: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in net.named_buffers()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


# ---------------------------------------------------------------------------------------- end to end


def test_end_to_end_cli_ensemble_mc_dropout_and_comparison_report(evaluated, tmp_path):
    preds = [evaluated[k] for k in ("ensemble", "mc_dropout", "ensemble_mc_dropout")]
    out = tmp_path / "report"
    r = run_cli(["cosmoinfer-report", f"predictions=[{','.join(map(str, preds))}]", f"out_dir={out}",
                 f"hydra.run.dir={tmp_path / 'hydra'}", *REPORT_FAST], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    html = out / "report.html"
    assert html.is_file() and str(html) in r.stdout
    text = html.read_text()
    srcs = re.findall(r'<img src="([^"]+)"', text)
    figures = sorted((out / "figures").glob("*.png"))
    assert figures and len(srcs) == len(figures)  # every figure is in the page
    embedded = set()
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        embedded.add(png)
    assert {f.read_bytes() for f in figures} == embedded  # the files on disk are the ones embedded
    for m in ("ensemble", "mc_dropout", "ensemble_mc_dropout"):
        assert any(f.name.startswith(tuple(f"{i}_{m}_" for i in (1, 2, 3))) for f in figures), m
    assert any(f.name.startswith("0_comparison") for f in figures)

    doc = json.loads((out / "metrics.json").read_text())
    per_param = {"rmse", "r2", "mean_rel_err", "chi2", "nll", "crps", "coverage", "coverage_error", "mean_std"}
    for block in [doc, *doc["comparison"]]:
        assert {"method", "n", "params", "joint", "recalibrated"} <= set(block)
        assert set(block["params"]) == {"Omega_m", "sigma_8", "S8"}  # S8 derived from the two
        assert {"nll", "hpd_coverage_error"} <= set(block["joint"])
        for section in (block["params"], block["recalibrated"]["params"]):
            # the recalibration fallback holds out half of the 2 test simulations: one truth, no R²
            finite = per_param - {"coverage"} - ({"r2"} if section is block["recalibrated"]["params"] else set())
            for d in section.values():
                assert per_param <= set(d)
                assert {"0.68", "0.95"} <= set(d["coverage"])
                assert all(d[k] is not None and np.isfinite(d[k]) for k in finite), d
        assert {"tarp_atc", "tarp_ks_pvalue", "sbc_ks_pvalue"} <= set(block["joint"])
    assert [b["method"] for b in doc["comparison"]] == ["ensemble", "mc_dropout", "ensemble_mc_dropout"]
    assert doc["n"] == 2 * 15  # two test simulations of 15 maps


# ---------------------------------------------------------------------------------------- predictions.h5


def test_checkpoint_data_meta_round_trips_unchanged(ckpts):
    """A real checkpoint's ``meta["data"]`` reads into a DataMeta and writes back as the same dict."""
    from cosmoinfer.data.meta import DataMeta

    model = load_checkpoint(ckpts[0])
    raw = torch.load(ckpts[0], map_location="cpu", weights_only=True)["cosmoinfer"]["data"]
    assert DataMeta.from_dict(raw).to_dict() == raw and list(DataMeta.from_dict(raw).to_dict()) == list(raw)
    assert model.data.to_dict() == raw and model.meta["data"] == raw
    assert model.data.param_names == model.param_names and model.data.grid == 16


def test_predictions_layout_units_and_split(evaluated, ckpts, data):
    meta = load_checkpoint(ckpts[0]).meta["data"]
    table = np.loadtxt(data / params_filename(SUITE, "LH"))
    expect = {"ensemble": ("n_members", 3, 3), "mc_dropout": ("n_samples", T, T),
              "ensemble_mc_dropout": ("n_samples", T, 3 * T)}
    for method, path in evaluated.items():
        with h5py.File(path, "r") as f:
            for k in ("truth", "mean", "std", "std_aleatoric", "std_epistemic", "sim_id", "member_mean",
                      "member_std"):
                assert k in f, (method, k)
            n = f["truth"].shape[0]
            assert n == 2 * 15
            for k in ("truth", "mean", "std", "std_aleatoric", "std_epistemic"):
                assert f[k].shape == (n, 2)
            assert f["sim_id"].shape == (n,)
            key, value, k_components = expect[method]
            assert f["member_mean"].shape == f["member_std"].shape == (k_components, n, 2)
            attrs = dict(f.attrs)
            assert [str(s) for s in attrs["param_names"]] == ["Omega_m", "sigma_8"]
            assert attrs["method"] == method and attrs["split"] == "test"
            assert int(attrs[key]) == value
            if method != "mc_dropout":
                assert int(attrs["n_members"]) == 3
            truth, mean, sim_id = f["truth"][()], f["mean"][()], f["sim_id"][()]
        # physical units: the truth is the parameter table of each map's simulation, inside the prior
        assert sorted(set(sim_id.tolist())) == sorted(meta["split"]["test"])
        assert all((sim_id == s).sum() == 15 for s in meta["split"]["test"])
        np.testing.assert_allclose(truth, table[sim_id][:, :2], rtol=1e-6)
        assert np.all((truth[:, 0] >= 0.1) & (truth[:, 0] <= 0.5) & (truth[:, 1] >= 0.6) & (truth[:, 1] <= 1.0))
        assert np.all((mean[:, 0] > -1) & (mean[:, 0] < 2) & (mean[:, 1] > -1) & (mean[:, 1] < 3))
        read_predictions(path)  # the report's validation accepts it


def test_ensemble_is_the_gaussian_mixture_of_its_members(evaluated, ckpts):
    p = read_predictions(evaluated["ensemble"])
    assert not p.warnings
    mean, var, alea, epi = mixture_moments(p.member_mean, p.member_std**2)
    np.testing.assert_allclose(p.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(p.std**2, var, rtol=1e-10)
    np.testing.assert_allclose(p.std_aleatoric**2, alea, rtol=1e-10)
    np.testing.assert_allclose(p.std_epistemic**2, epi, rtol=1e-10, atol=1e-20)
    np.testing.assert_allclose(p.std**2, p.std_aleatoric**2 + p.std_epistemic**2, rtol=1e-10)
    assert np.all(p.std_epistemic > 0)  # three different networks disagree
    assert np.all(p.std > p.member_std.mean(0) - 1e-12)  # not the average of the members' sigmas
    # each member's component is that network's own prediction (checkpoints in folder order)
    loader = split_loader(load_checkpoint(ckpts[0]).meta["data"])
    for i, ck in enumerate(ckpts):
        single = Predictor([ck]).predict_batches(loader)
        np.testing.assert_allclose(p.member_mean[i], single.mean, rtol=1e-6)
        np.testing.assert_allclose(p.member_std[i], single.std, rtol=1e-6)
    # MC dropout + ensemble: every component of every member in one mixture
    q = read_predictions(evaluated["ensemble_mc_dropout"])
    assert not q.warnings
    mean, var, alea, epi = mixture_moments(q.member_mean, q.member_std**2)
    np.testing.assert_allclose(q.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(q.std**2, var, rtol=1e-10)


def test_evaluator_loads_each_checkpoint_exactly_once(members, ckpts, evaluated, tmp_path, monkeypatch):
    calls = []
    real = predictor_mod.load_checkpoint

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(predictor_mod, "load_checkpoint", counting)
    cfg = eval_cfg(tmp_path, "evaluator=ensemble", f"checkpoints={members}", "data.eval_batch_size=8")
    out = evaluate(cfg)  # 30 test maps in 4 batches
    assert sorted(calls) == ckpts  # each member once, not once per batch
    # in-process and CLI give the same predictions
    a, b = read_predictions(out), read_predictions(evaluated["ensemble"])
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-6)


# ---------------------------------------------------------------------------------------- MC dropout


def test_mc_dropout_freezes_batchnorm_and_runs_the_backbone_once(ckpts):
    model = load_checkpoint(ckpts[0])
    net = model.network
    assert net.dropout_in_head_only and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    before = bn_buffers(net)
    counts = {"backbone": 0, "head": 0}
    hooks = [net.backbone.register_forward_hook(lambda *a: counts.__setitem__("backbone", counts["backbone"] + 1)),
             net.head.register_forward_hook(lambda *a: counts.__setitem__("head", counts["head"] + 1))]
    loader = split_loader(model.meta["data"], batch_size=8)
    post = Predictor([model], mc_samples=T).predict_batches(loader)
    for h in hooks:
        h.remove()
    n_batches = len(loader)
    assert n_batches == 4
    assert counts == {"backbone": n_batches, "head": T * n_batches}
    after = bn_buffers(net)
    assert before.keys() == after.keys() and before
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not net.training and not any(m.training for m in net.modules())  # left in eval mode
    # the T passes differ (dropout active), so the epistemic spread is positive
    assert post.member_mean.shape[0] == T
    assert np.ptp(post.member_mean, axis=0).max() > 0
    assert np.all(post.std_epistemic > 0)
    # reproducible: the same seed gives the same masks
    again = Predictor([model], mc_samples=T).predict_batches(loader)
    np.testing.assert_array_equal(post.member_mean, again.member_mean)


def test_mc_dropout_in_the_backbone_runs_the_whole_network_each_pass(ckpts):
    """A ResNet with dropout inside its blocks (random weights): backbone T times, BN untouched."""
    ref = load_checkpoint(ckpts[0])
    meta = copy.deepcopy(ref.meta)
    meta["model"] = {"arch": "resnet", "depth": [1, 1], "width": 4, "dropout": 0.3, "dropout_in_blocks": True}
    torch.manual_seed(0)
    net, lik = build_from_meta(meta)
    net.eval()
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model = LoadedModel(Path("resnet.ckpt"), net, lik, meta)
    assert not net.dropout_in_head_only
    before = bn_buffers(net)
    calls = []
    hook = net.backbone.register_forward_hook(lambda *a: calls.append(1))
    loader = split_loader(meta["data"], batch_size=16)
    post = Predictor([model], mc_samples=T).predict_batches(loader)
    hook.remove()
    assert len(calls) == T * len(loader)
    for k, v in bn_buffers(net).items():
        assert torch.equal(before[k], v), k
    assert np.all(post.std_epistemic > 0)


def test_mc_dropout_with_rate_zero_has_no_epistemic_spread(data, ckpts, tmp_path):
    ck = train_one(data, tmp_path / "nodrop", "model.dropout=0")
    out = evaluate(eval_cfg(tmp_path / "ev", "evaluator=mc_dropout", f"evaluator.n_samples={T}", f"checkpoints={ck}"))
    p = read_predictions(out)
    assert p.member_mean.shape[0] == T
    assert np.all(p.std_epistemic == 0)
    np.testing.assert_allclose(p.std, p.std_aleatoric, rtol=1e-12)
    single = read_predictions(evaluate(eval_cfg(tmp_path / "single", "evaluator=single", f"checkpoints={ck}")))
    np.testing.assert_allclose(p.mean, single.mean, rtol=1e-12)
    np.testing.assert_allclose(p.std, single.std, rtol=1e-12)


# ---------------------------------------------------------------------------------------- members that disagree


def test_members_that_disagree_are_refused_naming_the_checkpoint(data, members, ckpts, tmp_path, capsys):
    other_params = train_one(data, tmp_path / "params", "data.params=[Omega_m,A_SN1]")
    other_split = train_one(data, tmp_path / "split", "data.split_seed=7")
    for bad, what in ((other_params, "parameters"), (other_split, "split")):
        with pytest.raises(InputError) as err:
            evaluate(eval_cfg(tmp_path / "ev", "evaluator=ensemble", f"checkpoints=[{ckpts[0]},{ckpts[1]},{bad}]"))
        assert str(bad) in str(err.value) and what in str(err.value)
    # the CLI says the same in one line, exit status 2
    with pytest.raises(SystemExit) as exit_:
        evaluate_cli_body(eval_cfg(tmp_path / "ev", "evaluator=ensemble", f"checkpoints=[{ckpts[0]},{other_split}]"))
    assert exit_.value.code == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error:") and str(other_split) in err_lines[0]
    # the odd one out is fine on its own: a log-uniform parameter comes back in physical units
    p = read_predictions(evaluate(eval_cfg(tmp_path / "alone", "evaluator=single", f"checkpoints={other_params}")))
    assert p.param_names == ["Omega_m", "A_SN1"]
    table = np.loadtxt(data / params_filename(SUITE, "LH"))
    np.testing.assert_allclose(p.truth, table[p.sim_id][:, [0, 2]], rtol=1e-6)
    assert np.all(p.mean[:, 1] > 0)  # lognormal moments of a log-uniform parameter
    # a member named twice would be counted twice
    with pytest.raises(InputError, match="named twice"):
        evaluate(eval_cfg(tmp_path / "ev2", "evaluator=ensemble", f"checkpoints=[{ckpts[0]},{members / '0'}]"))
    # mc_dropout takes exactly one checkpoint
    with pytest.raises(InputError, match="ensemble_mc_dropout"):
        evaluate(eval_cfg(tmp_path / "ev2", "evaluator=mc_dropout", f"checkpoints={members}"))


# ---------------------------------------------------------------------------------------- TTA


def test_test_time_augmentation_averages_the_eight_views(ckpts, tmp_path, evaluated):
    out = evaluate(eval_cfg(tmp_path, "evaluator=single", f"checkpoints={ckpts[0]}", "tta=true"))
    tta = read_predictions(out)
    plain = read_predictions(evaluate(eval_cfg(tmp_path / "plain", "evaluator=single", f"checkpoints={ckpts[0]}")))
    np.testing.assert_array_equal(tta.truth, plain.truth)
    # exactly the average of the 8 dihedral views' unit-space moments, mapped to physical units
    model = load_checkpoint(ckpts[0])
    x = torch.stack([b[0] for b in split_loader(model.meta["data"], 1000).dataset])
    with torch.no_grad():
        outs = [model.likelihood.predict(model.network(dihedral(x, k))) for k in range(8)]
    mu_u = torch.stack([o["mean"] for o in outs]).mean(0).double().numpy()
    var_u = torch.stack([o["var"] for o in outs]).mean(0).double().numpy()
    mean, var = gaussian_to_physical(mu_u, var_u, model.priors)
    np.testing.assert_allclose(tta.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(tta.std, np.sqrt(var), rtol=1e-5)
    # and close to the plain prediction: the maps are periodic, rotations change little
    assert np.max(np.abs(tta.mean - plain.mean) / plain.std) < 1.0
    np.testing.assert_allclose(tta.std, plain.std, rtol=0.5)


# ---------------------------------------------------------------------------------------- other data


def test_evaluate_on_another_suite_with_its_own_priors(ckpts, members, tmp_path):
    root = tmp_path / "other"
    write_cmd_folder(root, n_sims=5, grid=16, fields=("Mtot",), suite="OtherSuite", seed=5)
    # its manifest states wider priors than the training data's: the truth must come from its own table
    wide = [Prior("Omega_m", 0.05, 0.6), Prior("sigma_8", 0.5, 1.1), Prior("A_SN1", 0.25, 4.0, True),
            Prior("A_AGN1", 0.25, 4.0, True), Prior("A_SN2", 0.5, 2.0, True), Prior("A_AGN2", 0.5, 2.0, True)]
    Manifest.for_folder(root, "OtherSuite", "LH", ["Mtot"], wide, name="other").save(root / "manifest_OtherSuite.yaml")
    out = evaluate(eval_cfg(tmp_path / "ev", "evaluator=ensemble", f"checkpoints={members}", f"data.root={root}",
                            "data.suite=OtherSuite", "split=all"))
    p = read_predictions(out)
    table = np.loadtxt(root / params_filename("OtherSuite", "LH"))
    assert p.n == 5 * 15 and p.split == "all"
    np.testing.assert_array_equal(p.sim_id, np.repeat(np.arange(5), 15))
    np.testing.assert_allclose(p.truth, table[p.sim_id][:, :2], rtol=1e-6)
    with h5py.File(out, "r") as f:
        assert f.attrs["suite"] == "OtherSuite"
    # the default split on other data is a fresh split by simulation, still whole simulations
    q = read_predictions(evaluate(eval_cfg(tmp_path / "ev2", "evaluator=ensemble", f"checkpoints={members}",
                                           f"data.root={root}", "data.suite=OtherSuite")))
    assert q.n % 15 == 0 and 0 < q.n < p.n
    # a suite that is not there is an input error
    with pytest.raises(InputError):
        evaluate(eval_cfg(tmp_path / "ev3", "evaluator=ensemble", f"checkpoints={members}",
                          f"data.root={root}", "data.suite=NoSuchSuite", "split=all"))


# ---------------------------------------------------------------------------------------- Python API


def test_python_api_matches_the_cli(members, ckpts, evaluated, data):
    cli = read_predictions(evaluated["ensemble"])
    maps = np.load(data / maps_filename("Mtot", SUITE, "LH"), mmap_mode="r")
    order = np.argsort(cli.sim_id, kind="stable")
    idx = np.concatenate([np.arange(s * 15, s * 15 + 15) for s in sorted(set(cli.sim_id.tolist()))])
    phys = np.asarray(maps[idx])  # (N, H, W) in physical units, as a user has them
    for spec in (members, [str(c) for c in ckpts]):
        post = load_posterior_model(spec).predict_maps(phys, batch_size=7)
        for k in ("mean", "std", "std_aleatoric", "std_epistemic"):
            np.testing.assert_allclose(getattr(post, k), getattr(cli, k)[order], rtol=1e-5, err_msg=k)
        assert post.member_mean.shape == (3, len(idx), 2)
        assert post.param_names == ["Omega_m", "sigma_8"] and post.truth is None and post.cov is None
    draws = post.sample(50, np.random.default_rng(1))
    assert draws.shape == (50, len(idx), 2)
    with pytest.raises(InputError, match="physical units"):
        post = load_posterior_model(ckpts[0]).predict_maps(np.ones((2, 2, 16, 16)))


def test_full_covariance_head_writes_cov_in_physical_units(data, tmp_path):
    ck = train_one(data, tmp_path / "fullcov", "loss=gaussian_fullcov")
    p = read_predictions(evaluate(eval_cfg(tmp_path / "ev", "evaluator=mc_dropout", f"evaluator.n_samples={T}",
                                           f"checkpoints={ck}")))
    assert p.cov is not None and p.cov.shape == (p.n, 2, 2)
    np.testing.assert_allclose(np.sqrt(np.diagonal(p.cov, axis1=1, axis2=2)), p.std, rtol=1e-6)
    np.linalg.cholesky(p.cov)
    maps = np.load(data / maps_filename("Mtot", SUITE, "LH"))[:30]
    post = load_posterior_model(ck).predict_maps(maps)
    assert post.cov.shape == (30, 2, 2)
    assert post.sample(20).shape == (20, 30, 2)
