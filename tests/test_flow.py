"""``loss=flow``: a conditional normalizing flow on the prior box, trained and evaluated end to end.

The head alone (densities, draws, Jacobians) is checked against quadrature and hand-computed
densities; tiny networks (grid 16, ``model.hidden=4``, one epoch) are trained once per module with
the real training path on ``[Omega_m, A_SN1]`` (one uniform and one log-uniform prior) and
evaluated as a single network, an ensemble, with MC dropout and with TTA, through predictions.h5
and the report's metrics.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy.special import logsumexp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cosmoinfer.calibration.metrics import compute_metrics
from cosmoinfer.cli.common import CONF_DIR
from cosmoinfer.data.priors import Prior
from cosmoinfer.data.transforms import dihedral
from cosmoinfer.errors import InputError
from cosmoinfer.models.flow import ConditionalFlow
from cosmoinfer.models.likelihoods import build_likelihood
from cosmoinfer.models.network import Network
from cosmoinfer.posterior import Bijection, SamplePredictive, read_predictions
from cosmoinfer.posterior.flow import FlowPredictive, mixture_log_prob_unit
from cosmoinfer.training.module import PosteriorModule
from cosmoinfer.training.run import train
from cosmoinfer.uncertainty.evaluate import build_eval_datamodule, evaluate
from cosmoinfer.uncertainty.predictor import Predictor, load_posterior_model

from .conftest import evaluate_cfg, tiny_train_cfg, write_cmd_folder

warnings.filterwarnings("ignore", message=".*inferring one.*")

SUITE = "TestSuite"
PRIORS = [Prior("Omega_m", 0.1, 0.5), Prior("A_SN1", 0.25, 4.0, log=True)]
BIJ = Bijection.from_priors(PRIORS)
NAMES = [p.name for p in PRIORS]


def _raw(head: ConditionalFlow, n: int, scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, head.n_outputs, generator=g, dtype=torch.float64)


def _grid(n: int) -> tuple[np.ndarray, float]:
    """Midpoints of an ``n x n`` grid on the physical prior box, ``(n*n, 2)``, and the cell area."""
    a = np.linspace(0.1, 0.5, n + 1)
    b = np.linspace(0.25, 4.0, n + 1)
    ac, bc = (a[1:] + a[:-1]) / 2, (b[1:] + b[:-1]) / 2
    pts = np.stack(np.meshgrid(ac, bc, indexing="ij"), -1).reshape(-1, 2)
    return pts, (a[1] - a[0]) * (b[1] - b[0])


# ----------------------------------------------------------------------------------------------
# the head
# ----------------------------------------------------------------------------------------------


def test_the_flow_is_a_registered_head_with_its_config():
    head = build_likelihood("flow", 2, n_layers=2, n_bins=6)
    assert isinstance(head, ConditionalFlow) and head.has_cov and not list(head.parameters())
    assert head.n_outputs == 2 * 2 + 2 * (2 * 2 + 2 * 1 * 9 + 2 * 17)
    with pytest.raises(InputError, match="unknown option"):
        build_likelihood("flow", 2, n_components=3)
    cfg_path = Path(CONF_DIR) / "loss" / "flow.yaml"
    assert cfg_path.is_file()


def test_log_prob_integrates_to_one_over_the_prior_box():
    head = ConditionalFlow(2)
    raw = _raw(head, 3, 0.15).float().numpy()[:, None]  # (N, C=1, n_out)
    q = FlowPredictive.from_raw(head, raw, BIJ, NAMES, n_samples=10)
    pts, area = _grid(600)
    lp = q.log_prob(np.repeat(pts[:, None], q.n, axis=1))  # (G, N), physical units
    np.testing.assert_allclose(np.exp(lp).sum(0) * area, 1.0, atol=3e-3)
    # one parameter (a log-uniform one) too
    one = ConditionalFlow(1)
    q1 = FlowPredictive.from_raw(one, _raw(one, 2, 0.15).numpy()[:, None], Bijection.from_priors(PRIORS[1:]),
                                 NAMES[1:], n_samples=10)
    edges = np.linspace(0.25, 4.0, 20001)
    mid = (edges[1:] + edges[:-1]) / 2
    lp1 = q1.log_prob(np.repeat(mid[:, None, None], 2, axis=1))
    np.testing.assert_allclose(np.exp(lp1).sum(0) * (edges[1] - edges[0]), 1.0, atol=1e-3)
    # nothing outside the box, and a log-uniform parameter <= 0 is impossible
    out = np.array([[0.09, 1.0], [0.3, 4.01], [0.3, -1.0]])
    assert np.all(q.log_prob(np.repeat(out[:, None], q.n, axis=1)) == -np.inf)


def test_samples_lie_inside_the_prior_box_even_for_wild_flows():
    head = ConditionalFlow(2)
    raw = _raw(head, 20, 2.0, seed=1).numpy()[:, None]
    q = FlowPredictive.from_raw(head, raw, BIJ, NAMES, n_samples=500)
    lo, hi = np.array([0.1, 0.25]), np.array([0.5, 4.0])
    assert np.all((q.samples >= lo) & (q.samples <= hi))
    fresh = q.sample(300, np.random.default_rng(0))
    assert fresh.shape == (300, 20, 2) and np.all((fresh >= lo) & (fresh <= hi))
    assert np.all(np.isfinite(q.sample_log_prob))


def test_sample_moments_match_the_density_moments():
    head = ConditionalFlow(2)
    raw = _raw(head, 2, 0.12, seed=2).numpy()[:, None]
    q = FlowPredictive.from_raw(head, raw, BIJ, NAMES, n_samples=40000, seed=3)
    pts, area = _grid(500)
    w = np.exp(q.log_prob(np.repeat(pts[:, None], q.n, axis=1))) * area  # (G, N)
    mean_q = np.einsum("gn,gp->np", w, pts) / w.sum(0)[:, None]
    var_q = np.einsum("gn,gnp->np", w, (pts[:, None] - mean_q) ** 2) / w.sum(0)[:, None]
    se = np.sqrt(var_q / q.n_draws)
    assert np.all(np.abs(q.samples.mean(1) - mean_q) < 5 * se + 1e-4)
    np.testing.assert_allclose(q.samples.var(1), var_q, rtol=0.05)
    # the stored draws' densities are the flow's density at the draws
    np.testing.assert_allclose(q.sample_log_prob[:, :50], q.log_prob(np.swapaxes(q.samples[:, :50], 0, 1)).T,
                               rtol=1e-10)


def test_the_jacobian_matches_a_hand_computed_density():
    """Only the first elementwise affine is switched on: z = logit(u) e^a + b, so
    q(theta) = N(z) e^a / (u (1 - u)) / |dtheta/du| with theta = low + (high - low) u or exp(...)."""
    head = ConditionalFlow(2)
    raw = torch.zeros(1, head.n_outputs, dtype=torch.float64)
    a_raw, b = np.array([0.7, -0.4]), np.array([0.3, -0.2])
    raw[0, :2], raw[0, 2:4] = torch.tensor(a_raw), torch.tensor(b)
    a = a_raw / (1 + np.abs(a_raw / math.log(1e-3)))  # zuko's soft bound on the log-scale
    q = FlowPredictive.from_raw(head, raw.numpy()[:, None], BIJ, NAMES, n_samples=4)
    theta = np.array([[0.2, 0.5], [0.45, 3.0], [0.3, 1.0]])
    u = np.stack([(theta[:, 0] - 0.1) / 0.4, np.log(theta[:, 1] / 0.25) / np.log(16.0)], -1)
    z = (np.log(u) - np.log1p(-u)) * np.exp(a) + b
    log_q_u = np.sum(-0.5 * z**2 - 0.5 * np.log(2 * np.pi) + a - np.log(u * (1 - u)), -1)
    dtheta_du = np.log(0.4) + np.log(np.log(16.0) * theta[:, 1])
    np.testing.assert_allclose(q.log_prob(theta[:, None]), (log_q_u - dtheta_du)[:, None], rtol=1e-12)


def test_log_det_jacobian_of_the_whole_flow_matches_autograd():
    head = ConditionalFlow(3, n_layers=2)
    raw = _raw(head, 1, 0.5, seed=4)
    t = head.transform(raw)
    u = torch.tensor([[[0.2, 0.7, 0.45]]], dtype=torch.float64)
    z, ladj = t.call_and_ladj(u)
    jac = torch.autograd.functional.jacobian(lambda x: t(x[None, None])[0, 0], u[0, 0])
    assert torch.allclose(ladj[0, 0], torch.linalg.slogdet(jac)[1], rtol=1e-10)
    assert torch.allclose(t.inv(z), u, atol=1e-12)  # the autoregressive inverse is exact


def test_training_lowers_the_nll_with_the_lightning_trainer():
    """1x1 "maps" x ~ U(0, 1); the target is a curved, x-dependent ridge inside the unit box."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 1200
    x = rng.uniform(size=n)
    y1 = rng.uniform(0.1, 0.9, size=n)
    y2 = np.clip(0.2 + 0.6 * (y1 - 0.5) ** 2 + 0.3 * x + 0.03 * rng.standard_normal(n), 0.01, 0.99)
    y = np.stack([y1, y2], -1)
    lik = build_likelihood("flow", 2, n_layers=2)
    net = Network(nn.Flatten(), nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, lik.n_outputs)))
    with torch.no_grad():
        net.head[-1].weight.mul_(0.1)
    priors = [{"name": f"p{i}", "low": 0.0, "high": 1.0, "distribution": "uniform"} for i in range(2)]
    meta = {"data": {"priors": priors}, "model": {}, "loss": {"name": "flow", "n_layers": 2}}
    module = PosteriorModule(net, lik, meta, {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-2})
    ds = TensorDataset(torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 1, 1),
                       torch.tensor(y, dtype=torch.float32), torch.arange(n))
    xt, yt = ds.tensors[0], ds.tensors[1]
    with torch.no_grad():
        before = lik.nll(net(xt), yt).mean().item()
    pl.Trainer(accelerator="cpu", max_epochs=8, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(
        module, DataLoader(ds, batch_size=100, shuffle=True), DataLoader(ds, batch_size=600))
    net.eval()
    with torch.no_grad():
        after = lik.nll(net(xt), yt).mean().item()
        mean = lik.predict(net(xt[:5]))["mean"]
    # the uniform density on the box has NLL 0; the ridge (sd 0.03) allows about -1.3 nats
    assert np.isfinite(after) and after < before - 0.5 and after < -0.5, (before, after)
    assert mean.shape == (5, 2) and torch.all((mean > 0) & (mean < 1))


# ----------------------------------------------------------------------------------------------
# trained networks through the evaluators
# ----------------------------------------------------------------------------------------------


def train_cfg(root, out, *overrides):
    return tiny_train_cfg(root, out, "data.params=[Omega_m,A_SN1]", "loss=flow", "loss.n_layers=2", *overrides)


def eval_cfg(out, *overrides):
    return evaluate_cfg(out, "flow_samples=400", *overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fdata") / "cmd"
    write_cmd_folder(root, n_sims=12, grid=16, fields=("Mtot",), suite=SUITE)
    return root


@pytest.fixture(scope="module")
def ckpts(data, tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("fckpt")
    torch.set_num_threads(1)
    for seed in (0, 1):
        train(train_cfg(data, base / f"m{seed}", f"seed={seed}"))
    return [base / f"m{seed}" / "checkpoints" / "best.ckpt" for seed in (0, 1)]


def _batches(cfg, predictor):
    dm = build_eval_datamodule(cfg, predictor.models[0].meta["data"])
    return dm, list(dm.split_dataloader("test"))


def test_single_flow_round_trips_through_predictions_h5_and_the_report(ckpts, tmp_path):
    cfg = eval_cfg(tmp_path, "evaluator=single", f"checkpoints=[{ckpts[0]}]")
    p = read_predictions(evaluate(cfg))
    q = p.predictive
    assert isinstance(q, SamplePredictive) and q.kind == "samples" and not p.warnings
    assert q.n == p.n == 30 and q.n_draws == 400 and p.cov is not None
    assert np.all(q.bijection.in_box(q.bijection.inverse(q.samples)))
    np.testing.assert_array_equal(q.bijection.log, [False, True])

    predictor = Predictor([ckpts[0]], seed=int(cfg.seed), flow_samples=400)
    dm, batches = _batches(cfg, predictor)
    post = predictor.predict_batches(batches, target_priors=dm.priors)
    ref = post.predictive
    assert isinstance(ref, FlowPredictive) and ref.n_components == 1
    np.testing.assert_allclose(p.truth, post.truth, rtol=1e-12)
    # the stored log-density at the truth is the predictive's log_prob there (NLL, expected KL exact)
    np.testing.assert_allclose(q.truth_log_prob, ref.log_prob(p.truth), rtol=1e-10)
    np.testing.assert_allclose(q.samples, ref.samples, rtol=1e-12)
    np.testing.assert_allclose(q.sample_log_prob, ref.sample_log_prob, rtol=1e-12)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)  # HPD level of the truth: same either way
    np.testing.assert_array_equal(q.hpd_credibility(p.truth, r1), ref.hpd_credibility(p.truth, r2))
    # one network: the draws' moments, no epistemic spread
    np.testing.assert_allclose(p.mean, q.samples.mean(1), rtol=1e-10)
    np.testing.assert_allclose(p.std, q.samples.std(1), rtol=1e-10)
    assert np.all(p.std_epistemic == 0)

    m = compute_metrics(p, n_bootstrap=10, n_posterior_samples=100, tarp_refs=2)
    np.testing.assert_allclose(m["joint"]["nll"], -np.mean(q.truth_log_prob), rtol=1e-12)
    for name in ("Omega_m", "A_SN1"):
        assert set(m["params"][name]["coverage"]) == {"0.68", "0.95"}
        assert np.isfinite(m["params"][name]["crps"]) and np.isfinite(m["params"][name]["nll"])
    assert np.isfinite(m["joint"]["tarp_atc"]) and m["joint"]["predictive"] == "samples"


def test_an_ensemble_of_flows_is_their_equal_weight_mixture(ckpts, tmp_path):
    cfg = eval_cfg(tmp_path, "evaluator=ensemble", f"checkpoints=[{ckpts[0]},{ckpts[1]}]")
    p = read_predictions(evaluate(cfg))
    assert p.member_mean.shape == (2, p.n, 2) and np.all(p.std_epistemic > 0) and not p.warnings
    np.testing.assert_allclose(p.std**2, p.std_aleatoric**2 + p.std_epistemic**2, rtol=1e-10)

    ens = Predictor(ckpts, flow_samples=400)
    dm, batches = _batches(cfg, ens)
    posts = [pr.predict_batches(batches, target_priors=dm.priors)
             for pr in (ens, Predictor([ckpts[0]]), Predictor([ckpts[1]]))]
    q, q0, q1 = (x.predictive for x in posts)
    assert q.n_components == 2
    rng = np.random.default_rng(0)
    theta = np.concatenate([posts[0].truth[None], q.sample(5, rng)])  # (6, N, P)
    np.testing.assert_allclose(q.log_prob(theta), np.logaddexp(q0.log_prob(theta), q1.log_prob(theta)) - np.log(2),
                               rtol=1e-10)
    np.testing.assert_allclose(p.predictive.truth_log_prob, q.log_prob(posts[0].truth), rtol=1e-10)
    # stratified draws: the first half are member 0's
    np.testing.assert_allclose(p.member_mean[0], q.samples[:, :200].mean(1), rtol=1e-10)


def test_mc_dropout_and_tta_mix_one_flow_per_pass_and_view(ckpts, tmp_path):
    cfg = eval_cfg(tmp_path, "evaluator=mc_dropout", f"checkpoints=[{ckpts[0]}]", "evaluator.n_samples=3")
    p = read_predictions(evaluate(cfg))
    assert p.member_mean.shape == (3, p.n, 2) and np.all(p.std_epistemic > 0) and not p.warnings
    assert p.predictive.n_draws == 402  # ceil(400 / 3) per pass

    tta = Predictor([ckpts[0]], tta=True, flow_samples=400)
    dm, batches = _batches(cfg, tta)
    q = tta.predict_batches(batches, target_priors=dm.priors).predictive
    assert q.n_components == 8
    model = tta.models[0]
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        raw = np.stack([model.network(dihedral(x, k)).numpy() for k in range(8)], axis=1)  # (N, 8, n_out)
    np.testing.assert_allclose(q.raw, raw, rtol=1e-6, atol=1e-7)
    u = BIJ.inverse(q.samples[:, :7])
    jac = BIJ.log_abs_det_jacobian(u).sum(-1)
    lp = np.stack([mixture_log_prob_unit(model.likelihood, raw[:, [k]], u) for k in range(8)])
    np.testing.assert_allclose(q.sample_log_prob[:, :7], logsumexp(lp, axis=0) - np.log(8) - jac, rtol=1e-10)


def test_the_python_api_gives_log_prob_and_draws_inside_the_box(ckpts, data):
    maps = np.load(next(data.glob("Maps_Mtot_*.npy")))[:6]
    post = load_posterior_model(ckpts[0]).predict_maps(maps)
    q = post.predictive
    draws = post.sample(200, np.random.default_rng(1))
    assert draws.shape == (200, 6, 2)
    assert np.all((draws >= [0.1, 0.25]) & (draws <= [0.5, 4.0]))
    lp = q.log_prob(draws[:3])
    assert lp.shape == (3, 6) and np.all(np.isfinite(lp))
    assert np.all(q.log_prob(np.full((6, 2), [0.05, 1.0])) == -np.inf)
    assert np.all(np.isnan(q.truth_log_prob))  # maps without labels: no truth
