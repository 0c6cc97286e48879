"""Multi-stage runs: simulate -> train M members -> evaluate 4 ways (val and test) -> report.

Each stage runs the real console script in a subprocess, exactly as a user would, and writes
into one output folder::

    out_dir/
      data/                       simulated CMD-layout files + manifest   (skipped for real CMD data)
      members/{0..M-1}/           one training run each: checkpoints/, metrics.csv, split.json
      predictions/{method}/{split}/predictions.h5
      report/                     report.html, metrics.json, figures/

A stage whose outputs are complete is skipped (``.done`` markers written after the stage
succeeded); a training member interrupted mid-run is resumed from its ``last.ckpt``. Rerunning
after a crash therefore redoes only what is missing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cosmoinfer.errors import InputError, atomic_write_text

log = logging.getLogger("cosmoinfer.pipeline")

#: Prefixes of command-line overrides forwarded to cosmoinfer-train.
TRAIN_KEYS = ("data.", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks", "logger", "seed")


def _done(folder: Path) -> bool:
    return (folder / ".done").is_file()


def _mark_done(folder: Path, seconds: float) -> None:
    atomic_write_text(folder / ".done", f"{seconds:.1f} s\n")


def _run(stage: str, module: str, args: list[str], log_file: Path) -> float:
    """Run ``python -m module args``; its output goes to ``log_file``. Fails loudly on error."""
    cmd = [sys.executable, "-m", module, *args]
    log.debug("[%s] %s", stage, " ".join(cmd[2:]))
    print(f"[{stage}] running ... (log: {log_file})", flush=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_file, "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ))
    if rc != 0:
        tail = [ln for ln in log_file.read_text().splitlines() if ln.startswith("error:")]
        msg = tail[-1][len("error: "):] if tail else f"exited with status {rc}; see {log_file}"
        raise InputError(None, f"stage {stage} failed: {msg}")
    return time.time() - t0


def forwarded_overrides(task_overrides) -> list[str]:
    """The user's overrides meant for training (``data.*``, ``model.*``, ``trainer.*``...)."""
    return [o for o in task_overrides if o.lstrip("+~").startswith(TRAIN_KEYS)]


def run_pipeline(cfg: DictConfig, task_overrides=()) -> Path:
    p = cfg.pipeline
    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    hydra_dir = out / ".hydra_runs"
    train_over = [f"experiment={cfg.experiment_name}", *forwarded_overrides(task_overrides)]
    timings = {}

    # 1. simulate (synthetic experiments only)
    data_args = []
    if p.get("simulate"):
        data_dir = out / "data"
        if not _done(data_dir):
            sim = OmegaConf.to_container(p.simulate, resolve=True)
            args = [f"simulator={sim.pop('simulator')}", f"out_dir={data_dir}", f"hydra.run.dir={hydra_dir}/simulate"]
            args += [f"{k}={_fmt(v)}" for k, v in sim.items()]
            timings["simulate"] = _run("simulate", "cosmoinfer.cli.simulate", args, logs / "simulate.log")
            _mark_done(data_dir, timings["simulate"])
        else:
            print("[simulate] done already, skipped", flush=True)
        data_args = [f"data.root={data_dir}"]
    elif not cfg.get("data", {}).get("root"):
        raise InputError("data.root", "this experiment trains on existing data: set data.root=/path/to/CMD")

    # 2. train M ensemble members (seeds 0..M-1)
    members = [out / "members" / str(i) for i in range(int(p.members))]
    todo = [i for i, m in enumerate(members) if not _done(m)]
    if todo and p.get("launcher"):
        seeds = ",".join(str(i) for i in todo)
        args = ["-m", f"seed={seeds}", f"hydra/launcher={p.launcher}", f"hydra.sweep.dir={out / 'members'}",
                "hydra.sweep.subdir=${seed}", "resume=true", *train_over, *data_args]
        timings["train"] = _run("train", "cosmoinfer.cli.train", args, logs / "train.log")
        for i in todo:
            _mark_done(members[i], timings["train"])
    for i in todo if not p.get("launcher") else []:
        args = [f"seed={i}", f"out_dir={members[i]}", "resume=true", f"hydra.run.dir={hydra_dir}/train_{i}",
                *train_over, *data_args]
        timings[f"train_{i}"] = _run(f"train member {i}", "cosmoinfer.cli.train", args, logs / f"train_{i}.log")
        _mark_done(members[i], timings[f"train_{i}"])
    if not todo:
        print("[train] all members done already, skipped", flush=True)
    ckpts = [str(m / "checkpoints" / "best.ckpt") for m in members]

    # 3. evaluate every method on val (for recalibration) and test
    preds = {}
    for method in p.methods:
        use = ckpts[:1] if method in ("single", "mc_dropout") else ckpts
        for split in ("val", "test"):
            folder = out / "predictions" / method / split
            preds[(method, split)] = folder / "predictions.h5"
            if _done(folder):
                continue
            args = [f"evaluator={method}", f"checkpoints=[{','.join(use)}]", f"split={split}", f"out_dir={folder}",
                    f"hydra.run.dir={hydra_dir}/evaluate_{method}_{split}"]
            if "mc_dropout" in method:
                args.append(f"evaluator.n_samples={int(p.mc_samples)}")
            if p.get("tta"):
                args.append("tta=true")
            timings[f"evaluate_{method}_{split}"] = _run(f"evaluate {method} {split}", "cosmoinfer.cli.evaluate",
                                                         args, logs / f"evaluate_{method}_{split}.log")
            _mark_done(folder, timings[f"evaluate_{method}_{split}"])

    # 4. report (redone whenever an input changed)
    report_dir = out / "report"
    inputs_newer = any(preds[k].stat().st_mtime > (report_dir / ".done").stat().st_mtime
                       for k in preds) if _done(report_dir) else True
    if inputs_newer:
        methods = list(p.methods)
        args = [f"predictions=[{','.join(str(preds[(m, 'test')]) for m in methods)}]",
                f"val_predictions=[{','.join(str(preds[(m, 'val')]) for m in methods)}]",
                f"labels=[{','.join(methods)}]", f"out_dir={report_dir}", f"hydra.run.dir={hydra_dir}/report"]
        timings["report"] = _run("report", "cosmoinfer.cli.report", args, logs / "report.log")
        _mark_done(report_dir, timings["report"])
    report = report_dir / "report.html"
    print(f"report: {report}", flush=True)
    return report


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    return "null" if v is None else str(v)
