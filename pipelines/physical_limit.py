"""The statistical benchmark ("the physical limit"): networks against the exact GRF posterior.

One command runs every stage as the real console script in a subprocess (as a user would),
computes the figures and writes them to ``benchmarks/results/physical_limit.json`` (shaped
``{experiment: {parameter: {metric: value}}}``) and to the section "## Physical limit (statistical
benchmark)" of ``benchmarks/RESULTS.md``, with the run record (each part's date and scale, training
times, the cross-suite report verdicts) beside the JSON in ``physical_limit_info.json``::

    python -m pipelines.physical_limit [--scale quick|reduced|full] [--only grf|camels|cross|sweep]
                                       [--out runs/physical_limit] [--jobs 2] [--threads 1]

Parts (``--only`` picks one; default: all):

* ``grf``: the ``grf_fisher`` experiment (Omega_m, sigma_8 from 64^2 GRF maps of the 25 Mpc/h box,
  LH priors; 19 200 training / 8 100 test maps at ``reduced``, 42 240 / 17 820 at ``full``): the default CMD CNN
  (ensemble member 0, capped at ``trainer.max_time``), further ensemble members, and the
  power-spectrum baseline (``model=ps_mlp``), evaluated on val and test; evaluate adds the exact
  posterior of every map (``exact_mean``, ``exact_std``, ``exact_log_prob``, ``exact_hpd`` ...:
  :func:`cosmoinfer.uncertainty.evaluate.exact_posterior_datasets`). The CNNs are evaluated with test-time
  augmentation (``tta=true``: the mean and variance averaged over the 8 rotations/flips of each map,
  under which the GRF likelihood is invariant) and member 0 also without it (``grf_fisher_no_tta``).
  Per parameter (the definitions of :mod:`cosmoinfer.calibration.exact`, shared with the report):

  - ``efficiency`` = MSE(exact posterior mean) / MSE(network mean) (1 = the physical limit);
  - ``std_ratio_median`` = median of network std / exact posterior std;
  - ``mean_shift`` = RMS over maps of (network mean - exact mean) / exact std (until 2026-12 this
    was RMS(network mean - exact mean) / mean exact std, which weights the wide posteriors);
  - ``coverage_error`` (max |empirical - nominal| over the levels 0.05 ... 0.95) of the Gaussian
    intervals, before and after variance scaling (``coverage_error_recalibrated``) and isotonic
    recalibration (``coverage_error_isotonic``), judged on test and fitted on the calibration set:
    every map of ``calib_sims`` fresh simulations (seed 1, 60 000 maps at ``full``), which each
    model evaluates like test (``split=all data.root=.../calib_data``). The val split (5 940 maps)
    is too small a fit set: its noise alone moved the isotonic figure to 0.024;
  - ``rmse``, ``exact_rmse``, ``train_minutes`` (wall clock of the training process);
  - the same for the baseline, prefixed ``baseline_`` (``baseline_rmse`` ...).

  Joint figures of the whole predictive sit under the pseudo-parameter ``joint`` of each
  experiment (``cosmoinfer.calibration.compute_metrics``' ``joint`` block, from the stored
  predictive): ``expected_kl`` (mean over test maps of log p_exact(theta_true|x) - log q(theta_true|x),
  nats) with its 95% bootstrap interval over simulations ``expected_kl_lo`` / ``_hi``,
  ``hpd_coverage_error`` (max |empirical - nominal| coverage of the highest-density regions over the
  levels 0.05 ... 0.95) and the joint ``nll``; the baseline's prefixed ``baseline_``, and the exact
  posterior's own ``exact_hpd_coverage_error`` and ``exact_nll`` (its expected KL is 0).

* ``camels``: ``camels_like_mtot`` (CNN vs power-spectrum baseline on Mtot maps), and
  ``camels_like_multifield`` (Mtot, Mgas, T, Mstar as channels, inferring Omega_m, sigma_8, A_SN1,
  A_AGN1) against CNNs on each single field with the same parameters (``camels_like_single_<F>``).
* ``cross``: the camels models trained on SynthTNG (Mtot CNN and baseline, the Mgas CNN, the
  multifield CNN and baseline), evaluated on every SynthSIMBA map (``cosmoinfer-evaluate ...
  data.suite=SynthSIMBA data.root=... split=all``); recalibration fitted on the SynthTNG validation
  set; the report's verdicts go to RESULTS.md. Mtot hardly depends on the feedback; the gas fields
  do, through mappings that differ between the suites, so they are the sharper test.
* ``sweep``: CNN vs baseline on Mtot maps for several ``simulator.lognormal_amplitude`` values
  (more non-Gaussian matter: the CNN's advantage should grow).

Every CNN is evaluated with test-time augmentation (``TTA``; a power spectrum binned in |k| is
invariant under the 8 rotations/flips already, so the baselines need none). CNN gains over the
baseline come with a 95% bootstrap interval over the test simulations (``rmse_gain_lo``/``_hi``).

Stages whose output is complete are skipped (``.done`` markers), so a rerun redoes only what is
missing and ``--only`` parts can be run one after the other. ``--jobs`` stages run at once, each
with ``--threads`` torch/BLAS threads (on a 2-core machine: 2 jobs x 1 thread). ``--scale quick``
is a tiny smoke run (it writes its JSON and table into ``--out``, not into ``benchmarks/``).
Statistical targets are measured here, never asserted in unit tests.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cosmoinfer.errors import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Physical limit (statistical benchmark)"
PARTS = ("grf", "camels", "cross", "sweep")
#: Metric names of the grf experiments (the JSON contract).
GRF_METRICS = ("efficiency", "std_ratio_median", "mean_shift", "coverage_error", "coverage_error_recalibrated",
               "rmse", "train_minutes", "baseline_rmse")
#: Joint (whole-predictive) figures of the grf experiments, under the pseudo-parameter ``joint``.
GRF_JOINT = ("expected_kl", "expected_kl_lo", "expected_kl_hi", "hpd_coverage_error", "nll")
TARGETS = {"efficiency": 0.97, "std_ratio": 0.05, "mean_shift": 0.2, "coverage_error_recalibrated": 0.02,
           "train_minutes": 20.0, "camels_gain": 0.10}
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
#: evaluate's test-time augmentation: every CNN prediction averaged over the 8 rotations/flips of the map
TTA = ["tta=true"]
MULTI_PARAMS = "[Omega_m,sigma_8,A_SN1,A_AGN1]"
MULTI_FIELDS = ("Mtot", "Mgas", "T", "Mstar")


# --------------------------------------------------------------------------- scales


#: the camels CNNs at ``full`` scale on 2 CPU cores (also what ``reduced`` uses, on 32^2 maps)
CPU_CNN = ["model.hidden=8", "trainer.max_epochs=12"]


def scale_config(scale: str) -> dict:
    """What each part runs at ``quick`` (smoke test), ``reduced`` (2 CPU cores, ~75 min) or ``full``."""
    if scale == "quick":
        tiny = ["model.hidden=2", "trainer.max_epochs=1", "data.batch_size=16"]
        return dict(
            grf=dict(n_sims=8, grid=32, split="[0.5,0.25,0.25]", members=2, cnn=tiny, member=tiny,
                     ps=["trainer.max_epochs=1"], exact_grid=24, calib_sims=4),
            camels=dict(n_sims=8, grid=16, split="[0.5,0.25,0.25]", cnn=tiny, ps=["trainer.max_epochs=1"]),
            sweep=dict(knob="lognormal_amplitude", values=[0.5, 1.5], n_sims=8, grid=16, split="[0.5,0.25,0.25]",
                       cnn=tiny, ps=["trainer.max_epochs=1"]),
        )
    if scale == "reduced":
        return dict(
            # the grf_fisher network on half its data (2000 simulations); members 1.. with fewer epochs
            grf=dict(n_sims=2000, grid=64, split=None, members=2, cnn=[], member=["trainer.max_epochs=3"],
                     ps=["trainer.max_epochs=20"], exact_grid=96, calib_sims=1000),
            camels=dict(n_sims=200, grid=32, split=None, cnn=CPU_CNN, ps=["trainer.max_epochs=30"]),
            sweep=dict(knob="lognormal_amplitude", values=[0.5, 1.0, 1.5, 2.0], n_sims=400, grid=32, split=None,
                       cnn=["model.hidden=8", "trainer.max_epochs=15"], ps=["trainer.max_epochs=30"]),
        )
    if scale == "full":
        return dict(
            # calib_sims: the calibration set the recalibrations are fitted on (4000 fresh simulations,
            # 60 000 maps); fitted on the 5 940 val maps the isotonic figure was val-set noise (0.024 for
            # sigma_8, against 0.003 fitted on the calibration set, same test maps)
            grf=dict(n_sims=4400, grid=64, split=None, members=3, cnn=[], member=[], ps=["trainer.max_epochs=20"],
                     exact_grid=128, calib_sims=4000),
            # camels/sweep: the issue's configuration (64^3 box -> 64^2 slab maps, 1000 simulations per
            # suite) with the CNN sized for 2 CPU cores (hidden 8: ~70 s per epoch of 12 000 maps; the
            # presets' hidden 16 takes ~3x as long); on a GPU drop the two overrides
            camels=dict(n_sims=1000, grid=64, split=None, cnn=CPU_CNN, ps=["trainer.max_epochs=30"]),
            # no early stopping for the sweep's CNNs: the val loss of eval-mode BatchNorm swings between
            # epochs, and patience 5 stopped the amplitude-1.5 and 2.0 CNNs after 10 and 8 epochs at best
            # epochs 4 and 2 (gains 21% / 7% and 18% / 10%, against 18% / 15% at amplitude 1)
            sweep=dict(knob="lognormal_amplitude", values=[0.5, 1.0, 1.5, 2.0], n_sims=400, grid=64, split=None,
                       cnn=[*CPU_CNN, "callbacks.early_stopping=null"], ps=["trainer.max_epochs=30"]),
        )
    raise SystemExit(f"error: --scale must be quick, reduced or full, got {scale!r}")


def ps_overrides(grid: int, positive: bool) -> list[str]:
    """The power-spectrum baseline in place of the CNN: linear |k| bins to the grid corner, a 128-unit MLP.

    The bins run to the grid corner (``model.k_max=corner``), so the baseline sees every mode the
    CNN sees: the ~21% of modes beyond Nyquist carry a good part of the amplitude information (on
    the grf_fisher maps an MLP on Nyquist-limited bins reached efficiency ~0.88, with the corner
    bins ~0.94, from the same 21 000 maps). Positive fields (camels_like) also give the baseline
    the log map mean (``model.include_mean=true``), which the overdensity spectra drop: a Mtot
    map's mean is ``rho_crit Omega_m L_s`` times the slab density, a near-direct Omega_m measurement
    that the CNN sees, so without it the CNN-vs-PS gap would be mostly the mean.
    """
    out = ["model=ps_mlp", f"model.n_bins={min(32, grid // 2)}", "model.hidden=128", "model.k_max=corner"]
    if positive:
        out.append("model.include_mean=true")
    else:  # GRF delta maps: spectrum of M - mean(M), not of M / mean(M) - 1
        out.append("model.overdensity=false")
    return out


# --------------------------------------------------------------------------- task runner


@dataclass
class Task:
    """One console-script run; complete when ``folder/.done`` exists (it holds the wall seconds)."""

    name: str
    module: str
    args: list[str]
    folder: Path
    deps: list[str] = field(default_factory=list)


def done_seconds(folder: Path) -> float | None:
    f = folder / ".done"
    if not f.is_file():
        return None
    m = re.match(r"\s*([0-9.]+)", f.read_text())
    return float(m.group(1)) if m else float("nan")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class Runner:
    """Runs tasks as subprocesses, ``jobs`` at a time, in dependency order; skips finished ones."""

    def __init__(self, out: Path, jobs: int, threads: int):
        self.out, self.jobs = out, max(1, int(jobs))
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                        PYTHONUNBUFFERED="1")
        self.logs = out / "logs"
        self.failed: dict[str, str] = {}
        self._lock = threading.Lock()

    def _run_one(self, t: Task) -> None:
        lock = t.folder / ".lock"
        # a run of this stage started by another process (e.g. an earlier invocation): wait for it
        while lock.is_file() and not (t.folder / ".done").is_file():
            try:
                pid = int(lock.read_text().split()[0])
            except (ValueError, IndexError):
                break
            if pid == os.getpid() or not _alive(pid):
                break
            time.sleep(10)
        if (t.folder / ".done").is_file():
            print(f"[{t.name}] done already, skipped", flush=True)
            return
        t.folder.mkdir(parents=True, exist_ok=True)
        lock.write_text(f"{os.getpid()}\n")
        log_file = self.logs / f"{t.name.replace(' ', '_').replace('/', '_')}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", t.module, *t.args]
        print(f"[{t.name}] running ... (log: {log_file})", flush=True)
        t0 = time.time()
        with open(log_file, "w") as fh:
            fh.write(" ".join(cmd) + "\n")
            fh.flush()
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        dt = time.time() - t0
        lock.unlink(missing_ok=True)
        if rc != 0:
            err = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.startswith("error:")]
            raise RuntimeError(err[-1] if err else f"exited with status {rc}; see {log_file}")
        (t.folder / ".done").write_text(f"{dt:.1f} s\n")
        print(f"[{t.name}] finished in {dt / 60:.1f} min", flush=True)

    def run(self, tasks: list[Task]) -> None:
        names = [t.name for t in tasks]
        assert len(set(names)) == len(names), "task names must be unique"
        pending = {t.name: t for t in tasks}
        finished: set[str] = set()
        running = {}
        with ThreadPoolExecutor(self.jobs) as pool:
            while pending or running:
                for name, t in list(pending.items()):
                    bad = [d for d in t.deps if d in self.failed]
                    if bad:
                        self.failed[name] = f"skipped: {bad[0]} failed"
                        print(f"[{name}] skipped ({bad[0]} failed)", flush=True)
                        del pending[name]
                    elif len(running) < self.jobs and all(d in finished or d not in names for d in t.deps):
                        running[pool.submit(self._run_one, t)] = name
                        del pending[name]
                if not running:
                    if pending:  # nothing runnable: a dependency cycle or an unknown name
                        for name in pending:
                            self.failed[name] = "unrunnable dependencies"
                        pending.clear()
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    try:
                        fut.result()
                        finished.add(name)
                    except Exception as err:  # a failed stage: record it, keep running the others
                        self.failed[name] = str(err)
                        print(f"[{name}] FAILED: {err}", flush=True)


# --------------------------------------------------------------------------- task builders


def _list(xs) -> str:
    return "[" + ",".join(str(x) for x in xs) + "]"


def simulate_task(name: str, folder: Path, out: Path, simulator: str, n_sims: int, grid: int, suites, fields,
                  extra=(), seed: int = 0) -> Task:
    args = [f"simulator={simulator}", f"n_sims={n_sims}", f"grid={grid}", f"seed={seed}", f"suites={_list(suites)}",
            f"fields={_list(fields)}", "progress=false", f"out_dir={folder}",
            f"hydra.run.dir={out / '.hydra_runs' / name.replace(' ', '_')}", *extra]
    return Task(name, "cosmoinfer.cli.simulate", args, folder)


def train_task(name: str, folder: Path, out: Path, experiment: str, data_root: Path, seed: int, overrides,
               deps) -> Task:
    args = [f"experiment={experiment}", f"seed={seed}", f"out_dir={folder}", "resume=true", f"data.root={data_root}",
            f"hydra.run.dir={out / '.hydra_runs' / name.replace(' ', '_')}", *QUIET, *overrides]
    return Task(name, "cosmoinfer.cli.train", args, folder, list(deps))


def eval_task(name: str, folder: Path, out: Path, ckpts, split: str, deps, extra=()) -> Task:
    method = "single" if len(ckpts) == 1 else "ensemble"
    args = [f"evaluator={method}", f"checkpoints={_list(ckpts)}", f"split={split}", f"out_dir={folder}",
            f"hydra.run.dir={out / '.hydra_runs' / name.replace(' ', '_')}", *extra]
    return Task(name, "cosmoinfer.cli.evaluate", args, folder, list(deps))


def _tta(model_name: str) -> list[str]:
    """Test-time augmentation for the CNNs; none for the power-spectrum baselines (already invariant)."""
    return TTA if model_name.endswith("cnn") else []


def _ckpt(member: Path) -> str:
    return str(member / "checkpoints" / "best.ckpt")


def grf_tasks(out: Path, sc: dict) -> list[Task]:
    g = sc["grf"]
    root = out / "grf"
    data = root / "data"
    split = [f"data.split_fractions={g['split']}"] if g["split"] else []
    calib = root / "calib_data"  # the calibration set: fresh simulations (seed 1), every map fits recalibrations
    tasks = [simulate_task("grf simulate", data, out, "grf", g["n_sims"], g["grid"], ["GRF"], ["delta"]),
             simulate_task("grf simulate calib", calib, out, "grf", g["calib_sims"], g["grid"], ["GRF"], ["delta"],
                           seed=1)]
    members = [root / "cnn" / "members" / str(i) for i in range(int(g["members"]))]
    for i, m in enumerate(members):
        over = g["cnn"] if i == 0 else g["member"]
        tasks.append(train_task(f"grf train cnn {i}", m, out, "grf_fisher", data, i, [*split, *over],
                                ["grf simulate"]))
    ps = root / "ps" / "members" / "0"
    # the PS baseline keeps the plain NLL (its best recipe): with grf_fisher's beta-NLL it reached
    # 0.943 / 0.922 efficiency (widths 1.19 / 1.14) against 0.950 / 0.967 (1.01 / 1.02)
    tasks.append(train_task("grf train ps", ps, out, "grf_fisher", data, 0,
                            [*split, *ps_overrides(g["grid"], positive=False), "~model.pool", "~model.activation",
                             "loss.beta=0.0", *g["ps"]],
                            ["grf simulate"]))
    exact = [f"exact_grid={g['exact_grid']}"]
    models = {"cnn_single": ([members[0]], ["grf train cnn 0"], TTA),
              "cnn_single_no_tta": ([members[0]], ["grf train cnn 0"], []),
              "ps": ([ps], ["grf train ps"], [])}
    if len(members) > 1:
        models["cnn_ensemble"] = (members, [f"grf train cnn {i}" for i in range(len(members))], TTA)
    for label, (ms, deps, tta) in models.items():
        for split_name in ("val", "test"):
            tasks.append(eval_task(f"grf evaluate {label} {split_name}", root / "predictions" / label / split_name,
                                   out, [_ckpt(m) for m in ms], split_name, deps, [*exact, *tta]))
        tasks.append(eval_task(f"grf evaluate {label} calib", root / "predictions" / label / "calib", out,
                               [_ckpt(m) for m in ms], "all", [*deps, "grf simulate calib"],
                               [f"data.root={calib}", *exact, *tta]))
    return tasks


def _camels_sim(out: Path, c: dict) -> Task:
    return simulate_task("camels simulate", out / "camels" / "data", out, "camels_like", c["n_sims"], c["grid"],
                         ["SynthTNG", "SynthSIMBA"], list(MULTI_FIELDS))


def _camels_models(out: Path, c: dict) -> dict:
    """name -> (experiment, overrides) of every camels model."""
    split = [f"data.split_fractions={c['split']}"] if c["split"] else []
    models = {
        "mtot_cnn": ("camels_like_mtot", [*split, *c["cnn"]]),
        "mtot_ps": ("camels_like_mtot", [*split, *ps_overrides(c["grid"], True), *c["ps"]]),
        "multifield_cnn": ("camels_like_multifield", [*split, *c["cnn"]]),
        # the baselines keep the plain NLL (as on grf), the multifield CNNs the preset's beta-NLL
        "multifield_ps": ("camels_like_multifield", [*split, *ps_overrides(c["grid"], True), "loss.beta=0.0",
                                                     *c["ps"]]),
    }
    for f in MULTI_FIELDS:
        models[f"single_{f}_cnn"] = ("camels_like_multifield", [*split, f"data.fields=[{f}]", *c["cnn"]])
    return models


def camels_tasks(out: Path, sc: dict, cross_only: bool = False) -> list[Task]:
    c = sc["camels"]
    root = out / "camels"
    data = root / "data"
    tasks = [_camels_sim(out, c)]
    models = _camels_models(out, c)
    if cross_only:
        models = {k: v for k, v in models.items() if k in CROSS_MODELS}
    for name, (exp, over) in models.items():
        tasks.append(train_task(f"camels train {name}", root / "models" / name, out, exp, data, 0, over,
                                ["camels simulate"]))
        if not cross_only:
            for split_name in ("val", "test"):
                tasks.append(eval_task(f"camels evaluate {name} {split_name}", root / "predictions" / name / split_name,
                                       out, [_ckpt(root / "models" / name)], split_name, [f"camels train {name}"],
                                       _tta(name)))
    return tasks


#: cross-suite experiments: JSON key suffix -> (CNN, PS baseline or None), camels models trained on SynthTNG
CROSS = {"": ("mtot_cnn", "mtot_ps"), "_Mgas": ("single_Mgas_cnn", None),
         "_multifield": ("multifield_cnn", "multifield_ps")}
CROSS_MODELS = tuple(m for pair in CROSS.values() for m in pair if m)


def cross_tasks(out: Path, sc: dict) -> list[Task]:
    """Train on SynthTNG (the camels models of ``CROSS``), evaluate on all SynthSIMBA maps."""
    root = out / "camels"
    tasks = camels_tasks(out, sc, cross_only=True)
    for name in CROSS_MODELS:
        dep = [f"camels train {name}"]
        ck = [_ckpt(root / "models" / name)]
        for split_name in ("val", "test"):  # in-suite predictions (also made by the camels part)
            tasks.append(eval_task(f"camels evaluate {name} {split_name}", root / "predictions" / name / split_name,
                                   out, ck, split_name, dep, _tta(name)))
        tasks.append(eval_task(f"cross evaluate {name} SynthSIMBA", out / "cross" / "predictions" / name, out, ck,
                               "all", dep, [f"data.root={root / 'data'}", "data.suite=SynthSIMBA", *_tta(name)]))
    return tasks


def sweep_tasks(out: Path, sc: dict) -> list[Task]:
    s = sc["sweep"]
    split = [f"data.split_fractions={s['split']}"] if s["split"] else []
    tasks = []
    for v in s["values"]:
        tag = f"{s['knob']}_{v}"
        root = out / "sweep" / tag
        sim = f"sweep simulate {tag}"
        tasks.append(simulate_task(sim, root / "data", out, "camels_like", s["n_sims"], s["grid"], ["SynthTNG"],
                                   ["Mtot"], [f"simulator.{s['knob']}={v}"]))
        for name, over in (("cnn", s["cnn"]), ("ps", [*ps_overrides(s["grid"], True), *s["ps"]])):
            tasks.append(train_task(f"sweep train {name} {tag}", root / "models" / name, out, "camels_like_mtot",
                                    root / "data", 0, [*split, *over], [sim]))
            for split_name in ("val", "test"):
                tasks.append(eval_task(f"sweep evaluate {name} {tag} {split_name}",
                                       root / "predictions" / name / split_name, out, [_ckpt(root / "models" / name)],
                                       split_name, [f"sweep train {name} {tag}"], _tta(name)))
    return tasks


def all_tasks(out: Path, sc: dict, parts) -> list[Task]:
    tasks: dict[str, Task] = {}
    builders = {"grf": grf_tasks, "camels": camels_tasks, "cross": cross_tasks, "sweep": sweep_tasks}
    for p in parts:
        for t in builders[p](out, sc):
            tasks.setdefault(t.name, t)
    return list(tasks.values())


# --------------------------------------------------------------------------- metrics


def _read(path: Path):
    from cosmoinfer.calibration import read_predictions

    return read_predictions(path) if path.is_file() else None


def calibration_figures(test, val, ci: bool = False) -> dict[str, np.ndarray]:
    """Per parameter ``(P,)``: rmse, coverage error before and after variance scaling (fitted on val).

    ``ci``: also ``coverage_error_isotonic_ci_low`` / ``_high``, the simulation bootstrap interval
    of the isotonic figure (:func:`isotonic_error_interval`).
    """
    from cosmoinfer.calibration.metrics import coverage, coverage_error, rmse
    from cosmoinfer.calibration.recalibration import fit_isotonic, fit_std_scaling

    out = {"rmse": rmse(test.truth, test.mean),
           "coverage_error": coverage_error(coverage(test.truth, test.mean, test.std))}
    if val is not None:
        s = fit_std_scaling(val.truth, val.mean, val.std)
        out["coverage_error_recalibrated"] = coverage_error(coverage(test.truth, test.mean, test.std * s))
        out["recalibration_scale"] = s
        # isotonic recalibration of the PIT (fixes the shape, not only the width), also fitted on val
        iso = fit_isotonic(val.truth, val.mean, val.std)
        out["coverage_error_isotonic"] = coverage_error(iso.recalibrated_coverage(test.truth, test.mean, test.std))
        if ci:
            lo, hi = isotonic_error_interval(test, val)
            out["coverage_error_isotonic_ci_low"], out["coverage_error_isotonic_ci_high"] = lo, hi
    return out


def isotonic_error_interval(test, val, n_boot: int = 200, level: float = 0.95,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the coverage error after isotonic recalibration, each bound ``(P,)``.

    ``test`` and ``val`` carry ``truth``, ``mean``, ``std`` ``(N, P)`` and ``sim_id (N,)``. Each
    draw resamples the simulations of both sets with replacement (the maps of one simulation share
    their parameters), refits the recalibration on the val draw and judges it on the test draw. It
    measures how far the figure moves with the val and test sets alone: the floor below which a
    coverage-error target cannot tell two predictors apart.
    """
    from cosmoinfer.calibration.metrics import coverage_error, pit
    from cosmoinfer.calibration.recalibration import IsotonicCalibrator

    rng = np.random.default_rng(seed)
    pits, groups = [], []
    for p in (val, test):
        pits.append(pit(p.truth, p.mean, p.std))
        _, inv = np.unique(np.asarray(p.sim_id), return_inverse=True)
        order = np.argsort(inv, kind="stable")
        groups.append(np.split(order, np.cumsum(np.bincount(inv))[:-1]))  # map indices of each simulation
    errs = []
    for _ in range(int(n_boot)):
        v, t = (np.concatenate([g[i] for i in rng.integers(0, len(g), len(g))]) for g in groups)
        iso = IsotonicCalibrator.from_pit(pits[0][v])
        errs.append(coverage_error(iso.recalibrated_coverage_from_pit(pits[1][t])))
    lo, hi = np.quantile(np.array(errs), [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lo, hi


def exact_figures(test, val=None, ci: bool = False, reference: dict | None = None) -> dict[str, np.ndarray]:
    """Network vs exact posterior, per parameter ``(P,)`` (needs ``exact_mean``/``exact_std``).

    Also the reference figures of the exact posterior itself, :func:`exact_reference` of the same
    maps; ``reference`` passes them in when they are already computed (``{}``: leave them out).
    """
    from cosmoinfer.calibration.exact import efficiency, mean_shift, std_ratio_median

    em, es = test.extra["exact_mean"], test.extra["exact_std"]
    out = {"efficiency": efficiency(test.truth, test.mean, em),
           "std_ratio_median": std_ratio_median(test.std, es),
           "mean_shift": mean_shift(test.mean, em, es)}
    out.update(exact_reference(test, val, ci) if reference is None else reference)
    return out


def exact_reference(test, val=None, ci: bool = False) -> dict[str, np.ndarray]:
    """The exact posterior summarised as a Gaussian (its mean and std), scored like a network, ``(P,)`` each.

    ``exact_rmse`` and ``exact_coverage_error`` (before and, with ``val``, after variance scaling
    and after isotonic recalibration fitted on val; ``ci``: the latter's bootstrap interval). The
    exact posterior is non-Gaussian (truncated by the prior box), so its Gaussian intervals are not
    exactly calibrated: that is the floor for a Gaussian-head network; after isotonic
    recalibration what is left is the fitting noise of the val maps, the floor of any recalibrated
    predictor. Depends only on the maps, not on the network that predicted them.
    """
    ref = calibration_figures(_exact_as_gaussian(test),
                              _exact_as_gaussian(val) if val is not None and "exact_mean" in val.extra else None,
                              ci=ci)
    return {f"exact_{k}": v for k, v in ref.items() if k != "recalibration_scale"}


def joint_figures(test, prefix: str = "", exact: bool = False) -> dict:
    """Figures of the whole predictive of ``test`` (a :class:`Predictions`), for the ``joint`` entry.

    ``expected_kl`` / ``_lo`` / ``_hi``, ``hpd_coverage_error`` and ``nll`` from
    :func:`cosmoinfer.calibration.compute_metrics` (computed directly with the shared functions
    where its ``joint`` block lacks them), keys prefixed ``prefix``; ``exact``: also the exact
    posterior's own ``exact_hpd_coverage_error`` and ``exact_nll`` (from ``exact_hpd`` and
    ``exact_log_prob``). ``None`` where a figure cannot be computed.
    """
    from cosmoinfer.calibration.exact import expected_kl
    from cosmoinfer.calibration.metrics import DEFAULT_LEVELS, compute_metrics

    levels = np.asarray(DEFAULT_LEVELS, dtype=np.float64)

    def hpd_error(cred) -> float:
        return float(np.max(np.abs(np.mean(np.asarray(cred)[None, :] <= levels[:, None], axis=1) - levels)))

    rng = np.random.default_rng(0)
    joint = compute_metrics(test, rng=rng, n_posterior_samples=200, n_bootstrap=200)["joint"]
    log_q = None
    if "nll" not in joint or "hpd_coverage_error" not in joint:
        log_q = test.predictive.log_prob(test.truth)
        joint.setdefault("nll", float(-np.mean(log_q)))
        joint.setdefault("hpd_coverage_error", hpd_error(test.predictive.hpd_credibility(test.truth, rng)))
    if "expected_kl" not in joint and "exact_log_prob" in test.extra:
        log_q = test.predictive.log_prob(test.truth) if log_q is None else log_q
        joint["expected_kl"] = expected_kl(test.extra["exact_log_prob"], log_q, test.sim_id, rng)
    kl = joint.get("expected_kl") or {}
    out = {"expected_kl": kl.get("value"), "expected_kl_lo": kl.get("lo"), "expected_kl_hi": kl.get("hi"),
           "hpd_coverage_error": joint.get("hpd_coverage_error"), "nll": joint.get("nll")}
    out = {prefix + k: None if v is None else _num(v) for k, v in out.items()}
    if exact and "exact_hpd" in test.extra:
        out["exact_hpd_coverage_error"] = _num(hpd_error(test.extra["exact_hpd"]))
    if exact and "exact_log_prob" in test.extra:
        out["exact_nll"] = _num(-np.mean(test.extra["exact_log_prob"]))
    return out


def _same_maps(a, b) -> bool:
    """Whether two prediction sets (or ``None``s) are of the same maps (simulations, truths, exact posteriors)."""
    if a is None or b is None:
        return a is b
    return (a.n == b.n and np.array_equal(a.sim_id, b.sim_id) and np.array_equal(a.truth, b.truth)
            and np.array_equal(a.extra.get("exact_mean"), b.extra.get("exact_mean")))


def _exact_as_gaussian(p) -> SimpleNamespace:
    """Predictions ``p``'s exact posterior summarised as a Gaussian: ``truth``, ``mean``, ``std`` ``(N, P)``."""
    return SimpleNamespace(truth=p.truth, mean=p.extra["exact_mean"], std=p.extra["exact_std"],
                           sim_id=getattr(p, "sim_id", None))


def _per_param(names, figs: dict, prefix: str = "") -> dict:
    return {nm: {prefix + k: _num(v[j]) for k, v in figs.items()} for j, nm in enumerate(names)}


def _num(x) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else float(f"{x:.6g}")


def _merge(a: dict, b: dict) -> dict:
    for k, v in b.items():
        a.setdefault(k, {}).update(v)
    return a


def train_info(folder: Path) -> dict:
    """Wall minutes of a training run (its ``.done``) and the epochs it completed (metrics.csv)."""
    sec = done_seconds(folder)
    epochs = None
    mcsv = folder / "metrics.csv"
    if mcsv.is_file():
        with open(mcsv) as fh:
            ep = [int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("epoch") and r.get("val/loss")]
        epochs = max(ep) + 1 if ep else 0
    return {"minutes": None if sec is None else sec / 60, "epochs": epochs}


def _pair(root: Path, label: str):
    """``(test, fit)`` predictions of one model: the recalibrations are fitted on its predictions of the
    calibration set (``calib/``) where they exist, else on the val split."""
    calib = _read(root / label / "calib" / "predictions.h5")
    return (_read(root / label / "test" / "predictions.h5"),
            calib if calib is not None else _read(root / label / "val" / "predictions.h5"))


def summarise_grf(out: Path, info: dict) -> dict:
    root = out / "grf"
    res = {}
    ps_test, ps_val = _pair(root / "predictions", "ps")
    ps_train = train_info(root / "ps" / "members" / "0")
    base = {}
    if ps_test is not None and "exact_mean" in ps_test.extra:
        # the exact posterior's own figures are given once, with the CNN's
        figs = {**exact_figures(ps_test, ps_val, reference={}), **calibration_figures(ps_test, ps_val, ci=True)}
        base = _per_param(ps_test.param_names, figs, "baseline_")
        for nm in base:
            base[nm]["baseline_train_minutes"] = _num(ps_train["minutes"] or np.nan)
        base["joint"] = joint_figures(ps_test, "baseline_")
    members = sorted((root / "cnn" / "members").glob("*"), key=lambda p: int(p.name)) if (root / "cnn").is_dir() else []
    trains = [train_info(m) for m in members]
    info["grf"] = {"members": [{"member": m.name, **t} for m, t in zip(members, trains)], "baseline": ps_train}
    first = trains[0]["minutes"] if trains else None
    ref = None  # (test, val, exact_reference): the CNN entries are evaluated on the same maps
    for label, key, minutes in (("cnn_single", "grf_fisher", first), ("cnn_single_no_tta", "grf_fisher_no_tta", first),
                                ("cnn_ensemble", "grf_fisher_ensemble",
                                 sum(t["minutes"] or 0 for t in trains) if trains else None)):
        test, val = _pair(root / "predictions", label)
        if test is None or "exact_mean" not in test.extra:
            continue
        if ref is None or not (_same_maps(test, ref[0]) and _same_maps(val, ref[1])):
            ref = (test, val, exact_reference(test, val, ci=True))
        figs = {**exact_figures(test, val, reference=ref[2]), **calibration_figures(test, val, ci=True)}
        d = _per_param(test.param_names, figs)
        for nm in d:
            d[nm]["train_minutes"] = _num(minutes if minutes is not None else np.nan)
        d["joint"] = joint_figures(test, exact=True)
        res[key] = _merge(d, base)
        info.setdefault("n_test", {})[key] = test.n
        fit_set = None if val is None else "calibration" if Path(val.path).parent.name == "calib" else "val"
        info.setdefault("recalibration_fit", {})[key] = None if val is None else f"{val.n} {fit_set} maps"
    # exploratory variants (trained by hand into grf/explore/<name>, evaluated into
    # grf/explore_predictions/<name>/{val,test}): reported as grf_fisher_explore_<name>
    explore = sorted((root / "explore").glob("*")) if (root / "explore").is_dir() else []
    for ex in explore:
        test, val = _pair(root / "explore_predictions", ex.name)
        if test is None or "exact_mean" not in test.extra:
            continue
        t = train_info(ex)
        d = _per_param(test.param_names, {**exact_figures(test, val), **calibration_figures(test, val)})
        for nm in d:
            d[nm]["train_minutes"] = _num(t["minutes"] if t["minutes"] is not None else np.nan)
        d["joint"] = joint_figures(test, exact=True)
        res[f"grf_fisher_explore_{ex.name}"] = d
        info["grf"].setdefault("explore", {})[ex.name] = t
    return res


def _cnn_vs_ps(cnn, ps, cnn_train, ps_train) -> dict:
    (ct, cv), (pt, pv) = cnn, ps
    out = {}
    if ct is not None:
        out = _per_param(ct.param_names, calibration_figures(ct, cv))
        for nm in out:
            out[nm]["train_minutes"] = _num(cnn_train["minutes"] or np.nan)
    if pt is not None:
        out = _merge(out, _per_param(pt.param_names, calibration_figures(pt, pv), "baseline_"))
        for nm in out:
            out[nm]["baseline_train_minutes"] = _num(ps_train["minutes"] or np.nan)
    for d in out.values():
        if d.get("rmse") and d.get("baseline_rmse"):
            d["rmse_gain"] = _num(1 - d["rmse"] / d["baseline_rmse"])
    if ct is not None and pt is not None and np.array_equal(ct.sim_id, pt.sim_id) \
            and np.allclose(ct.truth, pt.truth):
        lo, hi = bootstrap_gain(ct.truth, ct.mean, pt.mean, ct.sim_id)
        for j, nm in enumerate(ct.param_names):
            out[nm]["rmse_gain_lo"], out[nm]["rmse_gain_hi"] = _num(lo[j]), _num(hi[j])
    return out


def bootstrap_gain(truth, mean_a, mean_b, sim_id, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the RMSE gain ``1 − RMSE(a) / RMSE(b)``, each bound ``(P,)``.

    ``truth``, ``mean_a``, ``mean_b`` are ``(N, P)`` for the same maps, ``sim_id (N,)`` their
    simulations: the maps of one simulation share their parameters, so whole simulations are
    resampled (with replacement, ``n_boot`` times, fixed ``seed``).
    """
    _, inv = np.unique(np.asarray(sim_id), return_inverse=True)
    n_sims = int(inv.max()) + 1
    t = np.asarray(truth, float)
    sse = [np.zeros((n_sims, t.shape[1])) for _ in range(2)]
    for s, m in zip(sse, (mean_a, mean_b)):
        np.add.at(s, inv, (np.asarray(m, float) - t) ** 2)  # per-simulation sums of squared errors
    pick = np.random.default_rng(seed).integers(0, n_sims, size=(n_boot, n_sims))
    gain = 1 - np.sqrt(sse[0][pick].sum(axis=1) / sse[1][pick].sum(axis=1))  # (n_boot, P); map counts cancel
    lo, hi = np.quantile(gain, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lo, hi


def summarise_camels(out: Path, info: dict) -> dict:
    root = out / "camels"
    res = {}
    pr, md = root / "predictions", root / "models"
    for exp, stem in (("camels_like_mtot", "mtot"), ("camels_like_multifield", "multifield")):
        d = _cnn_vs_ps(_pair(pr, f"{stem}_cnn"), _pair(pr, f"{stem}_ps"), train_info(md / f"{stem}_cnn"),
                       train_info(md / f"{stem}_ps"))
        if d:
            res[exp] = d
    for f in MULTI_FIELDS:
        test, val = _pair(pr, f"single_{f}_cnn")
        if test is not None:
            d = _per_param(test.param_names, calibration_figures(test, val))
            for nm in d:
                d[nm]["train_minutes"] = _num(train_info(md / f"single_{f}_cnn")["minutes"] or np.nan)
            res[f"camels_like_single_{f}"] = d
    info["camels"] = {k: train_info(p) for k, p in ((p.name, p) for p in sorted(md.glob("*")))} if md.is_dir() else {}
    return res


def summarise_cross(out: Path, info: dict) -> dict:
    """Foreign-suite figures, the in-suite ones for contrast, and the report's verdicts."""
    out_res, verdicts, n_foreign = {}, {}, None
    croot, pr = out / "cross", out / "camels" / "predictions"
    for suffix, (cnn, ps) in CROSS.items():
        res = {}
        for name, prefix in ((cnn, ""), (ps, "baseline_")):
            foreign = _read(croot / "predictions" / name / "predictions.h5") if name else None
            test, val = _pair(pr, name) if name else (None, None)
            if foreign is None or test is None:
                continue
            n_foreign = foreign.n
            d = _per_param(foreign.param_names, calibration_figures(foreign, val), prefix)
            d = _merge(d, _per_param(test.param_names, calibration_figures(test, val), prefix + "in_suite_"))
            for nm in d:
                d[nm][prefix + "rmse_degradation"] = _num(d[nm][prefix + "rmse"] / d[nm][prefix + "in_suite_rmse"])
            res = _merge(res, d)
            try:
                verdicts[name] = cross_report(croot / "report" / name, test, foreign, val)
            except Exception as err:  # the figures stand without the report
                verdicts[name] = {"error": str(err)}
        if res:
            out_res[f"cross_suite_SynthTNG_to_SynthSIMBA{suffix}"] = res
    if out_res:
        info["cross"] = {"verdicts": verdicts, "n_foreign": n_foreign}
    return out_res


def cross_report(folder: Path, test, foreign, val) -> dict:
    """cosmoinfer-report's verdicts for in-suite test and foreign-suite predictions (recalibrated on val)."""
    from cosmoinfer.calibration import build_report

    build_report([test.path, foreign.path], folder, val_predictions=[val.path, val.path] if val else None,
                 labels=["SynthTNG test (in-suite)", "SynthSIMBA all (foreign)"], n_bootstrap=20,
                 n_posterior_samples=200)
    doc = json.loads((folder / "metrics.json").read_text())
    blocks = doc.get("comparison", [doc])
    return {b["label"]: {nm: v for nm, v in b.get("verdicts", {}).items()} for b in blocks}


def summarise_sweep(out: Path, sc: dict, info: dict) -> dict:
    s = sc["sweep"]
    res = {}
    for v in s["values"]:
        tag = f"{s['knob']}_{v}"
        root = out / "sweep" / tag
        d = _cnn_vs_ps(_pair(root / "predictions", "cnn"), _pair(root / "predictions", "ps"),
                       train_info(root / "models" / "cnn"), train_info(root / "models" / "ps"))
        if d:
            res[f"sweep_{tag}"] = d
    return res


# --------------------------------------------------------------------------- output


def write_json(path: Path, results: dict) -> dict:
    """Merge ``results`` into the JSON at ``path`` (experiments of this run replace old ones)."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(results)
    order = ("grf_fisher", "camels_like", "cross_suite", "sweep")
    old = dict(sorted(old.items(), key=lambda kv: (next((i for i, p in enumerate(order) if kv[0].startswith(p)),
                                                        len(order)), kv[0])))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(old, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return old


def _f(x, digits=3) -> str:
    if x is None:
        return "—"
    return f"{x:.2e}" if 0 < abs(x) < 1e-3 else f"{x:.{digits}f}"


def _mark(ok) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _gain(d: dict, ok=None) -> str:
    """``+7.2% [−3.1, +16.0] ✗``: the CNN's RMSE gain, its bootstrap interval and the target mark."""
    g, lo, hi = d.get("rmse_gain"), d.get("rmse_gain_lo"), d.get("rmse_gain_hi")
    if g is None:
        return "—"
    ci = "" if lo is None or hi is None else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{100 * g:+.1f}%{ci}{_mark(ok)}"


def _ci(d: dict, pre: str) -> str:
    """`` [low, high]`` of the isotonic coverage error's bootstrap interval, if recorded."""
    lo, hi = d.get(pre + "coverage_error_isotonic_ci_low"), d.get(pre + "coverage_error_isotonic_ci_high")
    return "" if lo is None or hi is None else f" [{_f(lo)}, {_f(hi)}]"


def grf_table(results: dict) -> list[str]:
    rows = ["| experiment | parameter | model | efficiency | median std ratio | mean shift | coverage err. | "
            "coverage err. recal. (variance scaling) | coverage err. recal. (isotonic) [95% sim. bootstrap] | RMSE | train min |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    exps = [e for e in results if e.startswith("grf_fisher")]
    for exp in exps:
        for nm, d in results.get(exp, {}).items():
            if nm == "joint":  # whole-predictive figures: grf_joint_table
                continue
            models = [("", _GRF_MODEL.get(exp, "CNN"))]
            if exp == "grf_fisher":
                models += [("baseline_", "PS baseline"), ("exact_", "exact posterior (Gaussian summary)")]
            for pre, model in models:
                if pre == "exact_":
                    rows.append(f"| {exp} | {nm} | {model} | 1 | 1 | 0 | {_f(d.get('exact_coverage_error'))} | "
                                f"{_f(d.get('exact_coverage_error_recalibrated'))} | "
                                f"{_f(d.get('exact_coverage_error_isotonic'))}{_ci(d, 'exact_')} | "
                                f"{_f(d.get('exact_rmse'), 4)} | — |")
                    continue
                def g(k, d=d, pre=pre):
                    return d.get(pre + k)

                eff, sr, ms, ce = g("efficiency"), g("std_ratio_median"), g("mean_shift"), g(
                    "coverage_error_recalibrated")
                rows.append(
                    f"| {exp} | {nm} | {model} | {_f(eff)}{_mark(None if eff is None else eff >= TARGETS['efficiency'])}"
                    f" | {_f(sr)}{_mark(None if sr is None else abs(sr - 1) <= TARGETS['std_ratio'])}"
                    f" | {_f(ms)}{_mark(None if ms is None else ms <= TARGETS['mean_shift'])}"
                    f" | {_f(g('coverage_error'))} | {_f(ce)}"
                    f"{_mark(None if ce is None else ce <= TARGETS['coverage_error_recalibrated'])}"
                    f" | {_f(g('coverage_error_isotonic'))}{_mark(None if g('coverage_error_isotonic') is None else g('coverage_error_isotonic') <= TARGETS['coverage_error_recalibrated'])}{_ci(d, pre)}"
                    f" | {_f(g('rmse'), 4)}"
                    f" | {_f(g('train_minutes'), 1)}{_mark(None if pre or exp != 'grf_fisher' or g('train_minutes') is None else g('train_minutes') <= TARGETS['train_minutes'])} |")
    return rows


_GRF_MODEL = {"grf_fisher": "CNN (default, member 0), TTA", "grf_fisher_ensemble": "CNN ensemble, TTA",
              "grf_fisher_no_tta": "CNN (default, member 0), no TTA"}


def grf_joint_table(results: dict) -> list[str]:
    """Expected KL from the exact posterior, HPD coverage error and joint NLL of each grf model."""
    rows = ["| experiment | model | expected KL, nats [95% sim. bootstrap] | HPD coverage err. | joint NLL |",
            "|---|---|---|---|---|"]
    for exp in (e for e in results if e.startswith("grf_fisher")):
        j = results[exp].get("joint")
        if not j:
            continue
        models = [("", _GRF_MODEL.get(exp, "CNN"))]
        if exp == "grf_fisher":
            models += [("baseline_", "PS baseline"), ("exact_", "exact posterior")]
        for pre, model in models:
            if pre == "exact_":
                rows.append(f"| {exp} | {model} | 0 | {_f(j.get('exact_hpd_coverage_error'))} | "
                            f"{_f(j.get('exact_nll'))} |")
                continue
            kl, lo, hi = (j.get(pre + k) for k in ("expected_kl", "expected_kl_lo", "expected_kl_hi"))
            ci = "" if lo is None or hi is None else f" [{_f(lo)}, {_f(hi)}]"
            rows.append(f"| {exp} | {model} | {_f(kl)}{ci} | {_f(j.get(pre + 'hpd_coverage_error'))} | "
                        f"{_f(j.get(pre + 'nll'))} |")
    return rows


def cnn_ps_table(results: dict, keys) -> list[str]:
    rows = ["| experiment | parameter | CNN RMSE | PS RMSE | CNN gain [95% CI] | CNN cov. err. (recal.) | "
            "PS cov. err. (recal.) | CNN train min |", "|---|---|---|---|---|---|---|---|"]
    for exp in keys:
        for nm, d in results.get(exp, {}).items():
            gain = d.get("rmse_gain")
            ok = None if gain is None or nm not in ("Omega_m", "sigma_8") or not exp.startswith("camels_like_mtot") \
                else gain >= TARGETS["camels_gain"]
            rows.append(f"| {exp} | {nm} | {_f(d.get('rmse'), 4)} | {_f(d.get('baseline_rmse'), 4)} | "
                        f"{_gain(d, ok)} | "
                        f"{_f(d.get('coverage_error'))} ({_f(d.get('coverage_error_recalibrated'))}) | "
                        f"{_f(d.get('baseline_coverage_error'))} ({_f(d.get('baseline_coverage_error_recalibrated'))})"
                        f" | {_f(d.get('train_minutes'), 1)} |")
    return rows


def multifield_table(results: dict) -> list[str]:
    multi = results.get("camels_like_multifield")
    if not multi:
        return []
    singles = [f for f in MULTI_FIELDS if f"camels_like_single_{f}" in results]
    rows = ["| parameter | multifield CNN | " + " | ".join(f"{f} CNN" for f in singles) + " | multifield best? |",
            "|---|---|" + "---|" * len(singles) + "---|"]
    for nm, d in multi.items():
        r = [results[f"camels_like_single_{f}"].get(nm, {}).get("rmse") for f in singles]
        best = min((x for x in r if x is not None), default=None)
        ok = None if best is None or d.get("rmse") is None else d["rmse"] < best
        rows.append(f"| {nm} | {_f(d.get('rmse'), 4)} | " + " | ".join(_f(x, 4) for x in r) +
                    f" | {'—' if ok is None else ('yes' if ok else 'no')} |")
    return rows


def cross_table(results: dict, info: dict) -> list[str]:
    rows = []
    verd = (info.get("cross") or {}).get("verdicts", {})
    for suffix, (cnn, ps) in CROSS.items():
        d = results.get(f"cross_suite_SynthTNG_to_SynthSIMBA{suffix}")
        if not d:
            continue
        fields = {"": "Mtot", "_Mgas": "Mgas", "_multifield": "Mtot, Mgas, T, Mstar"}.get(suffix, suffix)
        rows += ([""] if rows else []) + [
            f"Maps: {fields}.", "",
            "| parameter | model | RMSE in-suite (TNG test) | RMSE foreign (SIMBA all) | ratio | cov. err. in-suite | "
            "cov. err. foreign | foreign, recal. on TNG val |", "|---|---|---|---|---|---|---|---|"]
        for nm, m in d.items():
            for pre, model in (("", "CNN"), ("baseline_", "PS")):
                if m.get(pre + "rmse") is None:
                    continue
                rows.append(f"| {nm} | {model} | {_f(m.get(pre + 'in_suite_rmse'), 4)} | {_f(m.get(pre + 'rmse'), 4)} | "
                            f"{_f(m.get(pre + 'rmse_degradation'), 2)} | {_f(m.get(pre + 'in_suite_coverage_error'))} | "
                            f"{_f(m.get(pre + 'coverage_error'))} | {_f(m.get(pre + 'coverage_error_recalibrated'))} |")
        for name in (cnn, ps):
            blocks = verd.get(name) if name else None
            if not blocks:
                continue
            rows += ["", f"Report verdicts ({name}, recalibration fitted on SynthTNG val):"]
            if "error" in blocks:
                rows.append(f"- report failed: {blocks['error']}")
                continue
            for label, vs in blocks.items():
                for v in vs.values():
                    rows.append(f"- {label}: **{v.get('status')}** — {v.get('text')}")
    return rows


def sweep_table(results: dict) -> list[str]:
    keys = [k for k in results if k.startswith("sweep_")]
    if not keys:
        return []
    rows = ["| non-Gaussianity | parameter | CNN RMSE | PS RMSE | CNN gain [95% CI] |", "|---|---|---|---|---|"]
    for k in sorted(keys, key=lambda k: float(k.rsplit("_", 1)[1])):
        for nm, d in results[k].items():
            rows.append(f"| {k[len('sweep_'):].replace('_', ' ')} | {nm} | {_f(d.get('rmse'), 4)} | "
                        f"{_f(d.get('baseline_rmse'), 4)} | {_gain(d)} |")
    return rows


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def render_section(results: dict, info: dict, notes: str) -> str:
    L = [SECTION, ""]
    L += [f"Last run: {info['date']} on {info['machine']}; command `{info['command']}` "
          f"(scale `{info['scale']}`, parts {', '.join(info['parts'])}, {info['jobs']} stages at a time with "
          f"{info['threads']} thread(s) each; wall time of this invocation {info['wall_minutes']:.1f} min). "
          "Times are wall clock on a machine shared with other jobs, so they are upper bounds. "
          "Figures: `benchmarks/results/physical_limit.json`.", ""]
    if info.get("parts_run"):
        L += ["Each part's last run (scale, date): " +
              "; ".join(f"{p}: {v}" for p, v in sorted(info["parts_run"].items())) + ".", ""]
    if info.get("failed"):
        L += ["Failed or skipped stages: " + "; ".join(f"`{k}`: {v}" for k, v in info["failed"].items()), ""]
    g = grf_table(results)
    if len(g) > 2:
        L += ["### grf_fisher: networks against the exact posterior", "",
              f"Targets: efficiency ≥ {TARGETS['efficiency']}, median std ratio within 1 ± {TARGETS['std_ratio']}, "
              f"mean shift ≤ {TARGETS['mean_shift']}, coverage error after recalibration ≤ "
              f"{TARGETS['coverage_error_recalibrated']}, default network trained within {TARGETS['train_minutes']:.0f}"
              " min (✓/✗ per figure). "
              f"Test maps: {info.get('n_test', {})}; recalibrations fitted on "
              f"{info.get('recalibration_fit') or {k: f'{v} val maps' for k, v in info.get('n_val', {}).items()}} "
              "(calibration maps: fresh simulations of their own seed, evaluated like test).", ""]
        L += g
        jt = grf_joint_table(results)
        if len(jt) > 2:
            L += ["", "The whole predictive against the exact posterior (test maps): expected KL divergence from the "
                  "exact posterior (mean of log p_exact − log q at the truth), coverage error of the highest-density "
                  "regions, joint NLL (the exact posterior's is the floor; NLL − exact NLL = expected KL).", ""] + jt
        mem = (info.get("grf") or {}).get("members", [])
        if mem:
            L += ["", "Training: " + "; ".join(
                f"member {m['member']}: {_f(m['minutes'], 1)} min, {m['epochs']} epochs" for m in mem) +
                f"; PS baseline: {_f(info['grf']['baseline']['minutes'], 1)} min, "
                f"{info['grf']['baseline']['epochs']} epochs."]
        L.append("")
    c = cnn_ps_table(results, ["camels_like_mtot", "camels_like_multifield"] +
                     [f"camels_like_single_{f}" for f in MULTI_FIELDS])
    if len(c) > 2:
        L += ["### camels_like: CNN vs power-spectrum baseline", "",
              f"Target: CNN RMSE ≥ {100 * TARGETS['camels_gain']:.0f}% below the PS baseline on Omega_m and sigma_8 "
              "(Mtot). Coverage errors before (after) variance scaling fitted on val.", ""] + c + [""]
        mf = multifield_table(results)
        if mf:
            L += ["Multifield (Mtot, Mgas, T, Mstar as channels) vs a CNN on each single field, same parameters "
                  "and data (test RMSE):", ""] + mf + [""]
    x = cross_table(results, info)
    if x:
        L += ["### Cross-suite: trained on SynthTNG, tested on every SynthSIMBA map", ""] + x + [""]
    s = sweep_table(results)
    if s:
        L += ["### Non-Gaussianity sweep (Mtot, `simulator.lognormal_amplitude`)", ""] + s + [""]
    L += ["### Notes", "", notes.strip() or "(none)", ""]
    return "\n".join(L)


def update_results_md(path: Path, section: str) -> None:
    """Replace the physical-limit section of ``path`` (up to the next ``## `` heading); others untouched."""
    text = path.read_text() if path.is_file() else ""
    i = text.find(SECTION)
    if i < 0:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section.rstrip() + "\n"
    else:
        nxt = re.search(r"^## ", text[i + len(SECTION):], flags=re.M)
        end = len(text) if nxt is None else i + len(SECTION) + nxt.start()
        tail = text[end:]
        text = text[:i] + section.rstrip() + "\n" + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def old_notes(path: Path) -> str:
    """The hand-written ``### Notes`` of the existing section (kept across reruns)."""
    if not path.is_file():
        return ""
    text = path.read_text()
    i = text.find(SECTION)
    if i < 0:
        return ""
    body = text[i + len(SECTION):]
    nxt = re.search(r"^## ", body, flags=re.M)
    body = body if nxt is None else body[:nxt.start()]
    j = body.find("### Notes")
    return "" if j < 0 else body[j + len("### Notes"):].strip()


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.physical_limit", description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="reduced", choices=["quick", "reduced", "full"])
    ap.add_argument("--only", default=None, choices=list(PARTS), help="run one part (default: all)")
    ap.add_argument("--out", default="runs/physical_limit", help="output folder of all stages")
    ap.add_argument("--jobs", type=int, default=2, help="stages run at once")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per stage")
    ap.add_argument("--json", default=None, help="results JSON (default: benchmarks/results/physical_limit.json; "
                                                 "--scale quick: OUT/physical_limit.json)")
    ap.add_argument("--md", default=None, help="RESULTS.md to update (default: benchmarks/RESULTS.md; "
                                               "--scale quick: OUT/RESULTS.md)")
    ap.add_argument("--summary-only", action="store_true", help="only recompute the figures from existing runs")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    quick = a.scale == "quick"
    json_path = Path(a.json) if a.json else (out / "physical_limit.json" if quick else
                                             REPO / "benchmarks" / "results" / "physical_limit.json")
    md_path = Path(a.md) if a.md else (out / "RESULTS.md" if quick else REPO / "benchmarks" / "RESULTS.md")
    parts = [a.only] if a.only else list(PARTS)
    sc = scale_config(a.scale)
    t0 = time.time()
    runner = Runner(out, a.jobs, a.threads)
    if not a.summary_only:
        runner.run(all_tasks(out, sc, parts))

    info = {"date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "command": "python -m pipelines.physical_limit " + " ".join(argv if argv is not None else sys.argv[1:]),
            "scale": a.scale, "parts": parts, "jobs": a.jobs, "threads": a.threads, "failed": runner.failed}
    results = {}
    if "grf" in parts:
        results.update(summarise_grf(out, info))
    if "camels" in parts:
        results.update(summarise_camels(out, info))
    if "cross" in parts:
        results.update(summarise_cross(out, info))
    if "sweep" in parts:
        results.update(summarise_sweep(out, sc, info))
    info["wall_minutes"] = (time.time() - t0) / 60
    merged = write_json(json_path, results)
    # the run record (per-part dates, training times, cross-suite verdicts) lives beside the JSON, so a
    # rerun of one part on a fresh clone keeps what the other parts' runs recorded
    runs_info = json_path.with_name(json_path.stem + "_info.json")
    old_info = json.loads(runs_info.read_text()) if runs_info.is_file() else {}
    keep = ("failed",) + (("command", "wall_minutes", "date", "jobs", "threads") if a.summary_only and old_info else ())
    old_info.update({k: v for k, v in info.items() if k not in keep})
    if "recalibration_fit" in info:
        old_info.pop("n_val", None)  # superseded: the recalibration fit set is named in recalibration_fit
    old_info.setdefault("failed_by_run", {})[info["date"]] = runner.failed
    if not a.summary_only:  # which scale and when each part last ran (parts may run separately)
        old_info.setdefault("parts_run", {}).update({p: f"{a.scale}, {info['date']}" for p in parts})
    atomic_write_text(runs_info, json.dumps(old_info, indent=2, default=str) + "\n")
    info_all = {**old_info, "failed": runner.failed}
    update_results_md(md_path, render_section(merged, info_all, old_notes(md_path)))
    print(f"results: {json_path}\ntable: {md_path}", flush=True)
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
