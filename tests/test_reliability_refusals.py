"""Reliability, part two: more bad inputs refused in one line, and training that resumes bit for bit.

Through the real CLIs (subprocesses, judged from the outside as in ``tests/test_reliability.py``,
whose helpers this module shares):

1. Parameter tables outside the manifest's priors (CMD text file and HDF5 store), a field or
   parameter listed twice.
2. ``resume=true`` under another configuration than the checkpoint's: one line naming the key,
   nothing written (no ``split.json``).
3. A run stopped after epoch 0 and resumed reproduces the uninterrupted run's weights and metrics.
4. Output folders that cannot be written (an existing file, a read-only folder) for every stage,
   refused before any work.
5. Object-dtype maps, ``trainer.max_epochs=abc``, ``optimizer.lr=-1``, GPUs that are not there, a
   checkpoint of random bytes, NaN weights; checkpoints follow the umask.
6. Single-network predictions do not depend on ``data.eval_batch_size``.

All subprocess work is submitted up front to a small thread pool by the module-scoped ``jobs``
fixture; tests wait for and judge the results. Fast unit checks of the same helpers come last.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

from .test_reliability import (
    FAST,
    MAPS,
    PARAMS,
    SUITE,
    TIMEOUT,
    WORKERS,
    assert_clean_failure,
    cli_env,
    load_ckpt,
    ok,
    run_cli,
    tiny_folder,
    train_args,
)

pytestmark = pytest.mark.slow

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
NO_CHMOD = "running as root: a read-only folder is still writable"
HAS_CUDA = torch.cuda.is_available()


# --------------------------------------------------------------------------- the catalogue


@dataclass
class Case:
    """``build(work, base_run) -> (args, out, names)``; ``out`` must hold nothing afterwards."""

    id: str
    stage: str  # simulate | train | evaluate | report | convert
    build: Callable[[Path, Path | None], tuple[list[str], Path, tuple[str, ...]]]
    keyword: str
    needs_base: bool = False
    skip: str | None = None
    allowed: tuple[str, ...] = ()


def _train(edit=None, extra=(), names=(MAPS,)):
    def build(work: Path, base):
        root = tiny_folder(work)
        if edit is not None:
            edit(root)
        out = work / "out"
        return train_args(root, out, *extra), out, tuple(names)
    return build


def _param(row: int, col: int, value: float):
    def edit(root: Path):
        table = np.loadtxt(root / PARAMS)
        table[row, col] = value
        np.savetxt(root / PARAMS, table)
    return edit


def _object_maps(maps: np.ndarray) -> np.ndarray:
    out = np.empty(len(maps), dtype=object)
    for i, m in enumerate(maps):
        out[i] = m
    return out


def _object_dtype(root: Path) -> None:
    np.save(root / MAPS, _object_maps(np.load(root / MAPS)), allow_pickle=True)


def _h5_nan_params(work: Path, base):
    from cosmoinfer.data.hdf5 import convert_to_hdf5

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no manifest: the standard priors are inferred, with a warning
        store = convert_to_hdf5(tiny_folder(work), SUITE, ["Mtot"], work / "store.h5")
    with h5py.File(store, "a") as f:
        f["params"][1, 1] = np.nan
    out = work / "out"
    return [f"data.h5_path={store}", f"out_dir={out}", *FAST], out, ("store.h5", "row 1", "sigma_8")


def _resume(*override):
    """A copy of the base run's last.ckpt in a fresh out_dir, resumed with ``override``."""
    def build(work: Path, base: Path):
        out = work / "out"
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "last.ckpt").write_bytes((base / "checkpoints" / "last.ckpt").read_bytes())
        root = load_ckpt(base / "checkpoints" / "last.ckpt")["cosmoinfer"]["data"]["root"]
        args = train_args(Path(root), out, "resume=true", "trainer.max_epochs=2", *override)
        return args, out, ("last.ckpt", override[0].split("=")[0])
    return build


def _eval_ckpt(name: str, make: Callable[[Path, Path], None]):
    def build(work: Path, base: Path):
        path = work / name
        make(path, base / "checkpoints" / "best.ckpt")
        out = work / "out"
        return ["evaluator=single", f"checkpoints=[{path}]", f"out_dir={out}"], out, (name,)
    return build


def _random_bytes(path: Path, base: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _nan_weights(path: Path, base: Path) -> None:
    ck = load_ckpt(base)
    key = next(k for k, v in ck["state_dict"].items() if v.is_floating_point() and k.endswith("weight"))
    ck["state_dict"][key] = torch.full_like(ck["state_dict"][key], float("nan"))
    torch.save(ck, path)


def _unwritable(stage: str, mode: str):
    """``out_dir`` (``out`` for convert) an existing file, or below a read-only folder."""
    def build(work: Path, base):
        work.mkdir(parents=True, exist_ok=True)
        if mode == "file":
            target = work / "taken"
            target.write_text("a file, not a folder")
        else:
            ro = work / "readonly"
            ro.mkdir()
            ro.chmod(0o555)
            target = ro / "out"
        absent = work / "never_written"  # what leftovers() inspects: nothing may appear anywhere
        if stage == "convert":
            root = tiny_folder(work)
            out = target / "store.h5" if mode == "file" else target
            return [str(root), str(out), "--suite", SUITE, "--fields", "Mtot"], absent, ("out",)
        args = {
            "train": lambda: train_args(tiny_folder(work), target),
            "evaluate": lambda: ["evaluator=single", f"checkpoints=[{work / 'any.ckpt'}]"],
            "report": lambda: [f"predictions={work / 'predictions.h5'}"],
            "simulate": lambda: ["simulator=grf", "n_sims=2", "grid=16", "progress=false"],
        }[stage]()
        if stage != "train":
            args.append(f"out_dir={target}")
        return args, absent, ("out_dir", str(target))
    return build


CASES = [
    # 1. parameter tables against the priors; names listed twice
    Case("omega_m_outside_prior", "train", _train(_param(2, 0, 0.9), names=(PARAMS, "row 2", "Omega_m")),
         "outside"),
    Case("sigma_8_outside_prior", "train", _train(_param(0, 1, 5.0), names=(PARAMS, "row 0", "sigma_8")),
         "outside"),
    Case("log_uniform_negative", "train", _train(_param(4, 2, -1.0), names=(PARAMS, "row 4", "A_SN1")),
         "not positive"),
    Case("h5_params_nan", "train", _h5_nan_params, "non-finite"),
    Case("field_twice", "train", _train(extra=["data.fields=[Mtot,Mtot]"], names=("data.fields", "Mtot")), "twice"),
    Case("param_twice", "train",
         _train(extra=["data.params=[Omega_m,sigma_8,Omega_m]"], names=("data.params", "Omega_m")), "twice"),
    # 2. resume=true under another configuration (the copied last.ckpt is all out_dir may hold)
    Case("resume_other_model", "train", _resume("model.hidden=8"), "differs", needs_base=True,
         allowed=("checkpoints", "checkpoints/last.ckpt")),
    Case("resume_other_split", "train", _resume("data.split_seed=3"), "differs", needs_base=True,
         allowed=("checkpoints", "checkpoints/last.ckpt")),
    Case("resume_other_loss", "train", _resume("loss=mse"), "differs", needs_base=True,
         allowed=("checkpoints", "checkpoints/last.ckpt")),
    # 5. tracebacks that became one line
    Case("object_dtype_maps", "train", _train(_object_dtype), "Python objects"),
    Case("max_epochs_not_integer", "train", _train(extra=["trainer.max_epochs=abc"], names=("trainer.max_epochs",)),
         "integer"),
    Case("negative_lr", "train", _train(extra=["optimizer.lr=-1"], names=("optimizer.lr",)), "> 0"),
    Case("gpu_missing", "train", _train(extra=["trainer.accelerator=gpu"], names=("trainer.accelerator",)),
         "no CUDA GPU", skip="this machine has a GPU" if HAS_CUDA else None),
    Case("devices_name_gpus_on_cpu", "train", _train(extra=["trainer.devices=[3]"], names=("trainer.devices",)),
         "GPU"),
    Case("checkpoint_random_bytes", "evaluate", _eval_ckpt("random.ckpt", _random_bytes), "not a checkpoint",
         needs_base=True),
    Case("checkpoint_nan_weights", "evaluate", _eval_ckpt("nan.ckpt", _nan_weights), "non-finite weights",
         needs_base=True),
    # 4. output folders that cannot be written, for every stage
    *[Case(f"{stage}_out_{mode}", stage, _unwritable(stage, mode), "is a file" if mode == "file" else "not writable",
           skip=NO_CHMOD if mode == "readonly" and ROOT else None)
      for stage in ("train", "evaluate", "report", "simulate", "convert") for mode in ("file", "readonly")],
]


# --------------------------------------------------------------------------- background jobs


def _run(stage: str, args, work: Path, name: str) -> subprocess.CompletedProcess:
    if stage != "convert":
        return run_cli(stage, args, work, name)
    return subprocess.run([sys.executable, "-m", "cosmoinfer.cli.convert", *args], cwd=work, capture_output=True,
                          text=True, timeout=TIMEOUT, env=cli_env())


def _case(case: Case, work: Path, base: Future | None):
    work.mkdir(parents=True, exist_ok=True)
    args, out, names = case.build(work, base.result() if base else None)
    return _run(case.stage, args, work, case.id), out, names


def _train_run(root: Path, work: Path, name: str, *extra) -> Path:
    out = work / name
    ok(run_cli("train", train_args(root, out, "seed=0", *extra), work, name), f"training {name}")
    return out


#: Training for the resume test: 8-map batches (several steps per epoch), dropout and augmentation on.
RESUME = ("data.batch_size=8", "callbacks.early_stopping=null")


def _resumed(root: Path, work: Path) -> Path:
    out = _train_run(root, work, "resumed", *RESUME, "trainer.max_epochs=1")
    ok(run_cli("train", train_args(root, out, "seed=0", *RESUME, "trainer.max_epochs=2", "resume=true"), work,
               "resume"), "resumed training")
    return out


#: Evaluation batch sizes: the issue's 7 and 64, and 89 (the 90 maps of split=all leave one map alone).
BATCHES = (7, 64, 89)


def _evaluate(base: Future, work: Path, batch: int, method: str = "single") -> Path:
    out = work / f"eval_{method}_bs{batch}"
    ckpt = base.result() / "checkpoints" / "best.ckpt"
    extra = ["evaluator.n_samples=4"] if method == "mc_dropout" else []
    ok(run_cli("evaluate", [f"evaluator={method}", f"checkpoints=[{ckpt}]", f"out_dir={out}", "split=all",
                            f"data.eval_batch_size={batch}", *extra], work, out.name), f"evaluate batch {batch}")
    return out / "predictions.h5"


@pytest.fixture(scope="module")
def jobs(request, tmp_path_factory):
    selected = {item.name for item in request.session.items if getattr(item, "module", None) is request.module}
    base_dir = tmp_path_factory.mktemp("reliability2")
    data = tiny_folder(base_dir)
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="cli")
    fut: dict[str, Future] = {}
    if "test_resume_reproduces_the_uninterrupted_run" in selected:  # the longest jobs first
        fut["straight"] = pool.submit(_train_run, data, base_dir, "straight", *RESUME, "trainer.max_epochs=2")
        fut["resumed"] = pool.submit(_resumed, data, base_dir)
    want = [c for c in CASES if f"test_refused_in_one_line[{c.id}]" in selected and not c.skip]
    if any(c.needs_base for c in want) or {"test_checkpoints_follow_the_umask"} & selected \
            or any(n.startswith("test_single_predictions_ignore_eval_batch_size") for n in selected):
        fut["base"] = pool.submit(_train_run, data, base_dir, "base")
    for c in sorted(want, key=lambda c: c.needs_base):
        fut[c.id] = pool.submit(_case, c, base_dir / c.id, fut.get("base") if c.needs_base else None)
    if any(n.startswith("test_single_predictions_ignore_eval_batch_size") for n in selected):
        for b in BATCHES:
            for method in ("single", "mc_dropout"):
                fut[f"{method}{b}"] = pool.submit(_evaluate, fut["base"], base_dir / "batch", b, method)
    yield fut
    pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- 1, 2, 4, 5: refusals


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.skip(reason=c.skip)] if c.skip else [])
                                  for c in CASES])
def test_refused_in_one_line(jobs, case):
    r, out, names = jobs[case.id].result()
    assert_clean_failure(r, out, names, case.keyword, allowed=case.allowed)
    assert r.returncode == 2, r.returncode


def test_catalogue_covers_every_stage():
    assert {c.stage for c in CASES} == {"train", "evaluate", "report", "simulate", "convert"}


def test_checkpoints_follow_the_umask(jobs):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("best.ckpt", "last.ckpt"):
        mode = (jobs["base"].result() / "checkpoints" / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, f"{name}: mode {oct(mode)}, umask {oct(umask)}"


# --------------------------------------------------------------------------- 3. bit-identical resume


def _val_losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as fh:
        return {int(r["epoch"]): float(r["val/loss"]) for r in csv.DictReader(fh) if r.get("val/loss")}


def test_resume_reproduces_the_uninterrupted_run(jobs):
    straight, resumed = jobs["straight"].result(), jobs["resumed"].result()
    a, b = load_ckpt(straight / "checkpoints" / "last.ckpt"), load_ckpt(resumed / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) and a["global_step"] > 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.double(), b["state_dict"][k].double(), rtol=0, atol=1e-7), \
            f"{k}: max |diff| {(v.double() - b['state_dict'][k].double()).abs().max()}"
    la, lb = _val_losses(straight), _val_losses(resumed)
    assert sorted(la) == sorted(lb) == [0, 1]
    assert np.allclose([la[e] for e in (0, 1)], [lb[e] for e in (0, 1)], rtol=1e-6, atol=0), (la, lb)


# --------------------------------------------------------------------------- 6. batch size


@pytest.mark.parametrize("method", ["single", "mc_dropout"])
def test_single_predictions_ignore_eval_batch_size(jobs, method):
    """Evaluation runs BatchNorm in eval mode, and MC dropout's masks are keyed by the map, not by
    the batch: a map's prediction is its own, whatever maps share its batch (even alone in one)."""
    preds = {}
    for b in BATCHES:
        with h5py.File(jobs[f"{method}{b}"].result(), "r") as f:
            preds[b] = {k: f[k][()] for k in ("truth", "sim_id", "mean", "std", "std_epistemic")}
    ref = preds[64]
    assert len(ref["mean"]) == 90
    if method == "mc_dropout":  # the passes really differ (dropout 0.2 in the head)
        assert np.all(ref["std_epistemic"] > 0)
    for b in (7, 89):
        for key in ("truth", "sim_id"):
            assert np.array_equal(preds[b][key], ref[key])
        for key in ("mean", "std"):
            assert np.allclose(preds[b][key], ref[key], rtol=1e-5, atol=1e-7), \
                f"batch {b}, {key}: max |diff| {np.abs(preds[b][key] - ref[key]).max()}"


# --------------------------------------------------------------------------- unit checks of the helpers


def test_ensure_writable_dir(tmp_path, monkeypatch):
    from cosmoinfer.errors import InputError, ensure_writable_dir

    assert ensure_writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checks only, creates nothing
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match=r"^out_dir: .*f is a file"):
        ensure_writable_dir(tmp_path / "f")
    with pytest.raises(InputError, match=r"^out: .*cannot be created"):
        ensure_writable_dir(tmp_path / "f" / "sub", key="out")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only folder, even for root
    with pytest.raises(InputError, match=r"^out_dir: .*not writable"):
        ensure_writable_dir(tmp_path / "new")


def test_params_table_against_priors():
    from cosmoinfer.data.param_checks import check_params_table, check_unique
    from cosmoinfer.data.priors import standard_priors
    from cosmoinfer.errors import InputError

    priors = standard_priors()
    table = np.array([[0.1, 1.0, 0.25, 4.0, 0.5, 2.0], [0.3, 0.8, 1.0, 1.0, 1.0, 1.0]])
    check_params_table(table, priors, "p.txt")  # the bounds themselves are inside
    check_params_table(table + [[-1e-6, 1e-6, 0, 0, 0, 0], [0] * 6], priors, "p.txt")  # rounding of a bound
    for (r, c, v), what in (((1, 0, 0.9), "outside"), ((0, 1, 5.0), "outside"), ((1, 2, -1.0), "not positive"),
                            ((1, 5, np.nan), "non-finite"), ((0, 3, 4.5), "outside")):
        bad = table.copy()
        bad[r, c] = v
        with pytest.raises(InputError, match=rf"^p.txt: row {r} .*column {c} \({priors[c].name}\): .*{what}"):
            check_params_table(bad, priors, "p.txt")
    with pytest.raises(InputError, match="^data.params: lists 'sigma_8' twice"):
        check_unique(["sigma_8", "Omega_m", "sigma_8"], "data.params")


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    from cosmoinfer.data.samplers import EpochSampler

    def draw(seed, epoch, **kw):
        s = EpochSampler(20, seed, **kw)
        s.set_epoch(epoch)
        return list(s)

    assert draw(0, 3) == draw(0, 3)
    assert draw(0, 3) != draw(0, 4) and draw(0, 3) != draw(1, 3)
    assert sorted(i for i, _ in draw(0, 1)) == list(range(20)) and {v for _, v in draw(0, 1)} <= set(range(8))
    assert {v for _, v in draw(0, 1, augment=False)} == {-1}
    shards = [draw(0, 2, rank=r, world=3) for r in range(3)]  # padded like DistributedSampler
    assert [len(s) for s in shards] == [7, 7, 7] and {i for s in shards for i, _ in s} == set(range(20))


def test_resume_difference_names_the_key():
    from cosmoinfer.training.resume import first_difference

    stored = {"arch": "cmd_cnn", "hidden": 4, "dropout": 0.2}
    assert first_difference(dict(stored), stored, "model") is None
    assert first_difference({**stored, "hidden": 8}, stored, "model") == ("model.hidden", 8, 4)
    assert first_difference({"name": "mse"}, {"name": "gaussian_nll", "beta": 0.0}, "loss")[0] == "loss.name"
    assert first_difference([{"low": 0.1}], [{"low": 0.2}], "priors") == ("priors[0].low", 0.1, 0.2)
