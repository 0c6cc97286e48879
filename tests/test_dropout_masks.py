"""MC-dropout masks keyed by the map: the right keep rate, no dependence on the batch, fresh per key."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cosmoinfer.uncertainty.dropout_masks import MapKeyedDropout, hashed_keep


def test_keep_rate_and_independence_match_bernoulli():
    n_maps, n_el, p = 2000, 256, 0.2
    keep = hashed_keep(12345, torch.arange(n_maps), n_el, p).double()
    total = n_maps * n_el
    assert abs(keep.mean().item() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / total)
    # per-map keep fractions spread as binomial ones do (no map-level clumping)
    sd = keep.mean(1).std().item()
    assert 0.8 < sd / np.sqrt(p * (1 - p) / n_el) < 1.2
    # neighbouring elements and neighbouring maps uncorrelated (|r| < 4 / sqrt(n))
    assert abs(np.corrcoef(keep[:, 0], keep[:, 1])[0, 1]) < 4 / np.sqrt(n_maps)
    assert abs(np.corrcoef(keep[0], keep[1])[0, 1]) < 4 / np.sqrt(n_el)


def test_a_maps_mask_does_not_depend_on_its_batch_but_on_the_key():
    whole = hashed_keep(7, torch.arange(0, 300), 64, 0.5)
    assert torch.equal(hashed_keep(7, torch.arange(100, 200), 64, 0.5), whole[100:200])
    other = hashed_keep(8, torch.arange(0, 300), 64, 0.5)
    assert (other != whole).float().mean().item() > 0.4  # another pass/layer/member: fresh masks


def test_map_keyed_dropout_scales_like_torch_and_leaves_eval_layers_alone():
    net = nn.Sequential(nn.Linear(4, 512), nn.Dropout(0.25), nn.Linear(512, 1))
    x = torch.ones(64, 4)
    with MapKeyedDropout(net, seed=0, member=0) as masks:
        net.eval()
        masks.set(0, torch.arange(64))
        assert torch.equal(net(x), nn.Sequential(*net)(x))  # eval mode: the hook changes nothing
        net[1].train()
        h = net[0](x)
        masks.set(0, torch.arange(64))
        out = net[1](h)
        kept = out != 0
        assert torch.allclose(out[kept], (h / 0.75)[kept])  # kept units scaled by 1 / (1 - p)
        masks.set(0, torch.arange(64))
        assert torch.equal(net[1](h), out)  # same pass, same maps: same mask
        masks.set(1, torch.arange(64))
        assert not torch.equal(net[1](h), out)  # next pass: another mask
    assert not net[1]._forward_hooks  # hooks removed on exit
