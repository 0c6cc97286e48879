"""Transfer learning (transfer.checkpoint): a Gaussian-trained backbone carries a new head, frozen or not."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from cosmoinfer.errors import InputError
from cosmoinfer.training.run import train

from .test_training import cfg_for, data32  # noqa: F401  (the module-scoped data fixture)

warnings.filterwarnings("ignore", message=".*inferring one.*")


def _ckpt(out, name="best"):
    return torch.load(out / "checkpoints" / f"{name}.ckpt", weights_only=True)


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("network.backbone.")}


@pytest.fixture(scope="module")
def gaussian_run(data32, tmp_path_factory):  # noqa: F811
    """A one-epoch Gaussian-head network: the source of the backbone."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("src") / "gauss"
    train(cfg_for(data32, out, "trainer.max_epochs=1"))
    return out


def test_frozen_backbone_keeps_the_source_weights_and_statistics_and_trains_a_flow_head(
        data32, gaussian_run, tmp_path):  # noqa: F811
    """A flow head on the frozen backbone, trained for one and for two epochs (same seed): every backbone
    tensor (BatchNorm running statistics included, which train mode would move) equals the source's
    in both, and the second epoch changed the head."""
    torch.set_num_threads(1)
    src = gaussian_run / "checkpoints" / "best.ckpt"
    theirs = _backbone(torch.load(src, weights_only=True)["state_dict"])
    heads = []
    for epochs in (1, 2):
        out = tmp_path / f"flow{epochs}"
        train(cfg_for(data32, out, "loss=flow", "loss.n_predict=16", f"trainer.max_epochs={epochs}",
                      f"transfer.checkpoint={src}"))
        ours = _ckpt(out, "last")
        assert ours["epoch"] == epochs - 1  # last.ckpt is the last epoch, whether or not val improved
        back = _backbone(ours["state_dict"])
        assert back.keys() == theirs.keys() and any("running_mean" in k for k in back)
        for k, v in theirs.items():
            assert torch.equal(back[k], v), k
        info = ours["cosmoinfer"]["transfer"]
        assert info["freeze"] is True and info["source_loss"] == "gaussian_nll" and info["checkpoint"] == str(src)
        assert ours["cosmoinfer"]["loss"]["name"] == "flow"
        heads.append({k: v for k, v in ours["state_dict"].items() if k.startswith("network.head.")})
    assert heads[0].keys() == heads[1].keys()
    assert any(not torch.equal(v, heads[1][k]) for k, v in heads[0].items())


def test_unfrozen_backbone_starts_from_the_source_and_moves(data32, gaussian_run, tmp_path):  # noqa: F811
    torch.set_num_threads(1)
    out = tmp_path / "fine"
    src = gaussian_run / "checkpoints" / "best.ckpt"
    train(cfg_for(data32, out, "loss=gaussian_nll", f"transfer.checkpoint={src}", "transfer.freeze=false"))
    back_ours = _backbone(_ckpt(out, "last")["state_dict"])
    back_theirs = _backbone(torch.load(src, weights_only=True)["state_dict"])
    moved = [k for k, v in back_theirs.items() if not torch.equal(back_ours[k], v)]
    assert moved and any(k.endswith(".weight") for k in moved)


def test_a_source_trained_on_this_runs_test_simulations_is_refused(data32, gaussian_run, tmp_path):  # noqa: F811
    """Another split of the same maps: some of the source's training simulations are now test ones."""
    src = gaussian_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "leak"
    with pytest.raises(InputError, match=r"transfer\.checkpoint: its backbone was trained on \d+ simulations of "
                                         r"this run's (val|test) split"):
        train(cfg_for(data32, out, "loss=flow", f"transfer.checkpoint={src}", "data.split_seed=7"))
    assert not (out / "checkpoints").exists()


def test_another_architecture_is_one_line_from_the_cli(data32, gaussian_run, tmp_path):  # noqa: F811
    src = gaussian_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "wide"
    r = subprocess.run([sys.executable, "-m", "cosmoinfer.cli.train", f"data.root={data32}", "data.suite=TestSuite",
                        f"out_dir={out}", "model.hidden=8", "data.split_fractions=[0.6,0.2,0.2]",
                        "trainer.max_epochs=1", "callbacks.progress_bar=null", f"transfer.checkpoint={src}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
    assert str(src) in last and "transfer.checkpoint: the backbone weights do not fit" in last, r.stderr[-2000:]
    assert not (out / "checkpoints").exists()


def test_resume_refuses_another_transfer_source(data32, gaussian_run, tmp_path):  # noqa: F811
    torch.set_num_threads(1)
    out = tmp_path / "res"
    src = gaussian_run / "checkpoints" / "best.ckpt"
    train(cfg_for(data32, out, f"transfer.checkpoint={src}"))
    with pytest.raises(InputError, match=r"resume=true: transfer\.checkpoint=None differs"):
        train(cfg_for(data32, out, "resume=true", "trainer.max_epochs=2"))


def test_a_view_averaged_network_is_invariant_under_the_dihedral_group():
    """``model.view_average``: the same output for each of the map's 8 rotations/flips; the plain network
    differs between views (so the check could fail)."""
    from cosmoinfer.data.transforms import dihedral
    from cosmoinfer.models.network import build_network

    torch.manual_seed(0)
    x = torch.randn(3, 1, 16, 16)
    outs = {}
    for va in (True, False):
        torch.manual_seed(1)
        net = build_network("cmd_cnn", 1, 16, 4, hidden=2, view_average=va).eval()
        outs[va] = [net(dihedral(x, k)) for k in range(8)]
    assert all(torch.allclose(o, outs[True][0], atol=1e-5) for o in outs[True])
    assert max(float((o - outs[False][0]).abs().max()) for o in outs[False]) > 1e-3


def test_view_average_travels_in_the_checkpoint_and_frozen_features_train_the_head(
        data32, gaussian_run, tmp_path):  # noqa: F811
    from cosmoinfer.data.transforms import dihedral
    from cosmoinfer.training.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    out = tmp_path / "va"
    src = gaussian_run / "checkpoints" / "best.ckpt"
    train(cfg_for(data32, out, "loss=flow", "loss.n_predict=16", "model.view_average=true",
                  f"transfer.checkpoint={src}", "callbacks=refit_head", "callbacks.refit_head.epochs=3"))
    m = load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert m.network.view_average and m.meta["model"]["view_average"] is True
    assert m.meta["head_refit"]["n_maps"] == 12 * 15
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(m.network(x), m.network(dihedral(x, 5)), atol=1e-5)
