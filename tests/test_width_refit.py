"""The width refit (callbacks=refit_widths): exact on a known model, and with a real Trainer."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from cosmoinfer.errors import InputError
from cosmoinfer.models.likelihoods import build_likelihood
from cosmoinfer.training.checkpoint import load_checkpoint
from cosmoinfer.training.run import build_datamodule, train
from cosmoinfer.training.width_refit import check_refittable, fit_width_rows, head_inputs

from .test_training import cfg_for, data32  # noqa: F401  (the module-scoped data fixture)

warnings.filterwarnings("ignore", message=".*inferring one.*")


def _known_model(n: int, seed: int = 0):
    """Features ``h (n, 3)``; true mean ``h @ A + a``, true std ``softplus(h @ B + c) + min_std``."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.4, -0.1],      # mean rows (P = 2)
                      [0.6, -0.4, 0.2], [-0.3, 0.5, 0.1]], dtype=torch.float64)  # width rows
    b = torch.tensor([0.1, -0.2, -1.5, -1.0], dtype=torch.float64)
    lik = build_likelihood("gaussian_nll", n_params=2)
    mu, sd = lik._mean_std(h @ w.T + b)
    y = mu + sd * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return h, y, w, b, lik


def test_fit_width_rows_recovers_the_true_widths_and_leaves_the_means():
    n = 40_000
    h, y, w, b, lik = _known_model(n)
    wrong_w, wrong_b = w.clone(), b.clone()
    wrong_w[2:] *= 0.5
    wrong_b[2:] += 0.7  # about twice too wide
    new_w, new_b, before, after = fit_width_rows(h, y, wrong_w, wrong_b, lik)
    assert torch.equal(new_w[:2], w[:2]) and torch.equal(new_b[:2], b[:2])
    assert after < before
    true_sd = lik._mean_std(h @ w.T + b)[1]
    fit_sd = lik._mean_std(h @ new_w.T + new_b)[1]
    # maximum likelihood on n maps with 4 width parameters per output: relative errors ~ a few / sqrt(n)
    rel = (fit_sd / true_sd - 1).abs()
    assert float(rel.median()) < 5 / n**0.5
    assert float(rel.max()) < 30 / n**0.5
    # the NLL at the fit is no worse than at the truth (it is the minimiser on these maps)
    true_nll = float(lik.nll(h @ w.T + b, y).mean())
    assert after <= true_nll + 1e-9


def test_fit_width_rows_for_a_full_covariance_keeps_the_means():
    h, y, w, b, _ = _known_model(5_000, seed=1)
    lik = build_likelihood("gaussian_fullcov", n_params=2)
    w_full = torch.cat([w, torch.zeros(1, 3, dtype=torch.float64)])  # mean (2) | Cholesky (3) rows
    b_full = torch.cat([b, torch.zeros(1, dtype=torch.float64)])
    new_w, new_b, before, after = fit_width_rows(h, y, w_full, b_full, lik)
    assert torch.equal(new_w[:2], w_full[:2]) and torch.equal(new_b[:2], b_full[:2])
    assert after < before


def _eval_nll(ckpt, dm) -> float:
    m = load_checkpoint(ckpt)
    h, y = head_inputs(m.network, dm.split_dataloader("train"))
    last = m.network.head.net[-1]
    raw = h @ last.weight.detach().double().T + last.bias.detach().double()
    return float(m.likelihood.nll(raw, y).mean())


def test_refit_widths_changes_only_the_width_rows_of_the_best_checkpoint(data32, tmp_path):  # noqa: F811
    """Same seed and data, with and without the refit: every weight of the best checkpoint is equal
    except the width rows of the head's last layer, and the refitted widths fit the training maps
    in eval mode better."""
    torch.set_num_threads(1)
    ck = {}
    for name, over in {"plain": [], "refit": ["callbacks=refit_widths"]}.items():
        cfg = cfg_for(data32, tmp_path / name, "trainer.max_epochs=2", *over)
        train(cfg)
        ck[name] = tmp_path / name / "checkpoints" / "best.ckpt"
    plain, refit = (torch.load(ck[n], weights_only=True) for n in ("plain", "refit"))
    info = refit["cosmoinfer"]["width_refit"]
    assert "width_refit" not in plain["cosmoinfer"]
    assert info["n_maps"] == 12 * 15 and info["nll_after"] < info["nll_before"]
    last = max(k for k in plain["state_dict"] if k.startswith("network.head.net.") and k.endswith(".weight"))
    last_b = last[: -len("weight")] + "bias"
    for k, v in plain["state_dict"].items():
        if k in (last, last_b):
            assert torch.equal(refit["state_dict"][k][:2], v[:2]), "the mean rows must not change"
            assert not torch.equal(refit["state_dict"][k][2:], v[2:]), "the width rows must be refitted"
        else:
            assert torch.equal(refit["state_dict"][k], v), k
    dm = build_datamodule(cfg_for(data32, tmp_path / "x"), None)
    dm.augment = False
    dm.setup("fit")
    assert _eval_nll(ck["refit"], dm) < _eval_nll(ck["plain"], dm)


def test_refit_widths_leaves_a_loss_without_separate_widths_as_trained(data32, tmp_path, caplog):  # noqa: F811
    # a preset that refits its Gaussian widths (grf_fisher) must still train with loss=mse / flow
    with caplog.at_level("WARNING"):
        train(cfg_for(data32, tmp_path / "mse", "callbacks=refit_widths", "loss=mse"))
    assert "loss=mse has no width outputs" in caplog.text
    info = torch.load(tmp_path / "mse" / "checkpoints" / "best.ckpt", weights_only=True)["cosmoinfer"]
    assert "no width outputs" in info["width_refit"]["skipped"]
    with pytest.raises(InputError, match="loss=mse has no width outputs"):  # the function itself refuses
        check_refittable(None, build_likelihood("mse", n_params=2))


def test_refit_widths_uses_at_most_max_maps(data32, tmp_path):  # noqa: F811
    train(cfg_for(data32, tmp_path / "sub", "callbacks=refit_widths", "callbacks.refit_widths.max_maps=50"))
    info = torch.load(tmp_path / "sub" / "checkpoints" / "best.ckpt", weights_only=True)["cosmoinfer"]["width_refit"]
    assert info["n_maps"] == 50 and info["max_maps"] == 50
    assert info["nll_after"] <= info["nll_before"]


def test_refit_widths_under_ddp_rewrites_the_best_checkpoint_once(data32, tmp_path):  # noqa: F811
    """Two CPU processes: training ends, both ranks refit the same maps, and best.ckpt differs from
    the one-epoch last.ckpt (the same weights before the refit) in the width rows only."""
    from .test_training import run_cli

    out = tmp_path / "ddp"
    r = run_cli(["cosmoinfer.cli.train", "trainer=ddp_cpu", "callbacks=refit_widths", f"data.root={data32}",
                 "data.suite=TestSuite", f"out_dir={out}", "model.hidden=4", "trainer.max_epochs=1",
                 "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
                 f"hydra.run.dir={tmp_path / 'hydra_ddp'}"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    best, last = (torch.load(out / "checkpoints" / f"{n}.ckpt", weights_only=True) for n in ("best", "last"))
    info = best["cosmoinfer"]["width_refit"]
    n_train = 15 * len(json.loads((out / "split.json").read_text())["train"])
    assert info["n_maps"] == n_train and info["nll_after"] < info["nll_before"]  # every training map, once
    assert not list((out / "checkpoints").glob("*.tmp"))
    changed = [k for k, v in best["state_dict"].items() if not torch.equal(v, last["state_dict"][k])]
    assert changed and all(k.startswith("network.head.net.") for k in changed), changed
    for k in changed:
        assert torch.equal(best["state_dict"][k][:2], last["state_dict"][k][:2]), "the mean rows must not change"


def test_width_scale_multiplies_every_width_of_a_gaussian_head_and_refuses_other_heads():
    g = torch.Generator().manual_seed(3)
    s = torch.tensor([2.0, 0.5], dtype=torch.float64)
    y = torch.randn(6, 2, generator=g, dtype=torch.float64)
    for name in ("gaussian_nll", "gaussian_fullcov"):
        lik = build_likelihood(name, n_params=2)
        raw = torch.randn(6, lik.n_outputs, generator=g, dtype=torch.float64)
        plain = lik.predict(raw)
        cov = plain["cov"] if "cov" in plain else torch.diag_embed(plain["var"])
        lik.set_width_scale(s)
        scaled = lik.predict(raw)
        torch.testing.assert_close(scaled["mean"], plain["mean"])
        torch.testing.assert_close(scaled["std"], plain["std"] * s)
        want = torch.diag(s) @ cov @ torch.diag(s)  # D C D: the correlations are kept
        got = scaled["cov"] if "cov" in scaled else torch.diag_embed(scaled["var"])
        torch.testing.assert_close(got, want)
        ref = torch.distributions.MultivariateNormal(plain["mean"], covariance_matrix=want)
        torch.testing.assert_close(lik.nll(raw, y), -ref.log_prob(y))
        draws = lik.sample(raw, 20_000, generator=torch.Generator().manual_seed(0))
        # sample std of 20 000 draws: relative error ~ 1 / sqrt(2 * 20 000) = 0.005
        torch.testing.assert_close(draws.std(0), scaled["std"], rtol=0.03, atol=0)
        lik.set_width_scale(None)
        torch.testing.assert_close(lik.predict(raw)["std"], plain["std"])
    for name in ("mse", "flow", "mdn"):
        with pytest.raises(InputError, match="cannot be scaled"):
            build_likelihood(name, n_params=2).set_width_scale(s)
    for bad in ([1.0], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(InputError, match="finite numbers > 0"):
            build_likelihood("gaussian_nll", n_params=2).set_width_scale(bad)


class _ToyNet(torch.nn.Module):
    """Raw outputs ``[mean = map average | s]`` of a 1-parameter diagonal Gaussian (softplus width)."""

    def __init__(self, s: float):
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor([s]))

    def forward(self, x):
        return torch.cat([x.mean((1, 2, 3))[:, None], self.s.expand(len(x), 1)], 1)


@pytest.mark.parametrize("true_factor", [1.0, 2.0, 0.6])
def test_fit_val_scale_finds_the_factor_a_miscalibrated_width_is_off_by(true_factor):
    """Maps whose average is the mean; truths drawn with ``true_factor`` times the predicted width.
    The fitted scale is ``true_factor`` within the sampling error of ``mean z^2`` on n maps
    (relative sd sqrt(2 / n) / 2 for the scale); a calibrated width is left near 1."""
    from cosmoinfer.training.width_refit import fit_val_scale

    n = 4000
    g = torch.Generator().manual_seed(int(10 * true_factor))
    lik = build_likelihood("gaussian_nll", n_params=1)
    net = _ToyNet(-1.0)
    sigma = float(lik.predict(torch.tensor([[0.0, -1.0]]))["std"])
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = x.mean((1, 2, 3))[:, None] + true_factor * sigma * torch.randn(n, 1, generator=g)
    loader = [(x[i:i + 500], y[i:i + 500], None) for i in range(0, n, 500)]
    out = fit_val_scale(net, lik, loader, tta=True)  # the map average is view-invariant: TTA changes nothing
    tol = 4 * (2 / n) ** 0.5 / 2
    assert out["n_maps"] == n and abs(out["scale"][0] / true_factor - 1) < tol
    assert lik.width_scale is not None and float(lik.width_scale[0]) == pytest.approx(out["scale"][0])
    with torch.no_grad():
        z = (y - x.mean((1, 2, 3))[:, None]) / lik.predict(net(x))["std"]
    assert float((z.double() ** 2).mean()) == pytest.approx(1.0, rel=1e-5)  # NLL-optimal on these maps


def test_val_scale_is_stored_in_the_checkpoint_and_fitted_on_the_evaluators_tta_predictive(data32, tmp_path):  # noqa: F811
    """Trained with a real Trainer: the best checkpoint carries the scale, and the evaluator's TTA
    predictive of the validation maps, built from that checkpoint, has mean z^2 = 1 per parameter:
    the callback fitted the very predictive the evaluator forms."""
    import numpy as np

    from cosmoinfer.uncertainty.predictor import Predictor

    train(cfg_for(data32, tmp_path / "vs", "callbacks=refit_widths", "callbacks.refit_widths.val_scale=true"))
    ck = tmp_path / "vs" / "checkpoints" / "best.ckpt"
    meta = torch.load(ck, weights_only=True)["cosmoinfer"]
    info = meta["width_refit"]["val_scale"]
    assert info["tta"] and info["views"] == 8 and info["n_maps"] == 4 * 15 and meta["width_scale"] == info["scale"]
    model = load_checkpoint(ck)
    assert model.likelihood.width_scale.tolist() == pytest.approx(meta["width_scale"])
    dm = build_datamodule(cfg_for(data32, tmp_path / "x"), None)
    dm.setup("fit")
    post = Predictor([model], tta=True).predict_batches(dm.split_dataloader("val"))
    z2 = np.mean(((post.truth - post.mean) / post.std) ** 2, axis=0)
    np.testing.assert_allclose(z2, 1.0, rtol=1e-4)
    # and it is the TTA predictive it fitted: one view's predictive is not at mean z^2 = 1
    one_view = Predictor([model], tta=False).predict_batches(dm.split_dataloader("val"))
    assert not np.allclose(np.mean(((one_view.truth - one_view.mean) / one_view.std) ** 2, axis=0), 1.0, rtol=1e-3)
