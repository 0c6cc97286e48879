"""cosmoinfer-pipeline end to end (tiny), rerun skipping, and config composition."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def _stage_lines(stdout: str) -> dict[str, str]:
    """``{stage name: its last line}`` of the pipeline's per-stage lines (``[name] ran in ...``)."""
    out = {}
    for ln in stdout.splitlines():
        if ln.startswith("[") and "]" in ln and not ln.startswith("[pipeline]"):
            out[ln[1:ln.index("]")]] = ln[ln.index("]") + 2:]
    return out


def test_pipeline_end_to_end_then_reruns_only_what_changed(tmp_path):
    out = tmp_path / "qs"
    args = ["cosmoinfer.cli.pipeline", "experiment=quickstart", f"out_dir={out}", "pipeline.simulate.n_sims=16",
            "pipeline.members=2", "pipeline.mc_samples=3", "trainer.max_epochs=1", "model.hidden=4",
            f"hydra.run.dir={tmp_path / 'h'}"]
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    report = out / "report" / "report.html"
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == f"report: {report}"
    assert report.is_file() and (out / "report" / "metrics.json").is_file()
    assert sorted(p.name for p in (out / "members").iterdir()) == ["0", "1"]
    for method in ("single", "ensemble", "mc_dropout", "ensemble_mc_dropout"):
        for split in ("val", "test"):
            with h5py.File(out / "predictions" / method / split / "predictions.h5") as f:
                assert f.attrs["method"] == method and f.attrs["split"] == split
    # every stage says it ran, in how long and why; then a count, the method to trust and the verdicts
    stages = _stage_lines(r.stdout)
    assert len(stages) == 12 and all(v.startswith("ran in ") and v.endswith("(new)") for v in stages.values()), stages
    assert "[pipeline] 12 of 12 stages run, 0 reused" in r.stdout
    trust = [ln for ln in lines if ln.startswith("trust: ")]
    assert len(trust) == 1 and trust[0].split()[1] in ("single", "ensemble", "mc_dropout", "ensemble_mc_dropout")
    assert [ln.strip().split(":")[0] for ln in lines if ln.startswith("  ")][:2] == ["Omega_m", "sigma_8"]
    assert len(lines) <= 40, r.stdout  # fits on a screen
    # the training logs on disk: one line per epoch, no progress-bar debris, no Lightning tips
    log = (out / "logs" / "train_0.log").read_text()
    assert "\r" not in log and "\x1b[" not in log and "Tip:" not in log and "epoch 1/1:" in log, log[-2000:]
    assert "evaluating " in (out / "logs" / "evaluate_single_test.log").read_text()

    # rerun: everything is complete, nothing is redone, and the terminal says so
    mtime = (out / "members" / "0" / "checkpoints" / "best.ckpt").stat().st_mtime
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(v.startswith("reused (same configuration and inputs") for v in _stage_lines(r.stdout).values())
    assert "[pipeline] 0 of 12 stages run, 12 reused" in r.stdout
    assert (out / "members" / "0" / "checkpoints" / "best.ckpt").stat().st_mtime == mtime

    # a lost predictions file is redone, and what reads it
    (out / "predictions" / "mc_dropout" / "test" / "predictions.h5").unlink()
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ran = {k: v for k, v in _stage_lines(r.stdout).items() if v.startswith("ran in")}
    assert sorted(ran) == ["evaluate mc_dropout test", "report"], ran
    assert ran["evaluate mc_dropout test"].endswith("(output missing: predictions.h5)")
    assert ran["report"].endswith("(input redone: evaluate mc_dropout test)")

    # another number of dropout passes: only the MC-dropout evaluations and the report, with the key named
    r = run([*args, "pipeline.mc_samples=4"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ran = {k: v for k, v in _stage_lines(r.stdout).items() if v.startswith("ran in")}
    assert sorted(ran) == ["evaluate ensemble_mc_dropout test", "evaluate ensemble_mc_dropout val",
                           "evaluate mc_dropout test", "evaluate mc_dropout val", "report"], ran
    assert "configuration changed: evaluator.n_samples 3 -> 4" in ran["evaluate mc_dropout val"]
    assert "input changed" in ran["report"]
    with h5py.File(out / "predictions" / "mc_dropout" / "test" / "predictions.h5") as f:
        assert int(f.attrs["n_samples"]) == 4

    # pipeline.tta=true redoes every evaluation, which says so in its file; members are kept
    r = run([*args, "pipeline.mc_samples=4", "pipeline.tta=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[pipeline] 9 of 12 stages run, 3 reused" in r.stdout, r.stdout
    for split in ("test", "val"):
        with h5py.File(out / "predictions" / "single" / split / "predictions.h5") as f:
            assert bool(f.attrs["tta"]) is True
    assert (out / "members" / "0" / "checkpoints" / "best.ckpt").stat().st_mtime == mtime


def test_pipeline_fresh_redoes_everything_and_a_second_pipeline_is_refused(tmp_path):
    from cosmoinfer.stages import FolderLock

    out = tmp_path / "qs"
    args = ["cosmoinfer.cli.pipeline", "experiment=quickstart", f"out_dir={out}", "pipeline.simulate.n_sims=12",
            "pipeline.members=1", "pipeline.methods=[single]", "trainer.max_epochs=1", "model.hidden=4",
            f"hydra.run.dir={tmp_path / 'h'}"]
    assert run(args, tmp_path).returncode == 0
    mtime = (out / "members" / "0" / "checkpoints" / "best.ckpt").stat().st_mtime
    r = run([*args, "pipeline.fresh=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[pipeline] 5 of 5 stages run, 0 reused" in r.stdout, r.stdout
    assert (out / "members" / "0" / "checkpoints" / "best.ckpt").stat().st_mtime != mtime
    # one more member and the ensemble: member 1 is trained, the ensemble evaluated, the rest reused
    r = run([*args, "pipeline.members=2", "pipeline.methods=[single,ensemble]"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ran = sorted(k for k, v in _stage_lines(r.stdout).items() if v.startswith("ran in"))
    assert ran == ["evaluate ensemble test", "evaluate ensemble val", "report", "train member 1"], r.stdout
    with h5py.File(out / "predictions" / "ensemble" / "test" / "predictions.h5") as f:
        assert int(f.attrs["n_members"]) == 2
    # another model width: both members and everything after them, the data kept
    more = [*args, "pipeline.members=2", "pipeline.methods=[single,ensemble]"]
    r = run([*more, "model.hidden=6"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = _stage_lines(r.stdout)
    assert lines["simulate"].startswith("reused") and "configuration changed: model.hidden 4 -> 6" in lines[
        "train member 0"], r.stdout
    assert sum(v.startswith("ran in") for v in lines.values()) == 7, r.stdout
    # other data: everything
    r = run([*more, "model.hidden=6", "pipeline.simulate.n_sims=14"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = _stage_lines(r.stdout)
    assert "configuration changed: n_sims 12 -> 14" in lines["simulate"], r.stdout
    assert all(v.startswith("ran in") for v in lines.values()) and len(lines) == 8, r.stdout
    # an out_dir that is a file: one line before anything runs
    (tmp_path / "a_file").write_text("x")
    r = run([*args[:2], f"out_dir={tmp_path / 'a_file'}", *args[3:]], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: out_dir: {tmp_path / 'a_file'} is a file, not a folder; set out_dir to a folder"], r.stderr
    # another pipeline holding the folder: one line, exit 2, nothing touched
    with FolderLock(out):
        r = run(args, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "another cosmoinfer-pipeline" in err[0] and str(out) in err[0], r.stderr


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its dead parent's reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killing_the_pipeline_leaves_no_live_child(tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "cosmoinfer.cli.pipeline", "experiment=quickstart", f"out_dir={out}",
            "pipeline.simulate.n_sims=12", "pipeline.members=1", "pipeline.methods=[single]",
            "trainer.max_epochs=100000", "callbacks.early_stopping=null", "model.hidden=4", f"hydra.run.dir={tmp_path / 'h'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = out / "logs" / "train_0.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "epoch 1/100000" in log.read_text()):
        time.sleep(0.5)
    children = [p for p in _processes_mentioning(f"out_dir={out / 'members' / '0'}") if p != proc.pid]
    assert children, "the training stage did not start"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15  # the child trains for hours unless it is stopped
    while time.time() < deadline and any(_alive(p) for p in children):
        time.sleep(0.5)
    assert [p for p in children if _alive(p)] == []


def test_pipeline_head_trains_a_flow_on_each_members_frozen_backbone(tmp_path):
    out = tmp_path / "qs"
    # a list of overrides: each one quoted (Hydra's grammar), as on a shell command line
    head = "pipeline.head=['loss=flow','model.view_average=true','callbacks=refit_head','callbacks.refit_head.epochs=1']"
    args = ["cosmoinfer.cli.pipeline", "experiment=quickstart", f"out_dir={out}", "pipeline.simulate.n_sims=12",
            "pipeline.members=2", "pipeline.methods=[ensemble]", "trainer.max_epochs=1", "model.hidden=4",
            f"hydra.run.dir={tmp_path / 'h'}"]
    r = run([*args, head], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "[pipeline] 8 of 8 stages run, 0 reused" in r.stdout, r.stdout
    with h5py.File(out / "predictions" / "ensemble" / "test" / "predictions.h5") as f:
        # the heads are evaluated, not the Gaussian members; each head sits on its own member's backbone
        assert [Path(c).parts[-4:-2] for c in f.attrs["checkpoints"]] == [("heads", "0"), ("heads", "1")]
        assert f["predictive"].attrs["kind"] in ("samples", "mixture_samples") and "samples" in f["predictive"]
        run_info = json.loads(f.attrs["run"])
    assert run_info["loss"]["name"] == "flow"
    assert Path(run_info["transfer"]["checkpoint"]).parts[-4:-2] == ("members", "0")
    # another head: the members are reused, the heads and everything after them redone
    r = run([*args, head.replace("epochs=1", "epochs=2")], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = _stage_lines(r.stdout)
    assert lines["train member 0"].startswith("reused") and lines["train member 1"].startswith("reused"), r.stdout
    assert lines["train head 1"].startswith("ran in") and lines["report"].startswith("ran in"), r.stdout
