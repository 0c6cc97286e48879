"""Likelihood heads: closed-form NLLs, shapes, sampling, and real fits on tiny synthetic problems."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg, stats
from scipy.special import logsumexp

from cosmoinfer.errors import InputError
from cosmoinfer.models.likelihoods import LIKELIHOODS, build_likelihood

torch.set_num_threads(1)

ALL = [
    ("gaussian_nll", {}),
    ("gaussian_nll", {"parameterisation": "log_var"}),
    ("mse", {}),
    ("moment", {}),
    ("moment", {"sigma_transform": "abs"}),
    ("moment", {"sigma_transform": "square"}),
    ("gaussian_fullcov", {}),
    ("mdn", {"n_components": 3}),
    ("mdn", {"n_components": 2, "covariance": "diag"}),
    ("bernoulli", {}),
    ("flow", {"n_layers": 2}),
]


def _softplus(x):
    return np.logaddexp(0.0, x)


def _targets(name: str, b: int, p: int, g: torch.Generator) -> torch.Tensor:
    if name == "bernoulli":
        return (torch.rand(b, 1, generator=g, dtype=torch.float64) < 0.5).double()
    return torch.rand(b, p, generator=g, dtype=torch.float64)


def _mlp(n_in: int, n_out: int, width: int = 32) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(n_in, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, n_out))


def _fit(model, lik, x, y, steps: int, lr: float = 0.01) -> list[float]:
    """Full-batch Adam; the learning rate drops 10x for the last 30% of steps (to settle at the optimum)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.7 * steps)], gamma=0.1)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = lik.loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


# ---------------------------------------------------------------------------------------------
# contract: shapes, attributes, factory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", ALL)
def test_shapes_and_attributes(name, kw):
    p = 1 if name == "bernoulli" else 3
    lik = build_likelihood(name, p, **kw)
    assert lik.n_params == p
    assert sum(t.numel() for t in lik.parameters()) == 0
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(5, lik.n_outputs, generator=g, dtype=torch.float64)
    y = _targets(name, 5, p, g)
    assert lik.loss(raw, y).shape == ()
    assert lik.nll(raw, y).shape == (5,)
    pred = lik.predict(raw)
    assert pred["mean"].shape == (5, p) and pred["var"].shape == (5, p)
    assert torch.all(pred["var"] >= 0)
    if lik.has_cov:
        assert pred["cov"].shape == (5, p, p)
        torch.testing.assert_close(torch.diagonal(pred["cov"], dim1=-2, dim2=-1), pred["var"])
    if name == "mdn":
        k = kw["n_components"]
        assert pred["weights"].shape == (5, k) and pred["means"].shape == (5, k, p)
        assert pred["covs"].shape == (5, k, p, p)
    assert lik.sample(raw, 7, generator=g).shape == (7, 5, p)
    assert lik.has_width == (name not in ("mse", "bernoulli"))
    assert lik.has_cov == (name in ("gaussian_fullcov", "mdn", "flow"))
    assert lik.task == ("classification" if name == "bernoulli" else "regression")


@pytest.mark.parametrize("name,kw", ALL)
def test_half_precision_outputs_are_scored_in_float32(name, kw):
    p = 1 if name == "bernoulli" else 2
    lik = build_likelihood(name, p, **kw)
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(8, lik.n_outputs, generator=g).bfloat16()
    y = _targets(name, 8, p, g).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, nll, pred = lik.loss(raw, y), lik.nll(raw, y), lik.predict(raw)
    assert loss.dtype == nll.dtype == pred["mean"].dtype == torch.float32
    torch.testing.assert_close(loss, lik.loss(raw.float(), y))
    torch.testing.assert_close(pred["var"], lik.predict(raw.float())["var"])


def test_n_outputs():
    p = 4
    assert build_likelihood("gaussian_nll", p).n_outputs == 8
    assert build_likelihood("mse", p).n_outputs == 4
    assert build_likelihood("moment", p).n_outputs == 8
    assert build_likelihood("gaussian_fullcov", p).n_outputs == 4 + 10
    assert build_likelihood("mdn", p, n_components=3).n_outputs == 3 + 12 + 30
    assert build_likelihood("mdn", p, n_components=3, covariance="diag").n_outputs == 3 + 12 + 12
    assert build_likelihood("bernoulli", 1).n_outputs == 1


def test_factory_errors():
    assert set(LIKELIHOODS) == {"gaussian_nll", "mse", "moment", "gaussian_fullcov", "mdn", "bernoulli",
                                "flow"}
    with pytest.raises(InputError, match="unknown likelihood"):
        build_likelihood("gauss", 2)
    with pytest.raises(InputError, match="min_sdt"):
        build_likelihood("gaussian_nll", 2, min_sdt=0.1)
    with pytest.raises(InputError, match="n_params must be 1"):
        build_likelihood("bernoulli", 2)
    with pytest.raises(InputError):
        build_likelihood("mdn", 2, covariance="spherical")


def test_wrong_raw_shape_is_an_error():
    lik = build_likelihood("gaussian_nll", 2)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        lik.loss(torch.zeros(3, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="targets"):  # no silent broadcasting of (B,) against (B, P)
        build_likelihood("gaussian_nll", 1).loss(torch.zeros(3, 2), torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# NLLs against closed forms (scipy), float64, 1e-5
# ---------------------------------------------------------------------------------------------


def _raw_y(n_out: int, p: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(6, n_out))
    y = rng.uniform(size=(6, p))
    return raw, y, torch.tensor(raw), torch.tensor(y)


def _tril(flat: np.ndarray, p: int, min_std: float) -> np.ndarray:
    L = np.zeros((p, p))
    r, c = np.tril_indices(p)
    L[r, c] = flat
    L[np.diag_indices(p)] = _softplus(np.diag(L)) + min_std
    return L


def test_gaussian_nll_closed_form():
    p = 3
    lik = build_likelihood("gaussian_nll", p, min_std=0.01)
    raw, y, rt, yt = _raw_y(2 * p, p)
    sigma = _softplus(raw[:, p:]) + 0.01
    ref = -stats.norm.logpdf(y, raw[:, :p], sigma).sum(1)
    np.testing.assert_allclose(lik.nll(rt, yt).numpy(), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(float(lik.loss(rt, yt)), ref.mean(), atol=1e-5)

    lv = build_likelihood("gaussian_nll", p, parameterisation="log_var", min_std=0.01, log_var_max=4.0)
    raw[0, p] = 30.0  # clamped at log_var_max
    raw[1, p] = -30.0  # clamped at 2 ln(min_std)
    rt = torch.tensor(raw)
    log_var = np.clip(raw[:, p:], 2 * math.log(0.01), 4.0)
    ref = -stats.norm.logpdf(y, raw[:, :p], np.exp(0.5 * log_var)).sum(1)
    np.testing.assert_allclose(lv.nll(rt, yt).numpy(), ref, rtol=0, atol=1e-5)


def test_beta_nll_weights_terms_by_stopped_variance():
    p = 2
    raw, y, rt, yt = _raw_y(2 * p, p)
    lik = build_likelihood("gaussian_nll", p, beta=0.5)
    sigma = _softplus(raw[:, p:]) + 1e-3
    per = -stats.norm.logpdf(y, raw[:, :p], sigma)
    np.testing.assert_allclose(float(lik.loss(rt, yt)), (sigma * per).sum(1).mean(), atol=1e-6)
    np.testing.assert_allclose(lik.nll(rt, yt).numpy(), per.sum(1), atol=1e-6)  # nll stays the true NLL
    # the gradient on the mean is the plain NLL's, times sigma^(2 beta) = sigma: (mu - y) / sigma
    r = rt.clone().requires_grad_(True)
    lik.loss(r, yt).backward()
    np.testing.assert_allclose(r.grad[:, :p].numpy(), (raw[:, :p] - y) / sigma / len(raw), atol=1e-6)


def _grad(lik, raw: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    r = raw.clone().requires_grad_(True)
    lik.loss(r, y).backward()
    return r.grad.numpy()


def test_fullcov_beta_preconditions_the_mean_gradient_by_the_covariance_power():
    p = 3
    raw, y, rt, yt = _raw_y(p + p * (p + 1) // 2, p)
    covs = [(lambda L: L @ L.T)(_tril(raw[i, p:], p, 1e-3)) for i in range(len(raw))]
    plain = build_likelihood("gaussian_fullcov", p)
    # beta = 0 is the plain NLL, value and gradient
    same = build_likelihood("gaussian_fullcov", p, beta=0.0)
    np.testing.assert_allclose(_grad(same, rt, yt), _grad(plain, rt, yt), atol=1e-10)
    for beta in (0.5, 1.0):
        lik = build_likelihood("gaussian_fullcov", p, beta=beta)
        g = _grad(lik, rt, yt)
        for i, c in enumerate(covs):  # mean gradient: -C^(beta - 1) (y - mu) / N, by scipy's matrix power
            want = -np.real(linalg.fractional_matrix_power(c, beta - 1.0)) @ (y[i] - raw[i, :p]) / len(raw)
            np.testing.assert_allclose(g[i, :p], want, atol=1e-8)
        # the covariance's gradient is the NLL's at the mean held fixed, times det(C)^(beta / P)
        g_plain = _grad(plain, rt, yt)
        w = np.array([np.linalg.det(c) ** (beta / p) for c in covs])
        np.testing.assert_allclose(g[:, p:], w[:, None] * g_plain[:, p:], atol=1e-8)
        np.testing.assert_allclose(lik.nll(rt, yt).numpy(), plain.nll(rt, yt).numpy())  # nll stays the NLL
    with pytest.raises(InputError, match="loss.beta must be in"):
        build_likelihood("gaussian_fullcov", p, beta=1.5)


def test_fullcov_beta_matches_the_diagonal_beta_nll_on_the_mean_when_the_covariance_is_diagonal():
    p = 2
    raw, y, rt, yt = _raw_y(2 * p, p)
    diag = build_likelihood("gaussian_nll", p, beta=0.5)
    full_raw = np.concatenate([raw[:, :p], np.zeros((len(raw), 3))], axis=1)
    full_raw[:, p], full_raw[:, p + 2] = raw[:, p], raw[:, p + 1]  # L = diag(sigma): tril order (0,0),(1,0),(1,1)
    full = build_likelihood("gaussian_fullcov", p, beta=0.5)
    np.testing.assert_allclose(_grad(full, torch.tensor(full_raw), yt)[:, :p], _grad(diag, rt, yt)[:, :p], atol=1e-8)


def test_mse_and_moment_closed_form():
    p = 2
    raw, y, rt, yt = _raw_y(2 * p, p)
    mse = build_likelihood("mse", p)
    ref = -stats.norm.logpdf(y, raw[:, :p], 1.0).sum(1)
    np.testing.assert_allclose(mse.nll(rt[:, :p], yt).numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(float(mse.loss(rt[:, :p], yt)), 0.5 * ((raw[:, :p] - y) ** 2).sum(1).mean(), atol=1e-6)
    np.testing.assert_allclose(mse.predict(rt[:, :p])["var"].numpy(), 1.0)

    for transform, fn in (("softplus", _softplus), ("abs", np.abs), ("square", np.square)):
        mom = build_likelihood("moment", p, sigma_transform=transform, min_std=1e-3)
        sigma = fn(raw[:, p:]) + 1e-3
        ref = -stats.norm.logpdf(y, raw[:, :p], sigma).sum(1)
        np.testing.assert_allclose(mom.nll(rt, yt).numpy(), ref, atol=1e-5)
        sq = (raw[:, :p] - y) ** 2
        ref_loss = np.sum(np.log(sq.mean(0) + 1e-12) + np.log(((sq - sigma**2) ** 2).mean(0) + 1e-12))
        np.testing.assert_allclose(float(mom.loss(rt, yt)), ref_loss, atol=1e-5)
        np.testing.assert_allclose(mom.predict(rt)["var"].numpy(), sigma**2, atol=1e-10)


def test_fullcov_closed_form():
    p = 3
    lik = build_likelihood("gaussian_fullcov", p, min_std=0.05)
    raw, y, rt, yt = _raw_y(p + 6, p)
    ref, covs = [], []
    for i in range(len(raw)):
        L = _tril(raw[i, p:], p, 0.05)
        covs.append(L @ L.T)
        ref.append(-stats.multivariate_normal.logpdf(y[i], raw[i, :p], L @ L.T))
    np.testing.assert_allclose(lik.nll(rt, yt).numpy(), ref, atol=1e-5)
    pred = lik.predict(rt)
    np.testing.assert_allclose(pred["cov"].numpy(), np.stack(covs), atol=1e-10)
    # agrees with torch.distributions too
    mvn = torch.distributions.MultivariateNormal(rt[:, :p], scale_tril=pred["scale_tril"])
    torch.testing.assert_close(lik.nll(rt, yt), -mvn.log_prob(yt))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_mdn_closed_form(covariance):
    p, k = 2, 3
    lik = build_likelihood("mdn", p, n_components=k, covariance=covariance, min_std=0.02)
    raw, y, rt, yt = _raw_y(lik.n_outputs, p)
    t = 3 if covariance == "full" else p
    ref, means_ref, covs_ref = [], [], []
    for i in range(len(raw)):
        logits = raw[i, :k]
        log_w = logits - logsumexp(logits)
        means = raw[i, k: k + k * p].reshape(k, p)
        scale = raw[i, k + k * p:].reshape(k, t)
        covs = []
        for j in range(k):
            L = _tril(scale[j], p, 0.02) if covariance == "full" else np.diag(_softplus(scale[j]) + 0.02)
            covs.append(L @ L.T)
        comp = [log_w[j] + stats.multivariate_normal.logpdf(y[i], means[j], covs[j]) for j in range(k)]
        ref.append(-logsumexp(comp))
        w = np.exp(log_w)
        m = w @ means
        means_ref.append(m)
        covs_ref.append(sum(w[j] * (covs[j] + np.outer(means[j], means[j])) for j in range(k)) - np.outer(m, m))
    np.testing.assert_allclose(lik.nll(rt, yt).numpy(), ref, atol=1e-5)
    pred = lik.predict(rt)
    np.testing.assert_allclose(pred["mean"].numpy(), np.stack(means_ref), atol=1e-10)
    np.testing.assert_allclose(pred["cov"].numpy(), np.stack(covs_ref), atol=1e-10)
    np.testing.assert_allclose(pred["weights"].sum(-1).numpy(), 1.0, atol=1e-12)


def test_bernoulli_closed_form():
    lik = build_likelihood("bernoulli", 1)
    rng = np.random.default_rng(3)
    logit = rng.normal(scale=3, size=(8, 1))
    y = (rng.uniform(size=(8, 1)) < 0.5).astype(float)
    p = 1 / (1 + np.exp(-logit))
    ref = -stats.bernoulli.logpmf(y, p).sum(1)
    np.testing.assert_allclose(lik.nll(torch.tensor(logit), torch.tensor(y)).numpy(), ref, atol=1e-5)
    pred = lik.predict(torch.tensor(logit))
    np.testing.assert_allclose(pred["mean"].numpy(), p, atol=1e-12)
    np.testing.assert_allclose(pred["var"].numpy(), p * (1 - p), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# sampling agrees with predict
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", [("gaussian_nll", {}), ("gaussian_fullcov", {}), ("mdn", {"n_components": 3}),
                                     ("bernoulli", {})])
def test_samples_match_predicted_moments(name, kw):
    p = 1 if name == "bernoulli" else 2
    lik = build_likelihood(name, p, **kw)
    g = torch.Generator().manual_seed(5)
    raw = torch.randn(3, lik.n_outputs, generator=g, dtype=torch.float64)
    pred = lik.predict(raw)
    n = 20000
    s = lik.sample(raw, n, generator=g)
    std = pred["var"].sqrt()
    # sample mean within 5 standard errors; sample variance within 5 standard errors (~ var sqrt(2/n), x2 slack
    # for the heavier tails of mixtures)
    assert torch.all((s.mean(0) - pred["mean"]).abs() < 5 * std / math.sqrt(n))
    assert torch.all((s.var(0) - pred["var"]).abs() < 10 * pred["var"] * math.sqrt(2 / n) + 1e-12)
    if lik.has_cov:
        emp = torch.einsum("nbi,nbj->bij", s - s.mean(0), s - s.mean(0)) / (n - 1)
        torch.testing.assert_close(emp, pred["cov"], atol=float(10 * pred["var"].max() * math.sqrt(2 / n)), rtol=0)
    # the generator makes sampling reproducible
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.testing.assert_close(lik.sample(raw, 4, generator=g1), lik.sample(raw, 4, generator=g2))


# ---------------------------------------------------------------------------------------------
# real optimisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", ALL)
def test_loss_decreases_on_learnable_problem(name, kw):
    torch.manual_seed(0)
    n, p = 256, 2
    x = torch.rand(n, 2)
    if name == "bernoulli":
        p = 1
        y = (x[:, :1] + x[:, 1:] > 1.0).float()
    else:
        y = torch.stack([0.2 + 0.6 * x[:, 0], 0.5 + 0.3 * (x[:, 1] - x[:, 0])], 1) + 0.05 * torch.randn(n, 2)
    lik = build_likelihood(name, p, **kw)
    model = _mlp(2, lik.n_outputs, 16)
    losses = _fit(model, lik, x, y, steps=150, lr=0.01)
    assert np.isfinite(losses).all()
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first - max(0.1 * abs(first), 0.01), (first, last)


@pytest.mark.parametrize("kw", [{}, {"parameterisation": "log_var"}, {"beta": 0.5}])
def test_gaussian_nll_recovers_heteroscedastic_noise(kw):
    """y = x + sigma(x) eps with sigma(x) = 0.05 + 0.1 x: the fitted sigma matches, per bin of x."""
    torch.manual_seed(1)
    n = 4000
    x = torch.rand(n, 1)
    true_sigma = lambda t: 0.05 + 0.1 * t  # noqa: E731
    y = x + true_sigma(x) * torch.randn(n, 1)
    lik = build_likelihood("gaussian_nll", 1, **kw)
    model = _mlp(1, 2, 32)
    _fit(model, lik, x, y, steps=800, lr=0.01)
    with torch.no_grad():
        grid = torch.linspace(0.05, 0.95, 10).unsqueeze(1)
        pred = lik.predict(model(grid))
    # a local sigma estimate from the ~n/10 points nearby has relative standard error 1/sqrt(2 n/10);
    # allow 4 of those (the MLP smooths over neighbouring bins, so this is conservative)
    rel_se = 1 / math.sqrt(2 * n / 10)
    rel_err = (pred["std"] / true_sigma(grid) - 1).abs()
    assert float(rel_err.max()) < 4 * rel_se, rel_err.squeeze().tolist()
    assert float((pred["mean"] - grid).abs().max()) < 4 * float(true_sigma(grid).max()) / math.sqrt(n / 10)
    # the slope of sigma(x) is learnt: sigma(0.95) - sigma(0.05) = 0.09
    assert abs(float(pred["std"][-1] - pred["std"][0]) - 0.09) < 0.02


def test_gaussian_fullcov_recovers_correlation():
    """Residuals with correlation 0.8: the fit reaches the exact MLE, which lies within 4 standard errors."""
    torch.manual_seed(2)
    n, rho, s1, s2 = 3000, 0.8, 0.05, 0.1
    x = torch.rand(n, 1)
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]])
    eps = torch.randn(n, 2) @ torch.linalg.cholesky(cov).T
    y = torch.cat([0.2 + 0.5 * x, 0.7 - 0.4 * x], 1) + eps
    lik = build_likelihood("gaussian_fullcov", 2)
    model = torch.nn.Linear(1, lik.n_outputs)  # mean linear in x, constant covariance: well specified
    _fit(model, lik, x, y, steps=600, lr=0.05)
    with torch.no_grad():
        c = lik.predict(model(torch.tensor([[0.5]])))["cov"][0].double()
    # exact MLE: least-squares mean, covariance of its residuals
    design = torch.cat([torch.ones(n, 1), x], 1).double()
    res = y.double() - design @ torch.linalg.lstsq(design, y.double()).solution
    mle = res.T @ res / n
    corr = lambda m: float(m[0, 1] / torch.sqrt(m[0, 0] * m[1, 1]))  # noqa: E731
    se = (1 - rho**2) / math.sqrt(n)  # standard error of a correlation estimate
    assert abs(corr(c) - corr(mle)) < 0.5 * se, (corr(c), corr(mle))  # optimisation converged
    torch.testing.assert_close(c, mle, rtol=0.02, atol=0)
    assert abs(corr(c) - rho) < 4 * se, corr(c)  # statistics
    assert abs(math.sqrt(float(c[0, 0])) / s1 - 1) < 4 / math.sqrt(2 * n)
    assert abs(math.sqrt(float(c[1, 1])) / s2 - 1) < 4 / math.sqrt(2 * n)


def test_mdn_fits_bimodal_target():
    """y = 0.25 or 0.75 (prob 1/2 each) + 0.05 noise: two components, weights ~1/2, means at the modes."""
    torch.manual_seed(3)
    n = 2000
    x = torch.rand(n, 1)
    mode = (torch.rand(n, 1) < 0.5).float()
    y = 0.25 + 0.5 * mode + 0.05 * torch.randn(n, 1)
    lik = build_likelihood("mdn", 1, n_components=2)
    model = _mlp(1, lik.n_outputs, 16)
    _fit(model, lik, x, y, steps=600, lr=0.01)
    with torch.no_grad():
        pred = lik.predict(model(torch.tensor([[0.3], [0.7]])))
    frac = float(mode.mean())
    for i in range(2):
        order = torch.argsort(pred["means"][i, :, 0])
        w, mu = pred["weights"][i, order], pred["means"][i, order, 0]
        sd = pred["covs"][i, order, 0, 0].sqrt()
        assert abs(float(w[1]) - frac) < 4 * math.sqrt(0.25 / n) + 0.03, w.tolist()
        assert abs(float(mu[0]) - 0.25) < 0.02 and abs(float(mu[1]) - 0.75) < 0.02, mu.tolist()
        assert torch.all((sd / 0.05 - 1).abs() < 0.15), sd.tolist()
        # law of total variance: 0.25^2 + 0.05^2 for equal weights
        assert abs(float(pred["var"][i, 0]) - (0.25**2 + 0.05**2)) < 0.006


def test_moment_network_learns_the_noise_level():
    torch.manual_seed(4)
    n = 2000
    x = torch.rand(n, 1)
    y = 0.3 + 0.4 * x + 0.08 * torch.randn(n, 1)
    lik = build_likelihood("moment", 1)
    model = _mlp(1, 2, 16)
    _fit(model, lik, x, y, steps=600, lr=0.01)
    with torch.no_grad():
        pred = lik.predict(model(torch.linspace(0.1, 0.9, 5).unsqueeze(1)))
    assert torch.all((pred["std"] / 0.08 - 1).abs() < 0.15), pred["std"].squeeze().tolist()


def test_bernoulli_separable_and_calibrated():
    torch.manual_seed(5)
    n = 2000
    lik = build_likelihood("bernoulli", 1)
    # separable: a linear boundary is learnt almost perfectly
    x = torch.randn(n, 2)
    y = (x[:, :1] - 0.5 * x[:, 1:] > 0).float()
    model = torch.nn.Linear(2, 1)
    _fit(model, lik, x, y, steps=300, lr=0.1)
    with torch.no_grad():
        acc = float(((lik.predict(model(x))["mean"] > 0.5).float() == y).float().mean())
    assert acc > 0.98
    # calibrated: labels drawn from a logistic model; the fitted probabilities match the truth and
    # binned empirical frequencies
    w_true = torch.tensor([[2.0], [-1.0]])
    p_true = torch.sigmoid(x @ w_true)
    y = (torch.rand(n, 1) < p_true).float()
    model = torch.nn.Linear(2, 1)
    _fit(model, lik, x, y, steps=300, lr=0.1)
    with torch.no_grad():
        p_hat = lik.predict(model(x))["mean"]
    assert float((p_hat - p_true).abs().mean()) < 0.03
    bins = torch.clamp((p_hat * 5).long(), max=4).squeeze(1)
    for b in range(5):
        sel = bins == b
        m = int(sel.sum())
        if m < 50:
            continue
        freq, conf = float(y[sel].mean()), float(p_hat[sel].mean())
        assert abs(freq - conf) < 4 * math.sqrt(max(conf * (1 - conf), 0.01) / m), (b, freq, conf)
