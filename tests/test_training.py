"""Training with a real Lightning Trainer on tiny CMD-layout data (CPU)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from cosmoinfer.cli.common import CONF_DIR
from cosmoinfer.training.checkpoint import load_checkpoint
from cosmoinfer.training.run import train

from .conftest import write_cmd_folder

warnings.filterwarnings("ignore", message=".*inferring one.*")


@pytest.fixture(scope="module")
def data32(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("d32") / "cmd"
    write_cmd_folder(root, n_sims=20, grid=32, fields=("Mtot",))
    return root


def cfg_for(root, out, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[
            f"data.root={root}", "data.suite=TestSuite", f"out_dir={out}", "model.hidden=4",
            "data.split_fractions=[0.6,0.2,0.2]", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
            "trainer.max_epochs=1", *overrides])


def read_metrics(out) -> list[dict]:
    with open(Path(out) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def epoch_values(rows, key):
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.parametrize("loss", ["gaussian_nll", "mse", "moment", "gaussian_fullcov", "mdn"])
def test_each_loss_decreases_with_a_real_trainer(data32, tmp_path, loss):
    torch.set_num_threads(1)
    out = tmp_path / loss
    extra = ["loss.n_components=2"] if loss == "mdn" else []
    train(cfg_for(data32, out, f"loss={loss}", "trainer.max_epochs=6", "optimizer.lr=1e-3", "trainer.gradient_clip_val=1.0",
                  "data.batch_size=16", *extra))
    losses = epoch_values(read_metrics(out), "train/loss_epoch")
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < losses[0], losses
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    m = load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert m.meta["loss"]["name"] == loss


def test_val_nll_is_the_unweighted_likelihood_and_can_select_checkpoints(data32, tmp_path):
    # plain NLL: val/nll is val/loss; beta-NLL: val/loss is the weighted loss, val/nll the likelihood
    train(cfg_for(data32, tmp_path / "plain", "trainer.max_epochs=2"))
    rows = read_metrics(tmp_path / "plain")
    np.testing.assert_allclose(epoch_values(rows, "val/nll"), epoch_values(rows, "val/loss"), rtol=1e-6)
    train(cfg_for(data32, tmp_path / "beta", "trainer.max_epochs=2", "loss=beta_nll",
                  "callbacks.checkpoint.monitor=val/nll", "callbacks.early_stopping.monitor=val/nll"))
    rows = read_metrics(tmp_path / "beta")
    nll, loss = epoch_values(rows, "val/nll"), epoch_values(rows, "val/loss")
    assert len(nll) == 2 and not np.allclose(nll, loss, rtol=1e-3)
    ck = torch.load(tmp_path / "beta" / "checkpoints" / "best.ckpt", weights_only=True)
    best = [cb for k, cb in ck["callbacks"].items() if k.startswith("ModelCheckpoint")][0]
    assert best["monitor"] == "val/nll" and float(best["best_model_score"]) == pytest.approx(min(nll), rel=1e-5)


@pytest.mark.parametrize("opt", ["sgd", "adagrad", "rmsprop", "adam", "adamw"])
def test_each_optimizer_config_steps(data32, tmp_path, opt):
    torch.set_num_threads(1)
    out = tmp_path / opt
    train(cfg_for(data32, out, f"optimizer={opt}", "+trainer.limit_train_batches=2"))
    ck = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 2
    assert ck["optimizer_states"][0]["state"], "optimizer took no step"


@pytest.mark.parametrize("sched", ["cosine", "onecycle", "cyclic", "step", "plateau", "cosine_budget"])
def test_each_scheduler_config_steps(data32, tmp_path, sched):
    torch.set_num_threads(1)
    out = tmp_path / sched
    train(cfg_for(data32, out, f"scheduler={sched}", "trainer.max_epochs=2", "+trainer.limit_train_batches=3",
                  "trainer.gradient_clip_val=1.0"))
    ck = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["lr_schedulers"], "no scheduler state saved"
    lrs = epoch_values(read_metrics(out), [k for k in read_metrics(out)[0] if k.startswith("lr-")][0])
    assert lrs and all(np.isfinite(lrs))
    if sched in ("cosine", "onecycle", "cyclic", "cosine_budget"):
        assert ck["lr_schedulers"][0]["last_epoch"] > 0


def test_budget_cosine_takes_its_time_budget_from_max_time(data32, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "budget"
    train(cfg_for(data32, out, "scheduler=cosine_budget", "+trainer.max_time=00:00:10:00",
                  "+trainer.limit_train_batches=2"))
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0]
    assert 590 < state["max_seconds"] <= 600 and state["total_steps"] == 2 and state["last_epoch"] == 2
    # without a time cap it anneals over the steps only
    out = tmp_path / "steps"
    train(cfg_for(data32, out, "scheduler=cosine_budget", "+trainer.limit_train_batches=2"))
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0]["max_seconds"] is None


def test_resume_continues_to_the_same_epoch_count(data32, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "resume"
    train(cfg_for(data32, out, "trainer.max_epochs=2"))
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    train(cfg_for(data32, out, "trainer.max_epochs=4", "resume=true"))
    ck = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    steps_per_epoch = 12 * 15 // 32  # 12 training simulations x 15 maps, batch 32, last partial batch dropped
    assert ck["global_step"] == 4 * steps_per_epoch
    epochs = sorted({int(r["epoch"]) for r in read_metrics(out) if r.get("val/loss")})
    assert epochs == [0, 1, 2, 3]  # history kept, each epoch once
    load_checkpoint(out / "checkpoints" / "last.ckpt")


def test_checkpoint_carries_everything_evaluation_needs(data32, tmp_path):
    out = tmp_path / "meta"
    train(cfg_for(data32, out))
    meta = load_checkpoint(out / "checkpoints" / "best.ckpt").meta["data"]
    assert meta["param_names"] == ["Omega_m", "sigma_8"] and meta["fields"] == ["Mtot"]
    assert {"mean", "std", "log"} <= set(meta["normalizer"]) and set(meta["split"]) >= {"train", "val", "test"}
    assert meta["priors"][0] == {"name": "Omega_m", "low": 0.1, "high": 0.5, "distribution": "uniform"}


def run_cli(args, cwd, timeout=600, env=None):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def test_non_finite_loss_stops_with_a_message_and_keeps_last_good_checkpoint(data32, tmp_path):
    out = tmp_path / "nan"
    # the learning rate grows 1e12-fold every 3 steps: a few good steps, then divergence
    r = run_cli(["cosmoinfer.cli.train", f"data.root={data32}", "data.suite=TestSuite", f"out_dir={out}",
                 "model.hidden=4", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
                 "trainer.max_epochs=3", "optimizer=sgd", "optimizer.lr=1e-3", "scheduler=step",
                 "scheduler.interval=step", "scheduler.scheduler.step_size=3", "scheduler.scheduler.gamma=1e12",
                 "callbacks=step_checkpoints", "callbacks.step_checkpoint.every_n_train_steps=1"], tmp_path)
    assert r.returncode == 3, r.stderr[-2000:]
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert line and "non-finite" in line[0] and "last good checkpoint is kept" in line[0]
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] >= 3
    for k, v in last["state_dict"].items():
        assert torch.isfinite(v.float()).all(), k
    load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_seed_sweep_writes_separate_member_folders(data32, tmp_path):
    sweep = tmp_path / "ens"
    r = run_cli(["cosmoinfer.cli.train", "-m", "seed=0,1", f"data.root={data32}", "data.suite=TestSuite",
                 "model.hidden=4", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                 "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    members = sorted(sweep.glob("*/checkpoints/best.ckpt"))
    assert len(members) == 2
    a, b = (load_checkpoint(p) for p in members)
    assert a.meta["seed"] == 0 and b.meta["seed"] == 1
    assert a.meta["data"]["split"] == b.meta["data"]["split"]  # members share one split
    wa = next(iter(a.network.state_dict().values()))
    wb = next(iter(b.network.state_dict().values()))
    assert not torch.equal(wa, wb)


def test_ddp_cpu_two_processes_one_folder_same_validation_metric(data32, tmp_path):
    out = tmp_path / "ddp"
    r = run_cli(["cosmoinfer.cli.train", "trainer=ddp_cpu", f"data.root={data32}", "data.suite=TestSuite",
                 f"out_dir={out}", "model.hidden=4", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                 "trainer.enable_progress_bar=false", "data.split_fractions=[0.6,0.25,0.15]",
                 f"hydra.run.dir={tmp_path / 'hydra_ddp'}"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "metrics.csv", "split.json"]
    assert not (tmp_path / "outputs").exists()  # ranks did not create folders of their own
    ddp_val = epoch_values(read_metrics(out), "val/loss")[-1]
    # the same checkpoint validated in one process: every map once, same metric
    import pytorch_lightning as pl

    from cosmoinfer.training.run import build_datamodule, build_module

    cfg = cfg_for(data32, tmp_path / "single", "data.split_fractions=[0.6,0.25,0.15]")
    dm = build_datamodule(cfg, tmp_path / "single")
    dm.setup()
    module = build_module(cfg, dm)
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    module.load_state_dict(state, strict=False)
    res = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     use_distributed_sampler=False).validate(module, datamodule=dm, verbose=False)
    assert res[0]["val/loss"] == pytest.approx(ddp_val, rel=1e-5, abs=1e-6)
    assert len(dm.datasets["val"]) % 2 == 1  # odd: a padded sampler would have counted one map twice


def test_optuna_sweep_runs_trials_and_reports_the_best(data32, tmp_path):
    sweep = tmp_path / "optuna"
    r = run_cli(["cosmoinfer.cli.train", "hparams_search=optuna", f"data.root={data32}", "data.suite=TestSuite",
                 "trainer.max_epochs=1", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
                 "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                 "model.hidden=4", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import yaml

    res = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # model.hidden is fixed on the command line (kept tiny), the other three are searched
    assert set(res["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "model.dropout"}
    assert np.isfinite(res["best_value"])
    assert len(list(sweep.glob("*/checkpoints/best.ckpt"))) == 2


def _bn_state(ckpt: Path) -> dict:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_freeze_bn_stops_the_running_statistics_but_not_the_training(data32, tmp_path):
    """Same seed and data: a 2-epoch run frozen from half-way keeps the BatchNorm statistics of
    the 1-epoch run exactly, while its weights keep moving; an unfrozen 2-epoch run does not."""
    torch.set_num_threads(1)
    runs = {"one": ["trainer.max_epochs=1"],
            "frozen": ["trainer.max_epochs=2", "callbacks=freeze_bn", "callbacks.freeze_bn.start=0.5"],
            "free": ["trainer.max_epochs=2"]}
    ck = {}
    for name, over in runs.items():
        train(cfg_for(data32, tmp_path / name, *over, "callbacks.early_stopping=null"))
        ck[name] = tmp_path / name / "checkpoints" / "last.ckpt"
    one, frozen, free = (_bn_state(ck[n]) for n in ("one", "frozen", "free"))
    assert one and set(one) == set(frozen)
    for k in one:
        torch.testing.assert_close(frozen[k], one[k], rtol=0, atol=0)
    assert any(not torch.equal(free[k], one[k]) for k in one), "an unfrozen epoch should move the statistics"
    w = {n: torch.load(ck[n], weights_only=True)["state_dict"] for n in ("one", "frozen")}
    conv = [k for k in w["one"] if k.endswith("weight") and w["one"][k].ndim == 4]
    assert conv and any(not torch.equal(w["frozen"][k], w["one"][k]) for k in conv), "weights must keep training"


def test_freeze_bn_refuses_a_start_outside_the_run():
    from cosmoinfer.training.callbacks import FreezeBatchNorm

    with pytest.raises(ValueError, match="start must be in"):
        FreezeBatchNorm(start=1.0)
