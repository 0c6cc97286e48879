"""Bayesian head (``model.bayesian_head=true``): the KL, the ELBO, and ``evaluator=bnn``.

Tiny networks (grid 16, ``model.hidden=4``) trained in-process with the real Lightning Trainer.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmoinfer.calibration.metrics import compute_metrics
from cosmoinfer.errors import InputError
from cosmoinfer.models.bayesian import BayesLinear, gaussian_kl
from cosmoinfer.models.network import build_network
from cosmoinfer.posterior import read_predictions
from cosmoinfer.training.checkpoint import load_checkpoint
from cosmoinfer.training.module import PosteriorModule
from cosmoinfer.training.run import build_datamodule, build_module, build_trainer, train
from cosmoinfer.uncertainty.evaluate import evaluate

from .conftest import evaluate_cfg, tiny_train_cfg, write_cmd_folder

warnings.filterwarnings("ignore", message=".*inferring one.*")

SUITE = "TestSuite"
T = 5
BAYES = ["model.bayesian_head=true", "model.bayes_init_std=0.05", "model.dropout=0"]


def train_cfg(root, out, *overrides):
    return tiny_train_cfg(root, out, *overrides)


def eval_cfg(out, *overrides):
    return evaluate_cfg(out, *overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bnn_data") / "cmd"
    write_cmd_folder(root, n_sims=10, grid=16, fields=("Mtot",), suite=SUITE)
    return root


@pytest.fixture(scope="module")
def ckpts(data, tmp_path_factory) -> dict[str, Path]:
    """``bnn``: a Bayesian gaussian_nll head; ``plain``: the default head; ``flow``: a Bayesian flow head."""
    base = tmp_path_factory.mktemp("bnn_ckpt")
    torch.set_num_threads(1)
    out = {}
    for name, over in (("bnn", BAYES), ("plain", []), ("flow", [*BAYES, "loss=flow"])):
        train(train_cfg(data, base / name, "seed=0", *over))
        out[name] = base / name / "checkpoints" / "best.ckpt"
    return out


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    layer = BayesLinear(6, 3, prior_std=0.7, init_std=0.3)
    with torch.no_grad():
        layer.weight.normal_(0, 0.5)
        layer.bias.normal_(0, 0.5)
        layer.weight_rho.normal_(-1.0, 0.3)
    mu, s, p = layer.weight.detach().double(), layer.weight_std.detach().double(), 0.7
    b_mu, b_s = layer.bias.detach().double(), layer.bias_std.detach().double()
    w = mu + s * torch.randn((200_000,) + tuple(mu.shape), dtype=torch.float64)
    log_q = (-0.5 * ((w - mu) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum((1, 2))
    log_p = (-0.5 * (w / p) ** 2 - math.log(p) - 0.5 * math.log(2 * math.pi)).sum((1, 2))
    mc = (log_q - log_p)
    exact = float(gaussian_kl(mu, s, p))
    assert abs(float(mc.mean()) - exact) < 4 * float(mc.std()) / math.sqrt(len(mc))
    # the layer's KL is the weights' plus the biases'
    expected = exact + float(gaussian_kl(b_mu, b_s, p))
    assert float(layer.kl().detach()) == pytest.approx(expected, rel=1e-5)


def test_plain_and_bayesian_heads_share_weight_names():
    """The means are ``weight``/``bias`` (an ``nn.Linear``); a plain head has no ``rho``: old checkpoints load."""
    plain = build_network("cmd_cnn", 1, 16, 4, hidden=4)
    bayes = build_network("cmd_cnn", 1, 16, 4, hidden=4, bayesian_head=True)
    assert not plain.is_bayesian and bayes.is_bayesian and float(plain.kl()) == 0
    extra = set(bayes.state_dict()) - set(plain.state_dict())
    assert extra and all(k.endswith("_rho") for k in extra)
    assert "bayesian_head" not in plain.hparams


def test_elbo_kl_weight_is_one_over_training_maps_and_training_lowers_the_loss(data, tmp_path):
    torch.set_num_threads(1)
    cfg = train_cfg(data, tmp_path, "seed=0", "trainer.max_epochs=4", "optimizer.lr=3e-3", *BAYES)
    dm = build_datamodule(cfg, None)
    dm.setup("fit")
    module = build_module(cfg, dm)
    assert isinstance(module, PosteriorModule) and module.bayesian
    losses: list[float] = []
    orig = module.training_step

    def step(batch, batch_idx):
        state = torch.get_rng_state()
        loss = orig(batch, batch_idx)
        torch.set_rng_state(state)  # the same weight draw (local reparameterisation noise) again
        x, y, _ = batch
        with torch.no_grad():
            nll = module.likelihood.loss(module.network(x), y)
            kl = module.network.kl()
        assert module.kl_weight() == 1.0 / len(dm.datasets["train"]) == 1.0 / (6 * 15)  # 6 training sims
        assert float(kl) > 0
        assert float(loss) == pytest.approx(float(nll + kl / (6 * 15)), rel=1e-5)
        losses.append(float(loss.detach()))
        return loss

    module.training_step = step
    trainer = build_trainer(cfg, tmp_path)
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    assert "train/nll_epoch" in logged and "train/kl" in logged
    per_epoch = len(losses) // 4  # negative ELBO per map, first epoch against last
    assert np.mean(losses[-per_epoch:]) < np.mean(losses[:per_epoch])


def _predictions(ckpt, out, *over):
    return read_predictions(evaluate(eval_cfg(out, "evaluator=bnn", f"checkpoints={ckpt}", f"evaluator.n_samples={T}",
                                              *over)))


def test_bnn_evaluator_splits_epistemic_and_does_not_depend_on_batch_size(ckpts, tmp_path):
    a = _predictions(ckpts["bnn"], tmp_path / "a", "data.eval_batch_size=7")
    b = _predictions(ckpts["bnn"], tmp_path / "b", "data.eval_batch_size=64")
    assert a.method == "bnn" and a.n_samples == T and a.n_members == 1
    assert a.member_mean.shape == (T, a.n, 2)
    assert np.all(a.std_epistemic > 0)
    np.testing.assert_allclose(a.std**2, a.std_aleatoric**2 + a.std_epistemic**2, rtol=1e-8)
    for k in ("mean", "std", "std_aleatoric", "std_epistemic", "member_mean", "member_std"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-5, atol=1e-7, err_msg=k)
    m = compute_metrics(a, rng=np.random.default_rng(0), n_posterior_samples=50, n_bootstrap=10, n_hpd_samples=100)
    assert m["method"] == "bnn" and np.isfinite(m["params"]["Omega_m"]["rmse"])
    # a deterministic evaluator uses the weight means: no epistemic spread
    s = read_predictions(evaluate(eval_cfg(tmp_path / "s", "evaluator=single", f"checkpoints={ckpts['bnn']}")))
    assert np.all(s.std_epistemic == 0)


def test_bnn_evaluator_with_a_flow_head(ckpts, tmp_path):
    p = _predictions(ckpts["flow"], tmp_path, "flow_samples=100")
    assert p.method == "bnn" and p.member_mean.shape == (T, p.n, 2)
    assert np.all(p.std_epistemic > 0) and np.all(np.isfinite(p.std))


def test_bnn_evaluator_refuses_a_plain_checkpoint(ckpts, tmp_path):
    assert not load_checkpoint(ckpts["plain"]).network.is_bayesian
    with pytest.raises(InputError, match="model.bayesian_head=true") as err:
        evaluate(eval_cfg(tmp_path, "evaluator=bnn", f"checkpoints={ckpts['plain']}"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "predictions.h5").exists()


def test_runs_from_before_the_bayesian_head_still_resume():
    """A stored model config without the ``bayes_*`` keys means a plain head, not a difference."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from cosmoinfer.training.resume import check_resume_config

    cfg = OmegaConf.create({"seed": 0, "data": {}})
    dm = SimpleNamespace(fields=["Mtot"], param_names=["Omega_m"], suite="S", set="LH")
    old = {"arch": "cmd_cnn", "hidden": 4}
    now = {**old, "bayesian_head": False, "bayes_prior_std": 1.0, "bayes_init_std": 1e-3}
    check_resume_config(cfg, {"model": now}, dm, {"model": old}, Path("last.ckpt"))
    with pytest.raises(InputError, match="model.bayesian_head"):
        check_resume_config(cfg, {"model": {**now, "bayesian_head": True}}, dm, {"model": old}, Path("last.ckpt"))
