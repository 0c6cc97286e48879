"""The whole study in one folder, as `cosmoinfer-pipeline` runs it: simulate -> train M members ->
evaluate 4 ways (val and test) -> report.

Each stage runs the real console script in a subprocess, exactly as a user would, and writes
into one output folder::

    out_dir/
      data/                       simulated CMD-layout files + manifest   (skipped for real CMD data)
      members/{0..M-1}/           one training run each: checkpoints/, metrics.csv, split.json
      heads/{0..M-1}/             with pipeline.head: a new head on member i's frozen backbone (evaluated
                                  in place of the members)
      predictions/{method}/{split}/predictions.h5
      report/                     report.html, metrics.json, figures/
      logs/                       one log per stage

The stage runner (:mod:`cosmoinfer.stages`) reuses a stage only when it finished under the same
composed configuration and the same inputs; anything else is redone, with everything downstream,
and the terminal says why. A training member interrupted mid-run resumes from its ``last.ckpt``.
``pipeline.fresh=true`` redoes every stage.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cosmoinfer.calibration.headline import headline
from cosmoinfer.errors import InputError, ensure_writable_dir
from cosmoinfer.stages import FolderLock, Stage, StageRunner, fmt_seconds, terminate_on_sigterm

#: Prefixes of command-line overrides forwarded to cosmoinfer-train.
TRAIN_KEYS = ("data.", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks", "logger", "seed")


#: Files each kind of stage leaves in its folder (glob patterns); a stage missing one is redone.
OUTPUTS = {"simulate": ("Maps_*.npy",), "train": ("checkpoints/best.ckpt",), "evaluate": ("predictions.h5",),
           "report": ("report.html", "metrics.json")}


def forwarded_overrides(task_overrides) -> list[str]:
    """The user's overrides meant for training (``data.*``, ``model.*``, ``trainer.*``...)."""
    return [o for o in task_overrides if o.lstrip("+~").startswith(TRAIN_KEYS)]


def build_stages(cfg: DictConfig, task_overrides=()) -> list[Stage]:
    """The pipeline's stages in running order (each after the stages it reads)."""
    p = cfg.pipeline
    out = Path(cfg.out_dir).resolve()
    logs, hydra_dir = out / "logs", out / ".hydra_runs"
    train_over = [f"experiment={cfg.experiment_name}", *forwarded_overrides(task_overrides)]

    def stage(name, cli, config_name, args, folder, inputs=(), resumable=False) -> Stage:
        log_name = name.replace("member ", "").replace(" ", "_") + ".log"
        return Stage(name=name, module=f"cosmoinfer.cli.{cli}", config_name=config_name, args=args,
                     folder=folder, log_file=logs / log_name, out=out, inputs=list(inputs), resumable=resumable,
                     outputs=OUTPUTS[cli])

    stages: list[Stage] = []
    # 1. simulate (synthetic experiments only)
    data_args, upstream = [], []
    if p.get("simulate"):
        data_dir = out / "data"
        sim = OmegaConf.to_container(p.simulate, resolve=True)
        args = [f"simulator={sim.pop('simulator')}", f"out_dir={data_dir}", "progress=false",
                f"hydra.run.dir={hydra_dir}/simulate", *[f"{k}={_fmt(v)}" for k, v in sim.items()]]
        stages.append(stage("simulate", "simulate", "simulate", args, data_dir))
        upstream = [stages[-1]]
        data_args = [f"data.root={data_dir}"]
    elif not cfg.get("data", {}).get("root"):
        raise InputError("data.root", "this experiment trains on existing data: set data.root=/path/to/CMD")

    # 2. train M ensemble members (seeds 0..M-1)
    members = []
    for i in range(int(p.members)):
        folder = out / "members" / str(i)
        args = [f"seed={i}", f"out_dir={folder}", "resume=true", f"hydra.run.dir={hydra_dir}/train_{i}",
                *train_over, *data_args]
        members.append(stage(f"train member {i}", "train", "train", args, folder, upstream, resumable=True))
    stages.extend(members)
    # 2b. optionally a new head on each member's frozen backbone (pipeline.head: its training overrides)
    heads = []
    for i, m in enumerate(members if p.get("head") else ()):
        folder = out / "heads" / str(i)
        args = [f"seed={i}", f"out_dir={folder}", "resume=true", f"hydra.run.dir={hydra_dir}/train_head_{i}",
                *train_over, *data_args, f"transfer.checkpoint={m.folder / 'checkpoints' / 'best.ckpt'}",
                *[str(o) for o in p.head]]
        heads.append(stage(f"train head {i}", "train", "train", args, folder, [m], resumable=True))
    stages.extend(heads)
    nets = heads or members
    ckpts = [str(m.folder / "checkpoints" / "best.ckpt") for m in nets]

    # 3. evaluate every method on val (for recalibration) and test
    evals = {}
    for method in p.methods:
        n_use = 1 if method in ("single", "mc_dropout", "bnn") else len(members)
        for split in ("val", "test"):
            folder = out / "predictions" / method / split
            args = [f"evaluator={method}", f"checkpoints=[{','.join(ckpts[:n_use])}]", f"split={split}",
                    f"out_dir={folder}", f"hydra.run.dir={hydra_dir}/evaluate_{method}_{split}"]
            if "mc_dropout" in method:
                args.append(f"evaluator.n_samples={int(p.mc_samples)}")
            if p.get("tta"):
                args.append("tta=true")
            evals[(method, split)] = stage(f"evaluate {method} {split}", "evaluate", "evaluate", args, folder,
                                           nets[:n_use])
    stages.extend(evals.values())

    # 4. report
    methods = list(p.methods)
    pred = {k: s.folder / "predictions.h5" for k, s in evals.items()}
    args = [f"predictions=[{','.join(str(pred[(m, 'test')]) for m in methods)}]",
            f"val_predictions=[{','.join(str(pred[(m, 'val')]) for m in methods)}]",
            f"labels=[{','.join(methods)}]", f"out_dir={out / 'report'}", f"hydra.run.dir={hydra_dir}/report"]
    stages.append(stage("report", "report", "report", args, out / "report", list(evals.values())))
    return stages


def run_pipeline(cfg: DictConfig, task_overrides=()) -> Path:
    """Run (or reuse) every stage; print a summary and return the path of ``report.html``."""
    out = ensure_writable_dir(Path(cfg.out_dir).resolve(), "out_dir")  # before any stage runs
    out.mkdir(parents=True, exist_ok=True)
    terminate_on_sigterm()
    t0 = time.time()
    with FolderLock(out):
        stages = build_stages(cfg, task_overrides)
        if cfg.pipeline.get("fresh"):
            print(f"[pipeline] fresh run: removing every stage's earlier output in {out}", flush=True)
            for s in stages:
                if s.folder.exists():
                    shutil.rmtree(s.folder)
        runner = StageRunner()
        print(f"[pipeline] {out} (stage logs in {out / 'logs'})", flush=True)
        members = [s for s in stages if s.name.startswith("train member")]
        launcher = cfg.pipeline.get("launcher")
        for s in stages:
            if launcher and s is members[0]:
                runner.run_together(members, lambda todo: _multirun_args(cfg, task_overrides, todo, launcher),
                                    out / "logs" / "train.log")
            elif not (launcher and s in members):
                runner.run(s)
    report = stages[-1].folder / "report.html"
    ran = [name for name, what, _ in runner.summary if what == "ran"]
    print(f"[pipeline] {len(ran)} of {len(stages)} stages run, {len(stages) - len(ran)} reused, "
          f"in {fmt_seconds(time.time() - t0)}", flush=True)
    for line in summary_lines(stages[-1].folder / "metrics.json"):
        print(line, flush=True)
    print(f"report: {report}", flush=True)
    return report


def _multirun_args(cfg, task_overrides, members: list[Stage], launcher: str) -> list[str]:
    """``cosmoinfer-train -m`` arguments that train ``members`` as one Hydra multirun (e.g. on SLURM)."""
    data_args = [a for a in members[0].args if a.startswith("data.root=")]
    seeds = ",".join(m.name.rsplit(" ", 1)[1] for m in members)
    return ["-m", f"seed={seeds}", f"hydra/launcher={launcher}", f"hydra.sweep.dir={members[0].folder.parent}",
            "hydra.sweep.subdir=${seed}", "resume=true", f"experiment={cfg.experiment_name}",
            *forwarded_overrides(task_overrides), *data_args]


def summary_lines(metrics_path: Path) -> list[str]:
    """A few lines for the terminal from ``metrics.json``: the method to trust and its verdicts."""
    try:
        metrics = json.loads(Path(metrics_path).read_text())
    except (OSError, ValueError):
        return []
    h = headline(metrics)
    lines = [f"trust: {h['method']} ({h['why']})"]
    lines += [f"  {name}: {text}" for name, text in h["verdicts"].items()]
    if h.get("warning"):
        lines.append(f"warning: {h['warning']}")
    return lines


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    return "null" if v is None else str(v)
