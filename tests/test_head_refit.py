"""The head refit (callbacks=refit_head) and the power-spectrum backbone's running standardisation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cosmoinfer.errors import InputError
from cosmoinfer.models.bayesian import bayes_layers, network_kl
from cosmoinfer.models.likelihoods import build_likelihood
from cosmoinfer.models.network import MLPHead
from cosmoinfer.models.power_spectrum_net import RunningStandardize
from cosmoinfer.training.checkpoint import load_checkpoint
from cosmoinfer.training.head_refit import RefitHead, fit_head, mean_nll
from cosmoinfer.training.run import build_datamodule, train
from cosmoinfer.uncertainty.predictor import Predictor

from .test_training import cfg_for, data32  # noqa: F401  (the module-scoped data fixture)

warnings.filterwarnings("ignore", message=".*inferring one.*")


def _noisy_feature_problem(n: int, seed: int):
    """Targets ``y = sigmoid(h @ a)`` plus small noise; clean features ``h`` and train-mode-like noisy ones."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, 4, generator=g)
    a = torch.tensor([[0.8, -0.5], [0.3, 0.6], [-0.4, 0.2], [0.1, 0.1]])
    y = torch.sigmoid(h @ a + 0.05 * torch.randn(n, 2, generator=g)).clamp(1e-4, 1 - 1e-4)
    noisy = h + 0.5 * torch.randn(n, 4, generator=g)  # what a head sees under batch-statistics noise
    return h, noisy, y


def test_fit_head_on_clean_features_narrows_a_head_trained_on_noisy_ones():
    """A flow head trained on noisy features spreads its mass over the noise; refitted on the clean
    features the evaluator sees, its held-out NLL falls by far more than the sampling noise
    (~3 / sqrt(n) nats for n held-out points with O(1) per-point NLL spread)."""
    torch.manual_seed(0)
    lik = build_likelihood("flow", n_params=2, n_layers=2)
    h, noisy, y = _noisy_feature_problem(6000, seed=0)
    hv, _, yv = _noisy_feature_problem(3000, seed=1)
    head = MLPHead(4, [32], lik.n_outputs)
    head = fit_head(head, lik, noisy, y, epochs=15, lr=3e-3, batch_size=128, seed=0)  # "as trained"
    before = mean_nll(head, lik, hv, yv)
    refit = fit_head(head, lik, h, y, epochs=15, lr=3e-3, batch_size=128, seed=0)
    after = mean_nll(refit, lik, hv, yv)
    assert after < before - 30 / math.sqrt(len(yv)), (before, after)
    assert mean_nll(head, lik, hv, yv) == before  # the original head is untouched


def test_refit_head_rewrites_only_the_head_of_the_best_checkpoint(data32, tmp_path):  # noqa: F811
    """One epoch, so best.ckpt and last.ckpt hold the same training state: after the refit they differ
    in head weights only, and the recorded val NLL is the refitted checkpoint's."""
    torch.set_num_threads(1)
    out = tmp_path / "flow"
    train(cfg_for(data32, out, "loss=flow", "loss.n_predict=16", "callbacks=refit_head",
                  "callbacks.refit_head.epochs=20", "callbacks.refit_head.lr=3e-4"))
    best, last = (torch.load(out / "checkpoints" / f"{n}.ckpt", weights_only=True) for n in ("best", "last"))
    info = best["cosmoinfer"]["head_refit"]
    assert info["n_maps"] == 12 * 15 and info["n_val_maps"] == 4 * 15
    assert info["kept"] and info["val_nll_after"] < info["val_nll_before"]
    changed = [k for k, v in best["state_dict"].items() if not torch.equal(v, last["state_dict"][k])]
    assert changed and all(k.startswith("network.head.") for k in changed), changed


def test_refit_head_keeps_the_trained_head_when_the_refit_is_worse(data32, tmp_path):  # noqa: F811
    """A learning rate of 10: the refit diverges, the val check refuses it, the head stays as trained."""
    torch.set_num_threads(1)
    out = tmp_path / "wild"
    train(cfg_for(data32, out, "callbacks=refit_head", "callbacks.refit_head.lr=10.0",
                  "callbacks.refit_head.epochs=3"))
    best, last = (torch.load(out / "checkpoints" / f"{n}.ckpt", weights_only=True) for n in ("best", "last"))
    info = best["cosmoinfer"]["head_refit"]
    assert not info["kept"]
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in best["state_dict"].items())


def test_refit_head_refits_a_bayesian_head_on_the_elbo(data32, tmp_path, caplog):  # noqa: F811
    """A variational head is refitted (its means and its weight stds), on the ELBO with KL / N_train, and
    val_scale is said to be ignored rather than skipped silently."""
    torch.set_num_threads(1)
    out = tmp_path / "bnn"
    with caplog.at_level("WARNING"):
        train(cfg_for(data32, out, "callbacks=refit_head", "model.bayesian_head=true",
                      "callbacks.refit_head.epochs=5", "callbacks.refit_head.val_scale=true"))
    assert "val_scale=true is ignored" in caplog.text
    best, last = (torch.load(out / "checkpoints" / f"{n}.ckpt", weights_only=True) for n in ("best", "last"))
    info = best["cosmoinfer"]["head_refit"]
    assert info["elbo_kl_weight"] == pytest.approx(1 / (12 * 15)) and "width_scale" not in best["cosmoinfer"]
    if info["kept"]:
        changed = {k for k, v in best["state_dict"].items() if not torch.equal(v, last["state_dict"][k])}
        assert any(k.endswith("_rho") for k in changed) and all(k.startswith("network.head.") for k in changed)


def test_fit_head_elbo_keeps_the_weight_spread_the_nll_alone_would_collapse():
    """Without the KL the NLL only pays for weight noise, so the posterior stds shrink from their start
    (0.05: to about half in these 30 epochs); with KL / N the prior N(0, 1) holds them up (the same
    fit with the KL term ends near its start), so the KL term reaches the weights' stds."""
    torch.manual_seed(0)
    lik = build_likelihood("gaussian_nll", n_params=2)
    h, _, y = _noisy_feature_problem(600, seed=0)
    head = MLPHead(4, [16], lik.n_outputs, bayesian=True, init_std=0.05)

    def mean_std(m):
        return float(torch.cat([b.weight_std.flatten() for b in bayes_layers(m)]).mean())

    nll_only = fit_head(head, lik, h, y, epochs=30, lr=1e-2, batch_size=64, seed=0)
    elbo = fit_head(head, lik, h, y, epochs=30, lr=1e-2, batch_size=64, seed=0, kl_weight=1 / len(y))
    with torch.no_grad():
        assert 1.5 * mean_std(nll_only) < mean_std(elbo), (mean_std(nll_only), mean_std(elbo))
        assert network_kl(elbo) < network_kl(nll_only)


def test_running_standardize_never_uses_a_batch_s_own_statistics():
    """Train mode: after many batches the running statistics are the data's, and a shifted batch comes
    out shifted (a BatchNorm would centre it); eval mode is BatchNorm's with the same buffers."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 3, generator=g) * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([5.0, 0.0, -1.0])
    rs = RunningStandardize(3).train()
    for i in range(0, len(x), 100):
        rs(x[i: i + 100])
    n = len(x)  # cumulative averages of 200 batch means / variances: errors ~ std / sqrt(n)
    assert torch.allclose(rs.running_mean, torch.tensor([5.0, 0.0, -1.0]), atol=4 * 3 / n**0.5)
    assert torch.allclose(rs.running_var.sqrt(), torch.tensor([1.0, 2.0, 3.0]), rtol=0.03)
    shifted = x[:100] + torch.tensor([1.0, 2.0, 3.0])  # one std up in every feature
    out = rs(shifted)
    assert torch.allclose(out.mean(0), rs(x[:100]).mean(0) + 1.0, atol=0.02)
    bn = nn.BatchNorm1d(3, affine=False).train()
    assert float(bn(shifted).mean(0).abs().max()) < 1e-5  # what the batch statistics would have done
    rs.eval()
    bn.load_state_dict(rs.state_dict())
    bn.eval()
    assert torch.equal(rs(x[:50]), bn(x[:50]))


def test_refit_head_val_scale_makes_the_full_covariance_head_s_val_z2_one(data32, tmp_path):  # noqa: F811
    """A full-covariance head on view-averaged features (the camels_like_mtot recipe), refitted, then
    scaled on the validation maps: the checkpoint carries the scale, and the evaluator's predictive of
    the validation maps, built from it, has mean z^2 = 1 per parameter (marginal widths of D C D)."""
    torch.set_num_threads(1)
    out = tmp_path / "fc"
    train(cfg_for(data32, out, "loss=gaussian_fullcov", "model.view_average=true", "callbacks=refit_head",
                  "callbacks.refit_head.epochs=3", "callbacks.refit_head.val_scale=true",
                  "callbacks.refit_head.val_scale_fit=nll"))
    ck = out / "checkpoints" / "best.ckpt"
    meta = torch.load(ck, weights_only=True)["cosmoinfer"]
    info = meta["head_refit"]["val_scale"]
    assert info["fit"] == "nll" and "flagged" not in info
    assert info["n_maps"] == 4 * 15 and meta["width_scale"] == info["scale"] and len(info["scale"]) == 2
    assert info["tta"] and info["views"] == 1  # view-averaged features: the 8 views are one already
    model = load_checkpoint(ck)
    assert model.likelihood.width_scale.tolist() == pytest.approx(meta["width_scale"])
    dm = build_datamodule(cfg_for(data32, tmp_path / "x"), None)
    dm.setup("fit")
    post = Predictor([model], tta=True).predict_batches(dm.split_dataloader("val"))
    np.testing.assert_allclose(np.mean(((post.truth - post.mean) / post.std) ** 2, axis=0), 1.0, rtol=1e-4)
    # without the scale the same predictive is not at z^2 = 1 (the fitted factors are not all 1)
    assert not np.allclose(info["scale"], 1.0, rtol=1e-3)


def test_refit_head_val_scale_by_default_scales_only_what_the_val_verdict_flags(data32, tmp_path):  # noqa: F811
    """The default fit (coverage): the record says which parameters the validation maps flagged, and the
    parameters not flagged keep a factor of exactly 1; a bad val_scale_fit is refused by key."""
    torch.set_num_threads(1)
    out = tmp_path / "cov"
    train(cfg_for(data32, out, "loss=gaussian_fullcov", "model.view_average=true", "callbacks=refit_head",
                  "callbacks.refit_head.epochs=3", "callbacks.refit_head.val_scale=true"))
    meta = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["cosmoinfer"]
    info = meta["head_refit"]["val_scale"]
    assert info["fit"] == "coverage" and info["n_sims"] == 4 and len(info["flagged"]) == 2
    assert all(s == 1.0 for s, f in zip(info["scale"], info["flagged"]) if not f)
    with pytest.raises(InputError, match=r"callbacks\.refit_head\.val_scale_fit: must be one of coverage \| nll"):
        RefitHead(val_scale_fit="mse")


def test_refit_head_val_scale_refuses_a_head_without_widths(data32, tmp_path):  # noqa: F811
    with pytest.raises(InputError, match="callbacks.refit_head.val_scale.*loss=flow"):
        train(cfg_for(data32, tmp_path / "f", "loss=flow", "callbacks=refit_head", "callbacks.refit_head.val_scale=true"))
    assert not (tmp_path / "f" / "checkpoints" / "best.ckpt").exists()


def test_a_preset_s_options_for_a_callback_the_group_drops_are_ignored_with_a_warning(data32, tmp_path, caplog):  # noqa: F811
    """camels_like_multifield sets callbacks.refit_widths.val_scale; its pipeline.head trains with
    callbacks=refit_head, which has no refit_widths: the orphaned options are ignored, with a warning."""
    torch.set_num_threads(1)
    out = tmp_path / "orphan"
    with caplog.at_level("WARNING"):
        train(cfg_for(data32, out, "callbacks=refit_head", "callbacks.refit_head.epochs=1",
                      "+callbacks.refit_widths.val_scale=true"))
    assert "callbacks.refit_widths: options without a callback" in caplog.text
    meta = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["cosmoinfer"]
    assert "head_refit" in meta and "width_refit" not in meta
