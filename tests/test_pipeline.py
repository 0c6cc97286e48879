"""cosmoinfer-pipeline end to end (tiny), rerun skipping, and config composition."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import pytest
from hydra import compose, initialize_config_dir

from cosmoinfer.cli.common import CONF_DIR

EXPERIMENTS = ["quickstart", "grf_fisher", "camels_like_mtot", "camels_like_multifield", "cmd_illustristng_mtot"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_presets_compose_for_train_and_pipeline(name):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        train = compose("train", overrides=[f"experiment={name}", "out_dir=x", "data.root=somewhere"])
        pipe = compose("pipeline", overrides=[f"experiment={name}", "out_dir=x"])
    assert train.data.params[:2] == ["Omega_m", "sigma_8"]
    assert train.trainer.max_epochs >= 1 and train.model.arch == "cmd_cnn"
    assert (pipe.pipeline.simulate is None) == (name == "cmd_illustristng_mtot")


@pytest.mark.parametrize("group,choice", [("trainer", "gpu"), ("trainer", "ddp"), ("trainer", "ddp_cpu"),
                                          ("logger", "tensorboard"), ("model", "resnet"), ("model", "ps_mlp")])
def test_config_groups_compose(group, choice):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={choice}", "out_dir=x"])
    assert cfg[group]


def test_slurm_launcher_and_optuna_sweeper_compose():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", "hydra/launcher=slurm", "out_dir=x"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "model.dropout", "model.hidden"}


def run(args, cwd, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_pipeline_end_to_end_then_rerun_redoes_only_what_is_missing(tmp_path):
    out = tmp_path / "qs"
    args = ["cosmoinfer.cli.pipeline", "experiment=quickstart", f"out_dir={out}", "pipeline.simulate.n_sims=16",
            "pipeline.members=2", "pipeline.mc_samples=3", "trainer.max_epochs=1", "model.hidden=4",
            "callbacks.progress_bar=null", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'h'}"]
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    report = out / "report" / "report.html"
    assert r.stdout.strip().splitlines()[-1] == f"report: {report}"
    assert report.is_file() and (out / "report" / "metrics.json").is_file()
    assert sorted(p.name for p in (out / "members").iterdir()) == ["0", "1"]
    for method in ("single", "ensemble", "mc_dropout", "ensemble_mc_dropout"):
        for split in ("val", "test"):
            with h5py.File(out / "predictions" / method / split / "predictions.h5") as f:
                assert f.attrs["method"] == method and f.attrs["split"] == split
    # rerun: everything is complete, nothing is redone
    mtime = (out / "members" / "0" / "checkpoints" / "best.ckpt").stat().st_mtime
    r = run(args, tmp_path)
    assert r.returncode == 0 and "[train member" not in r.stdout and "[evaluate" not in r.stdout
    assert (out / "members" / "0" / "checkpoints" / "best.ckpt").stat().st_mtime == mtime
    # a lost predictions file (a crash before it was written) is redone, and only it
    (out / "predictions" / "mc_dropout" / "test" / ".done").unlink()
    (out / "predictions" / "mc_dropout" / "test" / "predictions.h5").unlink()
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    stages = [ln for ln in r.stdout.splitlines() if ln.startswith("[") and "running" in ln]
    assert [s.split("]")[0] for s in stages] == ["[evaluate mc_dropout test", "[report"]
    # pipeline.tta=true: the redone evaluation averages over the 8 rotations/flips, and says so in its file
    (out / "predictions" / "single" / "test" / ".done").unlink()
    r = run([*args, "pipeline.tta=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for split, tta in (("test", True), ("val", False)):
        with h5py.File(out / "predictions" / "single" / split / "predictions.h5") as f:
            assert bool(f.attrs["tta"]) is tta
