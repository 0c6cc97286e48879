"""The evaluator's whole predictive: components per head, member, pass and view, through predictions.h5.

Tiny networks (grid 16, ``model.hidden=4``, one epoch) are trained once per module in-process: two
Gaussian-head members and an MDN (``loss=mdn``, three components) on ``[Omega_m, A_SN1]`` so a
log-uniform (lognormal) parameter is covered. ``cosmoinfer-evaluate`` runs in-process except where
the test is about the command line (the ``data.*`` keys of the train command).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import cosmoinfer.uncertainty.predictor as predictor_mod
from cosmoinfer.data.manifest import maps_filename
from cosmoinfer.data.transforms import dihedral
from cosmoinfer.errors import InputError
from cosmoinfer.posterior import FORMAT_VERSION, MixturePredictive, read_predictions
from cosmoinfer.posterior.member_moments import mixture_moments
from cosmoinfer.training.checkpoint import load_checkpoint
from cosmoinfer.training.run import train
from cosmoinfer.uncertainty.evaluate import build_eval_datamodule, evaluate
from cosmoinfer.uncertainty.predictor import Predictor, load_posterior_model

from .conftest import BIN, REPO, evaluate_cfg, tiny_train_cfg, write_cmd_folder

warnings.filterwarnings("ignore", message=".*inferring one.*")

SUITE = "TestSuite"
FRACTIONS = "data.split_fractions=[0.6,0.2,0.2]"
T = 4  # MC-dropout passes
N_COMPONENTS = 3


def train_cfg(root, out, *overrides):
    return tiny_train_cfg(root, out, *overrides)


def eval_cfg(out, *overrides):
    return evaluate_cfg(out, *overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pdata") / "cmd"
    write_cmd_folder(root, n_sims=12, grid=16, fields=("Mtot",), suite=SUITE)
    return root


@pytest.fixture(scope="module")
def ckpts(data, tmp_path_factory) -> dict[str, Path]:
    """``gauss0``/``gauss1``: gaussian_nll members (seeds 0, 1); ``mdn``: 3 components on [Omega_m, A_SN1]."""
    base = tmp_path_factory.mktemp("pckpt")
    torch.set_num_threads(1)
    out = {}
    for name, over in (("gauss0", ["seed=0"]), ("gauss1", ["seed=1"]),
                       ("mdn", ["seed=0", "loss=mdn", f"loss.n_components={N_COMPONENTS}",
                                "data.params=[Omega_m,A_SN1]"])):
        train(train_cfg(data, base / name, *over))
        out[name] = base / name / "checkpoints" / "best.ckpt"
    return out


CASES = {  # evaluator, checkpoints, MC passes, components of the predictive
    "single": ("single", ["gauss0"], 0, 1),
    "ensemble": ("ensemble", ["gauss0", "gauss1"], 0, 2),
    "mc_dropout": ("mc_dropout", ["gauss0"], T, T),
    "mdn": ("single", ["mdn"], 0, N_COMPONENTS),
}


def _lognormal_mixture_mean(q: MixturePredictive) -> np.ndarray:
    """Physical mixture mean from the unit components, written out independently of MixturePredictive."""
    b = q.bijection
    mu = b.shift + b.scale * q.loc  # (N, K, P)
    var = b.scale**2 * np.einsum("nkij,nkij->nki", q.scale_tril, q.scale_tril)
    comp = np.where(b.log, np.exp(mu + var / 2), mu)
    return np.sum(q.weights[..., None] * comp, axis=1)


@pytest.mark.parametrize("case", list(CASES))
def test_predictive_round_trips_through_predictions_h5(case, ckpts, tmp_path):
    method, names, t, k = CASES[case]
    paths = [ckpts[n] for n in names]
    over = [f"evaluator={method}", f"checkpoints=[{','.join(map(str, paths))}]"]
    if t:
        over.append(f"evaluator.n_samples={t}")
    cfg = eval_cfg(tmp_path, *over)
    p = read_predictions(evaluate(cfg))
    assert p.format_version == FORMAT_VERSION == 2 and not p.warnings

    # what Predictor produces on the same batches
    predictor = Predictor(paths, mc_samples=t, seed=int(cfg.seed))
    meta = predictor.models[0].meta["data"]
    dm = build_eval_datamodule(cfg, meta)
    post = predictor.predict_batches(dm.split_dataloader("test"), target_priors=dm.priors)
    q, ref = p.predictive, post.predictive
    assert isinstance(q, MixturePredictive) and q.k == k and q.n == p.n == 30 and q.p == 2
    # the same numbers up to float64 rounding (softmax of weights may renormalise)
    for attr in ("weights", "loc", "scale_tril"):
        np.testing.assert_allclose(getattr(q, attr), getattr(ref, attr), rtol=1e-12,
                                   atol=1e-15, err_msg=attr)
    np.testing.assert_array_equal(q.bijection.log, [False, names == ["mdn"]])
    np.testing.assert_allclose(q.weights.sum(1), 1.0, rtol=1e-12)

    # mean / std (and cov) datasets are the predictive's exact physical moments
    mean, cov = q.moments()
    np.testing.assert_allclose(p.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(p.std, np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), rtol=1e-10)
    np.testing.assert_allclose(p.mean, _lognormal_mixture_mean(q), rtol=1e-10)
    if names == ["mdn"]:
        np.testing.assert_allclose(p.cov, cov, rtol=1e-10, atol=1e-14)
    else:
        assert p.cov is None

    # per-draw summaries: member x pass draws, their Gaussian-mixture moments are the total ones
    draws = len(paths) * max(t, 1)
    assert p.member_mean.shape == p.member_std.shape == (draws, p.n, 2)
    m, var, alea, epi = mixture_moments(p.member_mean, p.member_std**2)
    np.testing.assert_allclose(p.mean, m, rtol=1e-10)
    np.testing.assert_allclose(p.std**2, var, rtol=1e-10)
    np.testing.assert_allclose(p.std_aleatoric**2, alea, rtol=1e-10)
    np.testing.assert_allclose(p.std_epistemic**2, epi, rtol=1e-10, atol=1e-30)
    if draws == 1:
        assert np.all(p.std_epistemic == 0)  # one network, even a mixture, has no epistemic spread
        np.testing.assert_allclose(p.std_aleatoric, p.std, rtol=1e-12)
    else:
        assert np.all(p.std_epistemic > 0)

    # the components are the heads' own outputs (unit coordinates) for one network
    if draws == 1:
        model = predictor.models[0]
        x = torch.stack([b[0] for b in dm.datasets["test"]])
        with torch.no_grad():
            raw = model.network(x).double()
        if names == ["mdn"]:
            log_w, loc, tril = (a.numpy() for a in model.likelihood.components(raw))
            np.testing.assert_allclose(q.weights, np.exp(log_w), rtol=1e-6)
        else:
            out = model.likelihood.predict(raw)
            loc = out["mean"].numpy()[:, None]
            tril = np.vectorize(np.diag, signature="(p)->(p,p)")(out["std"].numpy())[:, None]
        np.testing.assert_allclose(q.loc, loc, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(q.scale_tril, tril, rtol=1e-5, atol=1e-6)


def test_mdn_with_tta_mixes_the_eight_views(ckpts, data):
    model = load_checkpoint(ckpts["mdn"])
    maps = np.load(data / maps_filename("Mtot", SUITE, "LH"), mmap_mode="r")[:6]
    post = Predictor([model], tta=True).predict_maps(np.asarray(maps))
    q = post.predictive
    assert q.k == 8 * N_COMPONENTS
    x = torch.from_numpy(model.normalizer(np.asarray(maps)[:, None]))
    with torch.no_grad():
        for v in range(8):
            log_w, loc, _ = model.likelihood.components(model.network(dihedral(x, v)).double())
            sl = slice(v * N_COMPONENTS, (v + 1) * N_COMPONENTS)
            np.testing.assert_allclose(q.weights[:, sl], np.exp(log_w.numpy()) / 8, rtol=1e-6)
            np.testing.assert_allclose(q.loc[:, sl], loc.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(post.std_epistemic == 0) and post.cov.shape == (6, 2, 2)


def test_mc_dropout_with_tta_shares_the_masks_of_a_pass(ckpts, data, monkeypatch):
    """TTA used to draw independent masks per view and average them: epistemic std x ~1/sqrt(8)."""
    model = load_checkpoint(ckpts["gauss0"])
    net = model.network
    assert net.dropout_in_head_only
    dm = build_eval_datamodule(OmegaConf.create({"data": {}}), model.meta["data"])
    x = torch.stack([b[0] for b in dm.datasets["test"]])
    batches = [x[:16], x[16:]]
    bn = {k: v.clone() for k, v in net.named_buffers()}
    state = torch.get_rng_state()
    counts = {"backbone": 0, "head": 0}
    hooks = [net.backbone.register_forward_hook(lambda *a: counts.__setitem__("backbone", counts["backbone"] + 1)),
             net.head.register_forward_hook(lambda *a: counts.__setitem__("head", counts["head"] + 1))]
    tta = Predictor([model], mc_samples=16, tta=True).predict_batches(batches)
    for h in hooks:
        h.remove()
    assert counts == {"backbone": 8 * 2, "head": 8 * 16 * 2}  # backbone once per view and batch
    plain = Predictor([model], mc_samples=16).predict_batches(batches)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG state is restored
    for k, v in net.named_buffers():
        assert torch.equal(bn[k], v), k  # BatchNorm statistics untouched
    assert not any(m.training for m in net.modules())
    assert tta.predictive.k == plain.predictive.k == 16
    ratio = np.median(tta.std_epistemic / plain.std_epistemic, axis=0)
    assert np.all(ratio > 0.6), ratio

    # maps invariant under the 8 views: shared masks give exactly the plain spread; independent
    # masks per view (no reseeding) shrink it by sqrt(8), the old behaviour
    sym = torch.stack([dihedral(x, v) for v in range(8)]).mean(0)
    sym = torch.stack([dihedral(sym, v) for v in range(8)]).mean(0)
    a = Predictor([model], mc_samples=16).predict_batches([sym])
    b = Predictor([model], mc_samples=16, tta=True).predict_batches([sym])
    np.testing.assert_allclose(b.std_epistemic, a.std_epistemic, rtol=1e-3)
    monkeypatch.setattr(predictor_mod.Predictor, "share_view_masks", False)
    old = Predictor([model], mc_samples=16, tta=True).predict_batches([sym])
    assert 0.2 < np.median(old.std_epistemic / a.std_epistemic) < 0.5


def test_posterior_api_samples_the_predictive(ckpts, data):
    maps = np.asarray(np.load(data / maps_filename("Mtot", SUITE, "LH"), mmap_mode="r")[:10])
    post = load_posterior_model([ckpts["gauss0"], ckpts["gauss1"]]).predict_maps(maps)
    assert post.predictive.k == 2 and post.member_mean.shape == (2, 10, 2)
    np.testing.assert_allclose(post.mean, post.predictive.mean, rtol=1e-10)
    draws = post.sample(400, np.random.default_rng(0), truncate=True)
    assert draws.shape == (400, 10, 2)
    assert np.all((draws[..., 0] >= 0.1) & (draws[..., 0] <= 0.5) & (draws[..., 1] >= 0.6) & (draws[..., 1] <= 1.0))
    mdn = load_posterior_model(ckpts["mdn"]).predict_maps(maps)
    assert mdn.param_names == ["Omega_m", "A_SN1"] and mdn.predictive.k == N_COMPONENTS
    d = mdn.sample(20000, np.random.default_rng(1))
    assert np.all(d[..., 1] > 0)  # lognormal
    assert np.all(np.abs(d.mean(0) - mdn.mean) < 6 * mdn.std / np.sqrt(len(d)))
    np.testing.assert_allclose(mdn.predictive.marginal_cdf(np.median(d, axis=0)), 0.5, atol=0.02)


def test_uncertainty_does_not_import_calibration():
    code = ("import sys, cosmoinfer.uncertainty.evaluate, cosmoinfer.uncertainty.predictor; "
            "bad = [m for m in sys.modules if m.startswith('cosmoinfer.calibration')]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# ---------------------------------------------------------------------------------------- data.* keys


def run_cli(args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_accepts_the_train_commands_data_keys(ckpts, data, tmp_path):
    ck = ckpts["gauss0"]
    train_data = [f"data.root={data}", f"data.suite={SUITE}", "data.fields=[Mtot]", "data.params=[Omega_m,sigma_8]",
                  FRACTIONS, "data.split_seed=0", "data.set=LH", "data.manifest=null", "data.h5_path=null",
                  f"data.split_file={ck.parents[1] / 'split.json'}", "data.log_fields=auto", "data.log_offset={}",
                  "data.batch_size=8", "data.eval_batch_size=null", "data.num_workers=0", "data.augment=true",
                  "data.validate=all", "data.pin_memory=false"]
    out = tmp_path / "ok"
    r = run_cli(["cosmoinfer-evaluate", "evaluator=single", f"checkpoints={ck}", f"out_dir={out}",
                 f"hydra.run.dir={tmp_path / 'h1'}", *train_data], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    plain = read_predictions(evaluate(eval_cfg(tmp_path / "plain", "evaluator=single", f"checkpoints={ck}")))
    got = read_predictions(out / "predictions.h5")
    np.testing.assert_array_equal(got.sim_id, plain.sim_id)  # the checkpoint's own test split
    np.testing.assert_allclose(got.mean, plain.mean, rtol=1e-6)
    np.testing.assert_allclose(got.predictive.loc, plain.predictive.loc, rtol=1e-6)

    # a model-defining key that disagrees: one line naming the key and both values, exit 2, nothing written
    bad = tmp_path / "bad"
    r = run_cli(["cosmoinfer-evaluate", "evaluator=single", f"checkpoints={ck}", f"out_dir={bad}",
                 f"hydra.run.dir={tmp_path / 'h2'}", f"data.root={data}", "data.fields=[Mgas]"], tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-2000:]
    assert "data.fields" in lines[0] and "['Mtot']" in lines[0] and "['Mgas']" in lines[0]
    assert not (bad / "predictions.h5").exists()


@pytest.mark.parametrize("override, key, ckpt_value", [
    ("data.params=[Omega_m,A_SN1]", "data.params", "['Omega_m', 'sigma_8']"),
    ("data.split_seed=3", "data.split_seed", "0"),
    ("data.split_fractions=[0.8,0.1,0.1]", "data.split_fractions", "[0.6, 0.2, 0.2]"),
    ("data.log_fields=[]", "data.log_fields", "['Mtot']"),
    ("data.log_offset={Mtot:1.0}", "data.log_offset", "{}"),
])
def test_model_keys_that_disagree_are_refused(ckpts, tmp_path, override, key, ckpt_value):
    with pytest.raises(InputError) as err:
        evaluate(eval_cfg(tmp_path, "evaluator=single", f"checkpoints={ckpts['gauss0']}", override))
    msg = str(err.value)
    assert key in msg and ckpt_value in msg and str(ckpts["gauss0"]) in msg and len(msg.splitlines()) == 1
    assert not (tmp_path / "predictions.h5").exists()


def test_split_file_other_than_the_checkpoints_is_refused(ckpts, data, tmp_path):
    import json

    split = json.loads((ckpts["gauss0"].parents[1] / "split.json").read_text())
    split["train"], split["test"] = split["train"][:-1], sorted(split["test"] + split["train"][-1:])
    f = tmp_path / "split.json"
    f.write_text(json.dumps(split))
    with pytest.raises(InputError, match="data.split_file"):
        evaluate(eval_cfg(tmp_path / "ev", "evaluator=single", f"checkpoints={ckpts['gauss0']}",
                          f"data.split_file={f}"))
