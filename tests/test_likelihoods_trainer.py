"""Likelihood heads fitted with the real Lightning Trainer and PosteriorModule on problems with known answers.

The "maps" are 1x1 pixels holding a scalar x ~ U(0, 1), so a small MLP can learn the exact
conditional distribution quickly; everything else (module, optimizer config, Trainer) is the
production path.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cosmoinfer.models.likelihoods import build_likelihood
from cosmoinfer.models.network import Network
from cosmoinfer.training.module import PosteriorModule

N = 4000


def fit(loss_name: str, x: np.ndarray, y: np.ndarray, epochs: int = 40, **loss_kw) -> tuple[Network, object]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    p = y.shape[1]
    lik = build_likelihood(loss_name, n_params=p, **loss_kw)
    net = Network(nn.Flatten(), nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                                              nn.Linear(64, lik.n_outputs)))
    priors = [{"name": f"p{i}", "low": 0.0, "high": 1.0, "distribution": "uniform"} for i in range(p)]
    meta = {"data": {"priors": priors}, "model": {}, "loss": {"name": loss_name, **loss_kw}}
    module = PosteriorModule(net, lik, meta, {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3})
    xt = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 1, 1)
    ds = TensorDataset(xt, torch.tensor(y, dtype=torch.float32), torch.arange(len(x)))
    n_val = len(x) // 10
    train = DataLoader(torch.utils.data.Subset(ds, range(n_val, len(x))), batch_size=200, shuffle=True)
    val = DataLoader(torch.utils.data.Subset(ds, range(n_val)), batch_size=1000)
    pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(module, train, val)
    net.eval()
    return net, lik


def test_gaussian_nll_recovers_a_known_heteroscedastic_noise_level():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=N)
    sigma = 0.02 + 0.08 * x
    y = (0.2 + 0.5 * x + sigma * rng.standard_normal(N))[:, None]
    net, lik = fit("gaussian_nll", x, y)
    grid = torch.linspace(0.1, 0.9, 9).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        pred = lik.predict(net(grid))
    std = pred["var"].sqrt()[:, 0].numpy()
    truth = 0.02 + 0.08 * grid.flatten().numpy()
    # a sigma estimated from ~N/9 points per bin has relative error ~ 1/sqrt(2 N/9) ~ 3.4%; allow for the fit
    np.testing.assert_allclose(std, truth, rtol=0.2)
    np.testing.assert_allclose(pred["mean"][:, 0].numpy(), 0.2 + 0.5 * grid.flatten().numpy(), atol=0.02)


def test_gaussian_fullcov_recovers_a_known_correlation():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=N)
    rho, s1, s2 = 0.8, 0.05, 0.08
    cov = np.array([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]])
    y = np.stack([0.3 + 0.3 * x, 0.6 - 0.2 * x], axis=1) + rng.multivariate_normal([0, 0], cov, size=N)
    net, lik = fit("gaussian_fullcov", x, y)
    with torch.no_grad():
        c = lik.predict(net(torch.full((1, 1, 1, 1), 0.5)))["cov"][0].numpy()
    r = c[0, 1] / np.sqrt(c[0, 0] * c[1, 1])
    # the sampling error of a correlation is (1 - rho^2) / sqrt(N) ~ 0.006
    assert abs(r - rho) < 0.06, r
    np.testing.assert_allclose(np.sqrt(np.diag(c)), [s1, s2], rtol=0.15)


def test_mdn_fits_a_bimodal_target():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=N)
    mode = rng.integers(0, 2, size=N)
    y = (np.where(mode == 0, 0.25, 0.75) + 0.04 * rng.standard_normal(N))[:, None]
    net, lik = fit("mdn", x, y, n_components=2, covariance="diag")
    with torch.no_grad():
        pred = lik.predict(net(torch.full((1, 1, 1, 1), 0.5)))
    w = pred["weights"][0].numpy()
    means = pred["means"][0, :, 0].numpy()
    order = np.argsort(means)
    np.testing.assert_allclose(means[order], [0.25, 0.75], atol=0.05)
    np.testing.assert_allclose(w[order], [0.5, 0.5], atol=0.1)
    # the mixture mean sits between the modes, where no single Gaussian would put its density
    assert abs(float(pred["mean"][0, 0]) - 0.5) < 0.05
