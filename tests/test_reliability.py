"""Reliability suite: bad inputs, crashes, determinism and unsafe checkpoints, through the real CLIs.

Every scenario runs the console entry points (``python -m cosmoinfer.cli.<stage>``) in a
subprocess, exactly as a user would, and judges them from the outside: exit status, stderr and
what is left on disk.

1. A catalogue of bad inputs across simulate / train / evaluate / report: each exits non-zero,
   prints exactly one ``error:`` line naming the file (or config key) and the problem, no
   traceback, and leaves nothing in ``out_dir``.
2. A training run killed with SIGKILL mid-epoch leaves only loadable checkpoints and resumes to
   completion with ``resume=true``.
3. The same seed and config give bitwise identical predictions on the CPU (single and MC dropout).
4. A checkpoint carrying pickled code is refused by evaluate and by ``train resume=true``, and the
   code never runs.

Runtime: a CLI process spends ~5 s importing torch + Lightning, so all subprocess work that needs
no interaction is submitted up front to a small thread pool (one job per CPU core) by the
module-scoped ``jobs`` fixture; the tests then only wait for and judge the results.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

from cosmoinfer.data.manifest import Manifest, maps_filename, params_filename
from cosmoinfer.data.priors import standard_priors

from .conftest import write_cmd_folder

pytestmark = pytest.mark.slow

SUITE = "TestSuite"
MAPS = maps_filename("Mtot", SUITE, "LH")
PARAMS = params_filename(SUITE, "LH")
#: Tiny, fast training (as in tests/test_training.py).
FAST = ["model.hidden=4", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1"]
#: The split the trained runs use: 12 / 4 / 4 of the 20 simulations of ``data32``.
SPLIT = "data.split_fractions=[0.6,0.2,0.2]"
#: Parallel CLI runs: one per core available to this process (2 on the reference machine), at most 4.
WORKERS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
TIMEOUT = 300


# --------------------------------------------------------------------------- running the CLIs


def cli_env() -> dict:
    # HYDRA_FULL_ERROR: Hydra would otherwise print an uncaught exception as one bare line, hiding the traceback
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1")


def cli_argv(stage: str, args, hydra_dir: Path) -> list[str]:
    return [sys.executable, "-m", f"cosmoinfer.cli.{stage}", *map(str, args), f"hydra.run.dir={hydra_dir}"]


def run_cli(stage: str, args, work: Path, name: str = "run") -> subprocess.CompletedProcess:
    """Run one CLI stage in ``work`` (cwd), Hydra's own files under ``work/hydra_<name>``."""
    work.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cli_argv(stage, args, work / f"hydra_{name}"), cwd=work, capture_output=True,
                          text=True, timeout=TIMEOUT, env=cli_env())


def train_args(root: Path, out: Path, *extra) -> list[str]:
    return [f"data.root={root}", f"data.suite={SUITE}", f"out_dir={out}", *FAST, *extra]


def ok(r: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"{what} failed (exit {r.returncode}):\n{r.stderr[-3000:]}"
    return r


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def leftovers(out: Path) -> list[str]:
    """Everything under ``out`` (recursively), except Hydra's own ``.hydra`` folder."""
    if not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if ".hydra" not in p.relative_to(out).parts)


def assert_clean_failure(r: subprocess.CompletedProcess, out: Path, names: tuple[str, ...], keyword: str,
                         allowed: tuple[str, ...] = ()) -> str:
    """Non-zero exit, one ``error:`` line naming the file/key and the problem, no traceback, no output."""
    assert r.returncode != 0, f"exit 0 on bad input\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-2000:]}"
    for text in (r.stderr, r.stdout):
        assert "Traceback" not in text and "HYDRA_FULL_ERROR" not in text, r.stderr[-4000:]
    lines = error_lines(r.stderr)
    assert len(lines) == 1, f"expected exactly one 'error:' line, got {lines}\n{r.stderr[-3000:]}"
    line = lines[0]
    for n in names:
        assert n in line, f"the error does not name {n!r}: {line}"
    assert keyword.lower() in line.lower(), f"the error does not say {keyword!r}: {line}"
    left = [p for p in leftovers(out) if p not in allowed]
    assert not left, f"partial output left in out_dir {out}: {left}"
    return line


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- the bad-input catalogue


@dataclass
class Ctx:
    """What a case builder may use: its own folder and, for checkpoint cases, the base run."""

    work: Path
    base_ckpt: Path | None = None


@dataclass
class Case:
    id: str
    stage: str
    build: Callable[[Ctx], tuple[list[str], Path, tuple[str, ...]]]  # -> (args, out_dir, names)
    keyword: str
    needs_ckpt: bool = False
    xfail: str | None = None  # a known bug outside this suite's files (strict: fixing it flags the mark)


def tiny_folder(work: Path, **kw) -> Path:
    """6 simulations of 16x16 Mtot maps, CMD layout, no manifest (one is inferred)."""
    root = work / "cmd"
    write_cmd_folder(root, n_sims=6, grid=16, suite=SUITE, fields=("Mtot",), **kw)
    return root


def with_manifest(root: Path, sha256: bool = False) -> Path:
    path = root / f"manifest_{SUITE}.yaml"
    Manifest.for_folder(root, SUITE, "LH", ["Mtot"], standard_priors(), name="tiny", with_sha256=sha256).save(path)
    return path


def edit_maps(root: Path, fn) -> None:
    maps = np.load(root / MAPS)
    np.save(root / MAPS, fn(maps.copy()))


def _train_case(edit=None, extra=(), names=(MAPS,), manifest=False, sha256=False):
    def build(ctx: Ctx):
        root = tiny_folder(ctx.work)
        if manifest:
            with_manifest(root, sha256)
        if edit is not None:
            edit(root)
        out = ctx.work / "out"
        return train_args(root, out, *extra), out, tuple(names)
    return build


def _truncate(root: Path) -> None:
    p = root / MAPS
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage(root: Path) -> None:
    (root / MAPS).write_bytes(np.random.default_rng(0).bytes(4096))


def _set(i, value):
    def fn(maps):
        maps[i] = value
        return maps
    return fn


def _params(fn):
    def edit(root: Path):
        np.savetxt(root / PARAMS, fn(np.loadtxt(root / PARAMS)))
    return edit


def _corrupt_h5(ctx: Ctx):
    store = ctx.work / "store.h5"
    store.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(1).bytes(2048))  # HDF5 magic, then junk
    out = ctx.work / "out"
    return [f"data.h5_path={store}", f"out_dir={out}", *FAST], out, ("store.h5",)


def _simulate_unknown_field(ctx: Ctx):
    out = ctx.work / "out"
    return ["simulator=grf", "fields=[Nonsense]", "n_sims=2", "grid=16", "progress=false", f"out_dir={out}"], \
        out, ("fields",)


def _report_missing_dataset(ctx: Ctx):
    from cosmoinfer.calibration.predictions import write_predictions

    rng = np.random.default_rng(0)
    n, p = 20, 2
    truth = rng.uniform(0.2, 0.8, (n, p))
    path = ctx.work / "preds" / "predictions.h5"
    write_predictions(path, truth=truth, mean=truth + 0.01, std=np.full((n, p), 0.05),
                      std_aleatoric=np.full((n, p), 0.05), std_epistemic=np.zeros((n, p)), sim_id=np.arange(n),
                      param_names=["Omega_m", "sigma_8"], method="single", split="test")
    with h5py.File(path, "a") as f:
        del f["std"]
    out = ctx.work / "out"
    return [f"predictions={path}", f"out_dir={out}", "n_bootstrap=5", "n_posterior_samples=50"], out, \
        ("predictions.h5", "'std'")


def _edited_checkpoint(ctx: Ctx, name: str, edit) -> Path:
    ck = load_ckpt(ctx.base_ckpt)
    edit(ck)
    path = ctx.work / name
    torch.save(ck, path)
    return path


def _eval_weights_do_not_fit(ctx: Ctx):
    def wider(ck):
        ck["cosmoinfer"]["model"]["hidden"] = 8  # the weights were trained with hidden=4
    path = _edited_checkpoint(ctx, "wider.ckpt", wider)
    out = ctx.work / "out"
    return ["evaluator=single", f"checkpoints=[{path}]", f"out_dir={out}"], out, ("wider.ckpt", "size mismatch")


def _eval_ensemble_disagree(ctx: Ctx):
    def shifted(ck):
        norm = ck["cosmoinfer"]["data"]["normalizer"]
        norm["mean"] = [m + 0.5 for m in norm["mean"]]  # statistics of other data or another split
    other = _edited_checkpoint(ctx, "member1.ckpt", shifted)
    out = ctx.work / "out"
    return ["evaluator=ensemble", f"checkpoints=[{ctx.base_ckpt},{other}]", f"out_dir={out}"], out, \
        ("member1.ckpt", "normalisation")


def _eval_no_checkpoints(ctx: Ctx):
    out = ctx.work / "out"
    return ["evaluator=single", "checkpoints=[]", f"out_dir={out}"], out, ("checkpoints",)


CASES = [
    # train: the CMD files
    Case("maps_missing", "train", _train_case(lambda r: (r / MAPS).unlink()), "not found"),
    Case("npy_truncated", "train", _train_case(_truncate), "truncated"),
    Case("npy_garbage", "train", _train_case(_garbage), "not a valid .npy"),
    Case("dtype_vs_manifest", "train",
         _train_case(lambda r: edit_maps(r, lambda m: m.astype(np.float64)), manifest=True), "dtype"),
    Case("sha256_vs_manifest", "train",
         _train_case(lambda r: edit_maps(r, _set((3, 0, 0), 7.0)), manifest=True, sha256=True), "sha256"),
    Case("nan_in_maps", "train", _train_case(lambda r: edit_maps(r, _set((17, 2, 3), np.nan))), "NaN"),
    Case("nonpositive_in_log_field", "train", _train_case(lambda r: edit_maps(r, _set((40, 0, 0), -1.0))),
         "non-positive"),
    Case("map_param_count_mismatch", "train", _train_case(_params(lambda t: t[:-1]), names=(PARAMS,)), "rows"),
    Case("param_table_columns", "train", _train_case(_params(lambda t: t[:, :5]), names=(PARAMS,)), "columns"),
    Case("unknown_field", "train",
         _train_case(extra=["data.fields=[Mtot,Nonsense]"], manifest=True,
                     names=(f"manifest_{SUITE}.yaml", "Nonsense")), "unknown field"),
    Case("unknown_param", "train",
         _train_case(extra=["data.params=[Omega_m,w0]"], names=("data.params", "w0")), "unknown parameter"),
    Case("hdf5_corrupt", "train", _corrupt_h5, "HDF5"),
    # train: bad config values (the model's only fails after the data has been read and checked)
    Case("zero_batch_size", "train", _train_case(extra=["data.batch_size=0"], names=("data.batch_size",)),
         "positive integer"),
    Case("unknown_model_arch", "train", _train_case(extra=["model.arch=nonsense"], names=("model.arch",)),
         "unknown architecture"),
    # simulate / report
    Case("simulate_unknown_field", "simulate", _simulate_unknown_field, "unknown field"),
    Case("predictions_missing_dataset", "report", _report_missing_dataset, "missing dataset"),
    # evaluate: checkpoints
    Case("checkpoint_weights_do_not_fit", "evaluate", _eval_weights_do_not_fit, "do not fit", needs_ckpt=True),
    Case("ensemble_members_disagree", "evaluate", _eval_ensemble_disagree, "disagree", needs_ckpt=True),
    Case("empty_checkpoint_list", "evaluate", _eval_no_checkpoints, "checkpoint"),
]


# --------------------------------------------------------------------------- pickled code in a checkpoint


class _RunsCode:
    """Unpickling this object runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_checkpoint(path: Path, marker: Path, base: dict | None = None) -> Path:
    ck = dict(base) if base else {"cosmoinfer": {"version": 1}, "state_dict": {}}
    ck["payload"] = _RunsCode(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, path)
    return path


# --------------------------------------------------------------------------- background jobs


def _train_base(data32: Path, work: Path, name: str) -> Path:
    """Tiny seed-0 training run through the CLI; returns its run folder."""
    out = work / name
    ok(run_cli("train", train_args(data32, out, SPLIT, "seed=0"), work, name), f"training {name}")
    return out


def _bad_case(case: Case, work: Path, base: Future | None):
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(work, base_ckpt=(base.result() / "checkpoints" / "best.ckpt") if base else None)
    args, out, names = case.build(ctx)
    return run_cli(case.stage, args, work, case.id), out, names


def _evaluate(run: Future, work: Path, name: str, *args) -> Path:
    out = work / name
    ckpt = run.result() / "checkpoints" / "best.ckpt"
    ok(run_cli("evaluate", [f"checkpoints=[{ckpt}]", f"out_dir={out}", *args], work, name), f"evaluate {name}")
    return out / "predictions.h5"


def _evil_evaluate(work: Path):
    marker = work / "PWNED_evaluate"
    ckpt = evil_checkpoint(work / "evil" / "model.ckpt", marker)
    out = work / "out"
    r = run_cli("evaluate", ["evaluator=single", f"checkpoints=[{ckpt}]", f"out_dir={out}"], work, "evil_eval")
    return r, out, marker, ckpt


def _evil_resume(base: Future, work: Path):
    marker = work / "PWNED_train"
    out = work / "out"
    base_ckpt = load_ckpt(base.result() / "checkpoints" / "last.ckpt")  # a real checkpoint ... plus code
    ckpt = evil_checkpoint(out / "checkpoints" / "last.ckpt", marker, base_ckpt)
    data32 = Path(base_ckpt["cosmoinfer"]["data"]["root"])
    r = run_cli("train", train_args(data32, out, SPLIT, "resume=true", "trainer.max_epochs=2"), work, "evil_train")
    return r, out, marker, ckpt


@pytest.fixture(scope="module")
def jobs(request, tmp_path_factory):
    """Submit every non-interactive CLI run of the selected tests to a pool; yields ``{key: Future}``.

    Jobs only ever wait for jobs submitted before them, so the FIFO pool cannot deadlock.
    """
    selected = {item.name for item in request.session.items if getattr(item, "module", None) is request.module}
    base_dir = tmp_path_factory.mktemp("reliability")
    data32 = base_dir / "data32"
    write_cmd_folder(data32, n_sims=20, grid=32, suite=SUITE, fields=("Mtot",))
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="cli")
    fut: dict[str, Future] = {}
    if "test_sigkill_mid_epoch_then_resume_completes" in selected:  # the longest job: first
        fut["kill"] = pool.submit(_kill_and_resume, data32, base_dir / "kill")
    want_bad = [c for c in CASES if f"test_bad_input_fails_cleanly[{c.id}]" in selected]
    need_base = any(c.needs_ckpt for c in want_bad) or {"test_same_seed_same_predictions",
                                                        "test_train_resume_refuses_pickled_code"} & selected
    if need_base:
        fut["base"] = pool.submit(_train_base, data32, base_dir, "seed0_a")
    for c in sorted(want_bad, key=lambda c: c.needs_ckpt):
        fut[c.id] = pool.submit(_bad_case, c, base_dir / c.id, fut.get("base") if c.needs_ckpt else None)
    if "test_evaluate_refuses_pickled_code" in selected:
        fut["evil_evaluate"] = pool.submit(_evil_evaluate, base_dir / "evil_evaluate")
    if "test_train_resume_refuses_pickled_code" in selected:
        fut["evil_resume"] = pool.submit(_evil_resume, fut["base"], base_dir / "evil_resume")
    if "test_same_seed_same_predictions" in selected:
        det = base_dir / "determinism"
        fut["seed0_b"] = pool.submit(_train_base, data32, base_dir, "seed0_b")
        fut["single_a"] = pool.submit(_evaluate, fut["base"], det, "single_a", "evaluator=single")
        fut["single_b"] = pool.submit(_evaluate, fut["seed0_b"], det, "single_b", "evaluator=single")
        for k in ("mc_1", "mc_2"):
            fut[k] = pool.submit(_evaluate, fut["base"], det, k, "evaluator=mc_dropout", "evaluator.n_samples=4")
    yield fut
    pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- 1. bad inputs


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
    for c in CASES])
def test_bad_input_fails_cleanly(jobs, case):
    r, out, names = jobs[case.id].result()
    assert_clean_failure(r, out, names, case.keyword)
    assert r.returncode == 2, r.returncode  # every stage turns an InputError into exit status 2


def test_catalogue_covers_every_stage():
    assert len(CASES) >= 12
    assert {c.stage for c in CASES} == {"simulate", "train", "evaluate", "report"}


# --------------------------------------------------------------------------- 4. pickled code


def test_evaluate_refuses_pickled_code(jobs):
    r, out, marker, ckpt = jobs["evil_evaluate"].result()
    assert not marker.exists(), "the checkpoint's pickled code ran"
    assert_clean_failure(r, out, (ckpt.name,), "refused")
    # the payload is live: an unsafe load would have run it
    torch.load(ckpt, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_train_resume_refuses_pickled_code(jobs):
    r, out, marker, ckpt = jobs["evil_resume"].result()
    assert not marker.exists(), "the checkpoint's pickled code ran"
    # out_dir held the planted checkpoint and must hold nothing else
    assert_clean_failure(r, out, (ckpt.name,), "refused", allowed=("checkpoints", "checkpoints/last.ckpt"))


# --------------------------------------------------------------------------- 3. determinism


def test_same_seed_same_predictions(jobs):
    for a, b in (("single_a", "single_b"), ("mc_1", "mc_2")):
        pa, pb = jobs[a].result(), jobs[b].result()
        with h5py.File(pa, "r") as fa, h5py.File(pb, "r") as fb:
            for key in ("mean", "std"):
                x, y = fa[key][()], fb[key][()]
                assert x.shape == y.shape and x.size > 0
                assert np.array_equal(x, y), f"{key} differs between {a} and {b}: max |diff| {np.abs(x - y).max()}"
                assert x.tobytes() == y.tobytes(), f"{key} is not bitwise equal between {a} and {b}"
    with h5py.File(jobs["mc_1"].result(), "r") as f:
        assert f.attrs["method"] == "mc_dropout" and int(f.attrs["n_samples"]) == 4
        assert f["std_epistemic"][()].max() > 0, "MC dropout passes were all identical"
    # the two trainings themselves are identical, weight for weight
    wa = load_ckpt(jobs["base"].result() / "checkpoints" / "best.ckpt")["state_dict"]
    wb = load_ckpt(jobs["seed0_b"].result() / "checkpoints" / "best.ckpt")["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------- 2. SIGKILL mid-epoch

KILL_EPOCHS = 6


def _try_load(path: Path) -> dict | None:
    try:
        return load_ckpt(path)
    except (FileNotFoundError, RuntimeError, EOFError, OSError):
        return None


def _ckpt_files(ckdir: Path) -> dict:
    """``{name: loads?}`` for every ``*.ckpt``, and the names of stray temporary files."""
    ckpts = {p.name: _try_load(p) is not None for p in sorted(ckdir.glob("*.ckpt"))}
    return {"ckpts": ckpts, "tmp": sorted(p.name for p in ckdir.iterdir() if p.name.endswith(".tmp"))}


def _kill_and_resume(data32: Path, work: Path) -> dict:
    """Train for KILL_EPOCHS epochs, SIGKILL it half-way through epoch 2 (or later), then ``resume=true``.

    Returns what the test judges: the state on disk after the kill and after the resumed run.
    """
    work.mkdir(parents=True, exist_ok=True)
    out = work / "run"
    last = out / "checkpoints" / "last.ckpt"
    args = train_args(data32, out, SPLIT, f"trainer.max_epochs={KILL_EPOCHS}", "callbacks.early_stopping=null")
    log = work / "killed_run.log"  # a file, not a pipe: a full pipe would stall the child
    with open(log, "w") as fh:
        proc = subprocess.Popen(cli_argv("train", args, work / "hydra_kill"), cwd=work, env=cli_env(),
                                stdout=fh, stderr=subprocess.STDOUT)
    seen: dict[int, float] = {}  # epoch -> when its end-of-epoch last.ckpt appeared
    steps_per_epoch = None
    try:
        deadline = time.monotonic() + TIMEOUT
        while not seen or max(seen) < 1:  # until epochs 0 and 1 are done and a later one has begun
            if proc.poll() is not None:
                raise AssertionError(f"training ended (exit {proc.returncode}) before epoch 1 was checkpointed:"
                                     f"\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint of epoch 1 appeared")
            ck = _try_load(last) if last.exists() else None
            if ck is not None and ck["epoch"] not in seen:
                seen[ck["epoch"]] = time.monotonic()
                steps_per_epoch = ck["global_step"] // (ck["epoch"] + 1)
            time.sleep(0.01)
        first, now = min(seen), max(seen)
        epoch_time = (seen[now] - seen[first]) / (now - first) if now > first else 1.0
        time.sleep(max(0.0, 0.5 * epoch_time - (time.monotonic() - seen[now])))  # half-way through the next epoch
        alive_at_kill = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after_kill = _ckpt_files(last.parent)
    killed = _try_load(last)
    # a temporary file as a kill in the middle of a checkpoint write would leave it: resume must remove it
    planted = last.parent / ".last.ckpt.stale0000.tmp"
    planted.write_bytes(b"half a checkpoint")
    resumed = run_cli("train", args + ["resume=true"], work, "resume")
    final = _try_load(last)
    with open(out / "metrics.csv", newline="") as fh:
        val_epochs = sorted(int(r["epoch"]) for r in csv.DictReader(fh) if r.get("val/loss"))
    return dict(alive_at_kill=alive_at_kill, returncode=proc.returncode, steps_per_epoch=steps_per_epoch,
                after_kill=after_kill, killed=killed, resumed=resumed, final=final,
                after_resume=_ckpt_files(last.parent), val_epochs=val_epochs)


def test_sigkill_mid_epoch_then_resume_completes(jobs):
    res = jobs["kill"].result()
    assert res["alive_at_kill"], "training finished before it could be killed"
    assert res["returncode"] == -signal.SIGKILL
    # after the kill: every checkpoint present is complete plain data; nothing else looks like one
    assert {"last.ckpt", "best.ckpt"} <= set(res["after_kill"]["ckpts"]), res["after_kill"]
    assert all(res["after_kill"]["ckpts"].values()), f"unloadable checkpoint left by the kill: {res['after_kill']}"
    assert all(n.startswith(".") and not n.endswith(".ckpt") for n in res["after_kill"]["tmp"])
    spe = res["steps_per_epoch"]
    killed = res["killed"]
    assert killed is not None and 1 <= killed["epoch"] < KILL_EPOCHS - 1, killed and killed["epoch"]
    assert killed["global_step"] == (killed["epoch"] + 1) * spe < KILL_EPOCHS * spe
    # resume=true: runs the remaining epochs, and only those
    ok(res["resumed"], "resumed training")
    final = res["final"]
    assert final["epoch"] >= KILL_EPOCHS - 1  # (Lightning stores KILL_EPOCHS for a save after the last epoch)
    assert final["global_step"] == KILL_EPOCHS * spe, (final["global_step"], spe)
    assert all(res["after_resume"]["ckpts"].values()) and not res["after_resume"]["tmp"], res["after_resume"]
    assert sorted(set(res["val_epochs"])) == list(range(KILL_EPOCHS)), res["val_epochs"]
