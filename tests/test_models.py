"""Networks: shapes, periodic (circular) equivariance, dropout placement, init, configs, ps baseline."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cosmoinfer.errors import InputError
from cosmoinfer.models import build_likelihood, build_network, has_dropout, init_weights
from cosmoinfer.models.init import expected_std
from cosmoinfer.simulators.summary import binned_power_spectrum

torch.set_num_threads(1)

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = {
    "cmd_cnn": {"hidden": 2},
    "resnet": {"width": 4, "depth": [1, 1, 1]},
    "ps_mlp": {"n_bins": 8, "hidden": 16},
}


def _maps(b: int, c: int, g: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, g, g, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cmd_cnn", "resnet", "ps_mlp"])
@pytest.mark.parametrize("grid", [32, 64, 128, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes(arch, grid, channels):
    net = build_network(arch, channels, grid, 5, **SMALL[arch])
    net.set_input_stats([0.0] * channels, [1.0] * channels, [True] * channels)
    x = _maps(2, channels, grid)
    feats = net.features(x)
    assert feats.shape == (2, net.n_features)
    assert net(x).shape == (2, 5)
    assert torch.isfinite(net(x)).all()


def test_cmd_cnn_widths_follow_cmd():
    # grid 256: six stride-2 stages (256 -> 4), stage widths 2h..64h, 4x4 conv to 128h features (CMD)
    net = build_network("cmd_cnn", 1, 256, 12, hidden=3, max_channels=None)
    bb = net.backbone
    assert bb.n_stages == 6 and bb.total_stride == 64 and net.n_features == 128 * 3
    widths = [m.out_channels for m in bb.stages if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert widths == [6, 12, 24, 48, 96, 192]
    assert all(m.padding_mode == "circular" for m in bb.modules() if isinstance(m, nn.Conv2d) and m.padding != (0, 0))
    assert sum(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in bb.modules()) == 6 * 3 + 1
    # two FC layers in the head, CMD style: 128h -> 64h -> n_outputs
    fcs = [m for m in net.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in fcs] == [(384, 192), (192, 12)]
    # the cap
    assert build_network("cmd_cnn", 1, 256, 2, hidden=16, max_channels=128).n_features == 128


def test_cmd_cnn_without_norm_predicts_each_map_independently_of_its_batch():
    """norm=none: no BatchNorm anywhere, so in training mode a map's output ignores its batch mates."""
    with_bn = build_network("cmd_cnn", 1, 32, 2, hidden=2, dropout=0.0)
    plain = build_network("cmd_cnn", 1, 32, 2, hidden=2, dropout=0.0, norm="none")
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    # same convolutions either way: only the normalisation layers differ
    convs = lambda n: [m.weight.shape for m in n.modules() if isinstance(m, nn.Conv2d)]  # noqa: E731
    assert convs(plain) == convs(with_bn)
    x = _maps(4, 1, 32)
    other = torch.cat([x[:1], 5.0 * _maps(3, 1, 32)])  # map 0 with different batch mates
    plain.train(), with_bn.train()
    torch.testing.assert_close(plain(x)[0], plain(other)[0])
    assert not torch.allclose(with_bn(x)[0], with_bn(other)[0])
    with pytest.raises(InputError, match="model.norm"):
        build_network("cmd_cnn", 1, 32, 2, norm="layer")


@pytest.mark.parametrize("activation,kind", [("leaky_relu", nn.LeakyReLU), ("gelu", nn.GELU), ("silu", nn.SiLU)])
def test_cmd_cnn_activation_option(activation, kind):
    net = build_network("cmd_cnn", 1, 32, 2, hidden=2, activation=activation)
    acts = [m for m in net.backbone.modules() if isinstance(m, (nn.LeakyReLU, nn.GELU, nn.SiLU))]
    assert len(acts) == 3 * net.backbone.n_stages + 1 and all(isinstance(m, kind) for m in acts)
    assert net.hparams["activation"] == activation


def test_cmd_cnn_default_activation_is_cmds_and_unknown_is_refused():
    assert build_network("cmd_cnn", 1, 32, 2, hidden=2).hparams["activation"] == "leaky_relu"
    with pytest.raises(InputError, match="model.activation"):
        build_network("cmd_cnn", 1, 32, 2, hidden=2, activation="tanh")


@pytest.mark.parametrize("arch,kw", [("cmd_cnn", {"hidden": 2}), ("resnet", {"width": 4, "depth": [1, 1]}),
                                     ("ps_mlp", {"n_bins": 4})])
def test_head_activation_option_sets_the_head_s_hidden_layers_only(arch, kw):
    """model.head_activation: the head's hidden activations (silu here), the backbone's unchanged; the default
    (and a stored config without the key, as in older checkpoints) is CMD's LeakyReLU; unknown: refused."""
    acts = (nn.LeakyReLU, nn.GELU, nn.SiLU)
    net = build_network(arch, 1, 32, 2, head_activation="silu", **kw)
    plain = build_network(arch, 1, 32, 2, **kw)
    head = [m for m in net.head.modules() if isinstance(m, acts)]
    assert head and all(isinstance(m, nn.SiLU) for m in head)
    assert all(isinstance(m, nn.LeakyReLU) for m in plain.head.modules() if isinstance(m, acts))
    assert [type(m) for m in net.backbone.modules()] == [type(m) for m in plain.backbone.modules()]
    assert net.hparams["head_activation"] == "silu" and "head_activation" not in plain.hparams
    rebuilt = build_network(**{k: v for k, v in net.hparams.items() if k not in ("arch", "in_channels", "grid",
                                                                               "n_outputs")},
                            arch=arch, in_channels=1, grid=32, n_outputs=2)
    assert [type(m) for m in rebuilt.head.modules()] == [type(m) for m in net.head.modules()]
    with pytest.raises(InputError, match="model.head_activation"):
        build_network(arch, 1, 32, 2, head_activation="tanh", **kw)


# ---------------------------------------------------------------------------------------------
# periodic maps: circular equivariance / invariance
# ---------------------------------------------------------------------------------------------


def test_first_conv_is_circularly_equivariant():
    net = build_network("cmd_cnn", 2, 32, 2, hidden=2).eval()
    conv = net.backbone.stages[0]
    x = _maps(1, 2, 32)
    for shift in [(1, 0), (0, 3), (5, -7)]:
        torch.testing.assert_close(conv(torch.roll(x, shift, (2, 3))), torch.roll(conv(x), shift, (2, 3)))


@pytest.mark.parametrize("arch,kw", [("cmd_cnn", {"hidden": 2}), ("resnet", {"width": 4, "depth": [1, 1, 1]})])
def test_feature_map_equivariant_to_shift_by_total_stride(arch, kw):
    """Every layer is circular or stride-aligned: shifting by the total stride S shifts the last map by 1."""
    net = build_network(arch, 1, 64, 2, **kw).eval()
    s = net.backbone.total_stride
    x = _maps(2, 1, 64)
    with torch.no_grad():
        fm = net.backbone.feature_map(x)
        for dy, dx in [(1, 0), (0, 1), (2, -1)]:
            shifted = net.backbone.feature_map(torch.roll(x, (dy * s, dx * s), (2, 3)))
            torch.testing.assert_close(shifted, torch.roll(fm, (dy, dx), (2, 3)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,kw", [("cmd_cnn", {"hidden": 2, "pool": "avg"}),
                                     ("resnet", {"width": 4, "depth": [1, 1, 1]})])
def test_global_pool_output_invariant_to_shift_by_total_stride(arch, kw):
    net = build_network(arch, 2, 64, 3, **kw).eval()
    s = net.backbone.total_stride
    x = _maps(2, 2, 64)
    with torch.no_grad():
        out = net(x)
        for dy, dx in [(1, 0), (0, 3), (2, 1)]:
            torch.testing.assert_close(net(torch.roll(x, (dy * s, dx * s), (2, 3))), out, atol=1e-5, rtol=1e-5)


def test_ps_mlp_invariant_to_any_shift_and_the_eight_symmetries():
    net = build_network("ps_mlp", 2, 32, 3, n_bins=8, hidden=8).eval()
    net.set_input_stats([0.0, 0.0], [1.0, 1.0], [True, True])
    x = 0.3 * _maps(2, 2, 32)
    with torch.no_grad():
        out = net(x)
        variants = [torch.roll(x, (3, 11), (2, 3)), torch.flip(x, (3,)), torch.rot90(x, 1, (2, 3)),
                    torch.rot90(torch.flip(x, (2,)), 3, (2, 3))]
        for v in variants:
            torch.testing.assert_close(net(v), out, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# dropout placement (MC dropout)
# ---------------------------------------------------------------------------------------------


def test_dropout_in_head_only_flags():
    assert build_network("cmd_cnn", 1, 32, 2, hidden=2, dropout=0.3).dropout_in_head_only
    assert build_network("resnet", 1, 32, 2, width=4, depth=2, dropout=0.3).dropout_in_head_only
    assert build_network("ps_mlp", 1, 32, 2, n_bins=4).dropout_in_head_only
    blocks = build_network("resnet", 1, 32, 2, width=4, depth=2, dropout=0.3, dropout_in_blocks=True)
    assert not blocks.dropout_in_head_only
    assert any(isinstance(m, nn.Dropout2d) for m in blocks.backbone.modules())
    for arch in SMALL:
        assert has_dropout(build_network(arch, 1, 32, 2, dropout=0.2, **SMALL[arch]).head)
        assert not has_dropout(build_network(arch, 1, 32, 2, dropout=0.0, **SMALL[arch]))


def test_mc_dropout_pattern_backbone_once_head_many():
    net = build_network("cmd_cnn", 1, 32, 4, hidden=2, dropout=0.5).eval()
    x = _maps(3, 1, 32)
    with torch.no_grad():
        f1, f2 = net.features(x), net.features(x)
        torch.testing.assert_close(f1, f2)
        net.head.train()  # only dropout is stochastic; the backbone's BatchNorm stays in eval mode
        draws = torch.stack([net.head(f1) for _ in range(8)])
    assert draws.std(0).min() > 0


# ---------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["kaiming_normal", "xavier", "lecun"])
def test_init_variances_match_formulas(scheme):
    torch.manual_seed(0)
    conv, lin = nn.Conv2d(64, 96, 3), nn.Linear(600, 200)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.weight.fill_(3.0)
        bn.bias.fill_(2.0)
    init_weights(nn.Sequential(conv, lin, bn), scheme)
    formulas = {
        "kaiming_normal": lambda fi, fo: 2.0 / ((1 + 0.2**2) * fi),
        "xavier": lambda fi, fo: 2.0 / (fi + fo),
        "lecun": lambda fi, fo: 1.0 / fi,
    }
    for layer, fan_in, fan_out in [(conv, 64 * 9, 96 * 9), (lin, 600, 200)]:
        w = layer.weight.detach().double()
        n = w.numel()
        var_expected = formulas[scheme](fan_in, fan_out)
        assert math.isclose(expected_std(w, scheme) ** 2, var_expected, rel_tol=1e-12)
        # sample variance of n Gaussian draws has relative standard error sqrt(2/n); allow 5 of them
        assert abs(float(w.var()) / var_expected - 1) < 5 * math.sqrt(2 / n)
        assert abs(float(w.mean())) < 5 * math.sqrt(var_expected / n)
        assert torch.all(layer.bias == 0)
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_build_network_applies_init():
    net = build_network("cmd_cnn", 1, 32, 2, hidden=16, init="lecun")
    w = net.backbone.stages[-3].weight  # the last stride-2 conv, 128 x 128 x 2 x 2
    assert abs(float(w.detach().var()) * (128 * 4) - 1) < 5 * math.sqrt(2 / w.numel())
    with pytest.raises(InputError, match="unknown scheme"):
        build_network("cmd_cnn", 1, 32, 2, hidden=2, init="orthogonal")
    # the output layer is scaled by init_out_scale after init (raw outputs start near 0)
    outs = [build_network("cmd_cnn", 1, 32, 2, hidden=16, init_out_scale=s).head.net[-1].weight for s in (1.0, 0.1)]
    ratio = float(outs[1].detach().std() / outs[0].detach().std())
    assert 0.05 < ratio < 0.2


# ---------------------------------------------------------------------------------------------
# memory format, errors, configs
# ---------------------------------------------------------------------------------------------


def test_channels_last_same_outputs():
    torch.manual_seed(0)
    ref = build_network("cmd_cnn", 2, 32, 3, hidden=2).eval()
    cl = build_network("cmd_cnn", 2, 32, 3, hidden=2, channels_last=True).eval()
    cl.load_state_dict(ref.state_dict())
    conv = cl.backbone.stages[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = _maps(2, 2, 32)
    with torch.no_grad():
        torch.testing.assert_close(cl(x), ref(x), atol=1e-5, rtol=1e-5)


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="unknown architecture"):
        build_network("vit", 1, 32, 2)
    with pytest.raises(InputError, match="hiden"):
        build_network("cmd_cnn", 1, 32, 2, hiden=4)
    with pytest.raises(InputError, match="power of two"):
        build_network("cmd_cnn", 1, 48, 2)
    with pytest.raises(InputError, match="divisible"):
        build_network("resnet", 1, 36, 2, depth=[1, 1, 1, 1])
    with pytest.raises(InputError, match="overdensity"):
        build_network("ps_mlp", 2, 32, 2, overdensity=[True])
    with pytest.raises(InputError, match="n_bins"):
        build_network("ps_mlp", 1, 32, 2, n_bins=17)


@pytest.mark.parametrize("arch", ["cmd_cnn", "resnet", "ps_mlp"])
def test_model_configs_build(arch):
    cfg = OmegaConf.load(CONF / "model" / f"{arch}.yaml")
    assert cfg.arch == arch
    net = build_network(in_channels=2, grid=32, n_outputs=4, **cfg)
    net.set_input_stats([0.0, 0.0], [1.0, 1.0], [True, True])
    assert net(_maps(2, 2, 32)).shape == (2, 4)
    assert net.hparams["arch"] == arch


@pytest.mark.parametrize("name", ["gaussian_nll", "mse", "moment", "gaussian_fullcov", "mdn", "bernoulli"])
def test_loss_configs_build(name):
    cfg = OmegaConf.load(CONF / "loss" / f"{name}.yaml")
    assert cfg.name == name
    lik = build_likelihood(n_params=1 if name == "bernoulli" else 2, **cfg)
    assert lik.n_outputs >= 1


# ---------------------------------------------------------------------------------------------
# the power-spectrum baseline
# ---------------------------------------------------------------------------------------------


def test_ps_backbone_include_mean_adds_the_log_map_mean():
    """Overdensity spectra cannot tell M from 3 M; with include_mean the features can (log10 mean last)."""
    g = torch.Generator().manual_seed(2)
    c, grid = 2, 16
    phys = torch.exp(0.5 * torch.randn(4, c, grid, grid, generator=g, dtype=torch.float64))
    phys[2:] = 3.0 * phys[:2]  # maps 2, 3: the same fields, three times the mass
    phys[:, 1] *= 1e4
    logmap = torch.log10(phys)
    mean, std = logmap.mean((0, 2, 3)), logmap.std((0, 2, 3))
    x = ((logmap - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)).float()
    plain = build_network("ps_mlp", c, grid, 2, n_bins=4, hidden=8).backbone
    with_mean = build_network("ps_mlp", c, grid, 2, n_bins=4, hidden=8, include_mean=True).backbone
    for bb in (plain, with_mean):
        bb.set_input_stats(mean.tolist(), std.tolist(), [True, True])
    assert with_mean.n_features == plain.n_features + c
    f0, f1 = plain.summaries(x), with_mean.summaries(x)
    torch.testing.assert_close(f1[:, :-c], f0)
    torch.testing.assert_close(f0[2:], f0[:2], rtol=1e-4, atol=1e-4)  # spectra blind to the factor 3
    expected = torch.log10(phys.mean(dim=(2, 3))).float()
    torch.testing.assert_close(f1[:, -c:], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f1[2:, -c:] - f1[:2, -c:], torch.full((2, c), float(np.log10(3.0))), rtol=1e-4,
                               atol=1e-4)


def test_ps_backbone_sees_the_physical_maps():
    """Features of the normalised map equal the spectra of the physical (positive) map."""
    g = torch.Generator().manual_seed(1)
    c, grid = 2, 32
    phys = torch.exp(0.5 * torch.randn(3, c, grid, grid, generator=g, dtype=torch.float64))
    phys[:, 1] *= 1e4  # e.g. a temperature-like field with large values
    logmap = torch.log10(phys)
    mean, std = logmap.mean((0, 2, 3)), logmap.std((0, 2, 3))
    x = ((logmap - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)).float()

    net = build_network("ps_mlp", c, grid, 4, n_bins=6, hidden=8)
    net.set_input_stats(mean.tolist(), std.tolist(), [True, True])
    bb = net.backbone
    ref = binned_power_spectrum(phys, 6, True)
    got = bb.spectra(x)
    assert got.shape == (3, 3, 6)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=2e-5)
    feats = bb.summaries(x).view(3, 3, 6)
    np.testing.assert_allclose(feats[:, 0].numpy(), np.log10(ref[:, 0].numpy()), rtol=1e-5)
    r = ref[:, 1] / torch.sqrt(ref[:, 0] * ref[:, 2])
    np.testing.assert_allclose(feats[:, 1].numpy(), r.numpy(), atol=1e-5)
    assert feats[:, 1].abs().max() <= 1

    # the statistics travel inside the state dict (i.e. the checkpoint)
    sd = net.state_dict()
    assert {"backbone.input_mean", "backbone.input_std", "backbone.input_log"} <= set(sd)
    fresh = build_network("ps_mlp", c, grid, 4, n_bins=6, hidden=8)
    fresh.load_state_dict(sd)
    net.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), net(x))


def test_set_input_stats_is_a_no_op_for_cnns():
    net = build_network("cmd_cnn", 1, 32, 2, hidden=2)
    before = copy.deepcopy(net.state_dict())
    net.set_input_stats([1.0], [2.0], [True])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_ps_mlp_warns_without_input_stats():
    net = build_network("ps_mlp", 1, 32, 2, n_bins=4)
    with pytest.warns(UserWarning, match="set_input_stats"):
        net(torch.rand(2, 1, 32, 32) + 1)


# ---------------------------------------------------------------------------------------------
# a tiny end-to-end fit: the CNN reads the amplitude of a periodic field
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,min_corr", [("cmd_cnn", 0.6), ("ps_mlp", 0.8)])
def test_network_learns_map_amplitude(arch, min_corr):
    """Physical maps 10**(a * noise) with a = 0.2 (0.5 + y): 40 Adam steps learn y (eval mode)."""
    torch.manual_seed(0)
    n, grid = 64, 32
    y = torch.rand(n, 1)
    logmap = 0.2 * (0.5 + y).view(n, 1, 1, 1) * torch.randn(n, 1, grid, grid)
    mean, std = float(logmap.mean()), float(logmap.std())
    x = (logmap - mean) / std
    lik = build_likelihood("gaussian_nll", 1)
    kw = {"hidden": 4, "dropout": 0.0} if arch == "cmd_cnn" else {"n_bins": 8, "hidden": 32, "dropout": 0.0}
    net = build_network(arch, 1, grid, lik.n_outputs, **kw)
    net.set_input_stats([mean], [std], [True])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = lik.loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    net.eval()
    with torch.no_grad():
        mu = lik.predict(net(x))["mean"]
    assert float(torch.corrcoef(torch.cat([mu, y], 1).T)[0, 1]) > min_corr
