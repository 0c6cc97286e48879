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
