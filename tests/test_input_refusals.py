"""Input the pipeline cannot handle is refused with one clear line, never turned into numbers.

- The Python API (``load_posterior_model(...).predict_maps``) refuses, with one ``InputError``
  naming the problem, maps of another size or field count, NaN/inf pixels, maps already
  log10-transformed, non-positive values in a log10 field and maps far outside the range of the
  training maps, and accepts genuine maps (of the training data and of both simulators).
- ``cosmoinfer-evaluate`` checks every map it evaluates: a map with ``inf`` stops it with one line
  naming the file, the map and the field, and no predictions.h5 is written.
- Every CLI turns a missing mandatory setting (``???``) into one line naming the key (exit 2), and
  its ``--help`` says what the command does.

One tiny real network (two fields, grid 16, ``model.hidden=4``, one epoch) is trained in-process
once per module; the CLIs run as real subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from cosmoinfer.cli.common import CONF_DIR
from cosmoinfer.data.datamodule import CMDDataModule
from cosmoinfer.data.manifest import maps_filename
from cosmoinfer.data.transforms import Normalizer
from cosmoinfer.data.validate import MAX_ABS_MEAN, MAX_STD, MIN_STD, check_maps
from cosmoinfer.errors import InputError
from cosmoinfer.training.run import train
from cosmoinfer.uncertainty.evaluate import evaluate
from cosmoinfer.uncertainty.predictor import load_posterior_model

from .conftest import write_cmd_folder

SUITE = "TestSuite"
FIELDS = ("Mtot", "Mgas")
GRID = 16
N_SIMS = 12
WORKERS = max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def cli(stage: str, args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m cosmoinfer.cli.<stage> args`` as a user runs it (a traceback would show in full)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", f"cosmoinfer.cli.{stage}", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, f"expected one 'error:' line, got {lines}\n{r.stderr[-3000:]}"
    return lines[0]


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refusal_data") / "cmd"
    write_cmd_folder(root, n_sims=N_SIMS, grid=GRID, fields=FIELDS, suite=SUITE)
    return root


@pytest.fixture(scope="module")
def ckpt(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refusal_train")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            f"data.root={data}", f"data.suite={SUITE}", f"data.fields=[{','.join(FIELDS)}]", f"out_dir={out}",
            "model.hidden=4", "data.split_fractions=[0.6,0.2,0.2]", "callbacks.progress_bar=null",
            "trainer.enable_progress_bar=false", "trainer.max_epochs=1"])
    torch.set_num_threads(1)
    train(cfg)
    return out / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def model(ckpt):
    return load_posterior_model(ckpt)


@pytest.fixture(scope="module")
def maps(data) -> np.ndarray:
    """The first 30 maps of the data, ``(30, 2, 16, 16)``, in physical units (as a user has them)."""
    return np.stack([np.load(data / maps_filename(f, SUITE, "LH"))[:30] for f in FIELDS], axis=1)


@pytest.fixture(scope="module")
def cli_runs(ckpt, data, tmp_path_factory) -> dict:
    """Every subprocess of this module, run up front on a small pool (a CLI spends seconds importing)."""
    base = tmp_path_factory.mktemp("refusal_cli")
    # a copy of the data with one inf pixel in map 2 of test simulation s of the Mgas file
    bad = base / "bad_data"
    write_cmd_folder(bad, n_sims=N_SIMS, grid=GRID, fields=FIELDS, suite=SUITE)
    meta = torch.load(ckpt, map_location="cpu", weights_only=True)["cosmoinfer"]["data"]
    bad_index = int(meta["split"]["test"][0]) * 15 + 2
    path = bad / maps_filename("Mgas", SUITE, "LH")
    m = np.load(path)
    m[bad_index, 3, 4] = np.inf
    np.save(path, m)
    jobs = {
        "inf": ("evaluate", ["evaluator=single", f"checkpoints={ckpt}", f"data.root={bad}", f"out_dir={base / 'inf'}",
                             f"hydra.run.dir={base / 'hydra_inf'}"]),
        "missing_evaluate": ("evaluate", ["evaluator=mc_dropout", f"hydra.run.dir={base / 'h_ev'}"]),
        "missing_report": ("report", [f"hydra.run.dir={base / 'h_rep'}"]),
        "missing_train": ("train", ["data.root=???", f"out_dir={base / 'train_out'}", f"hydra.run.dir={base / 'h_tr'}"]),
        "missing_simulate": ("simulate", ["n_sims=???", f"out_dir={base / 'sim_out'}", f"hydra.run.dir={base / 'h_sim'}"]),
        "missing_pipeline": ("pipeline", ["data.root=???", f"out_dir={base / 'pipe_out'}",
                                          f"hydra.run.dir={base / 'h_pipe'}"]),
        "missing_convert": ("convert", []),
    }
    for stage in ("simulate", "train", "evaluate", "report", "pipeline", "convert"):
        jobs[f"help_{stage}"] = (stage, ["--help"])
    with ThreadPoolExecutor(WORKERS) as pool:
        fut = {k: pool.submit(cli, stage, args, base / "cwd") for k, (stage, args) in jobs.items()}
        res = {k: f.result() for k, f in fut.items()}
    res["base"], res["bad_index"], res["bad_file"] = base, bad_index, path
    return res


# ---------------------------------------------------------------------------------------- the Python API


def test_genuine_maps_are_accepted(model, maps, data):
    post = model.predict_maps(maps)
    assert post.mean.shape == (30, 2) and np.all(np.isfinite(post.mean)) and np.all(np.isfinite(post.std))
    # every map of the data passes the checks with the checkpoint's normalisation
    dm = CMDDataModule(root=str(data), suite=SUITE, fields=list(FIELDS), normalizer=model.normalizer.to_dict())
    dm.setup("test")
    z = check_maps(dm.source.read(0, dm.source.n_maps), model.normalizer, (GRID, GRID), fields=list(FIELDS))
    assert z.shape == (N_SIMS * 15, 2, GRID, GRID)


def test_cov_is_none_with_the_default_diagonal_head(model, maps):
    post = model.predict_maps(maps[:3])
    assert post.cov is None and post.truth is None and post.sim_id is None and post.predictive is not None


def test_wrong_map_size_is_refused(model, maps):
    big = np.tile(maps[:4], (1, 1, 2, 2))  # 32x32 maps for a model trained on 16x16
    with pytest.raises(InputError, match=r"32x32 pixels but the model was trained on 16x16") as err:
        model.predict_maps(big)
    assert "mat1" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("shape_of", [lambda m: m[:, 0], lambda m: m[:, [0, 1, 1]], lambda m: m[0]])
def test_wrong_field_count_is_refused(model, maps, shape_of):
    with pytest.raises(InputError, match=r"field|expected") as err:
        model.predict_maps(shape_of(maps))
    assert "Mtot" in str(err.value) or "(N, 2, H, W)" in str(err.value)


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_pixel_is_refused_naming_the_map(model, maps, value, word):
    bad = maps.copy()
    bad[3, 1, 5, 7] = value
    with pytest.raises(InputError, match=rf"^maps: map 3 \(field Mgas\) holds 1 {word} pixel"):
        model.predict_maps(bad)


def test_log10_transformed_maps_are_refused(model, maps):
    # the training log10-normalised these positive fields: log10 maps (~10-12) land ~17 stds below
    with pytest.raises(InputError, match=r"far outside the range of the training maps.*log10") as err:
        model.predict_maps(np.log10(maps))
    assert "map 0 (field M" in str(err.value)
    # log10 maps with values <= 0 (e.g. of a field below 1): the field was strictly positive
    with pytest.raises(InputError, match=r"non-positive values.*log10"):
        model.predict_maps(np.log10(maps) - 11.0)
    # an all-zero map of a log-transformed field
    zero = maps.copy()
    zero[5, 0] = 0.0
    with pytest.raises(InputError, match=r"map 5 \(field Mtot\) has non-positive values"):
        model.predict_maps(zero)


@pytest.mark.parametrize("how,word", [
    (lambda m: m * 1e12, "far outside the range"),   # other units
    (lambda m: m * 1e-12, "far outside the range"),
    (lambda m: np.broadcast_to(m.mean(axis=(2, 3), keepdims=True), m.shape), "constant"),
])
def test_maps_out_of_the_training_range_are_refused(model, maps, how, word):
    with pytest.raises(InputError, match=word):
        model.predict_maps(np.ascontiguousarray(how(maps)))


def test_check_maps_is_pure_and_names_the_file():
    norm = Normalizer(np.array([False]), np.zeros(1, np.float32), np.zeros(1, np.float32), np.ones(1, np.float32))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 1, 8, 8)).astype(np.float32)
    z = check_maps(x, norm, (8, 8))
    np.testing.assert_array_equal(z, x)
    x2 = x.copy()
    x2[2] = 0.0  # an all-zero map of a linear field: constant
    with pytest.raises(InputError, match=r"^Maps_delta\.npy: map 12 \(field delta\) is constant"):
        check_maps(x2, norm, (8, 8), fields=["delta"], locate=lambda k, c: ("Maps_delta.npy", 10 + k))
    with pytest.raises(InputError, match="varies far more"):
        check_maps(x * (2 * MAX_STD), norm)
    with pytest.raises(InputError, match="far outside"):
        check_maps(x + 2 * MAX_ABS_MEAN, norm)
    with pytest.raises(InputError, match="no maps"):
        check_maps(x[:0], norm)
    with pytest.raises(InputError, match="array of numbers"):
        check_maps([["a"]], norm)
    assert MIN_STD < 0.27 / 5 and MAX_STD > 1.8 * 5  # the margins stated in cosmoinfer.data.validate


def test_genuine_simulator_maps_pass_with_a_margin(tmp_path):
    """Both simulators, every field, a second suite under the first suite's normalisation: accepted."""
    from cosmoinfer.simulators.job import simulate

    for name, suites, fields in (("grf", ["GRF"], ["delta"]),
                                 ("camels_like", ["SynthTNG", "SynthSIMBA"], ["Mtot", "Mgas", "T", "Mstar"])):
        out = tmp_path / name
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("simulate", overrides=[f"simulator={name}", f"suites=[{','.join(suites)}]",
                                                 f"fields=[{','.join(fields)}]", "grid=16", "n_sims=12",
                                                 f"out_dir={out}", "progress=false"])
        simulate(cfg)
        ref = CMDDataModule(root=str(out), suite=suites[0], fields=fields, split_fractions=(0.6, 0.2, 0.2))
        ref.setup("fit")
        for suite in suites:
            dm = CMDDataModule(root=str(out), suite=suite, fields=fields, normalizer=ref.normalizer.to_dict())
            dm.setup("test")
            z = check_maps(dm.source.read(0, dm.source.n_maps), ref.normalizer, (16, 16), fields=fields)
            mean, std = z.mean(axis=(2, 3)), z.std(axis=(2, 3))
            # well inside the limits, not just inside them
            assert np.abs(mean).max() < MAX_ABS_MEAN / 3, (name, suite, np.abs(mean).max(axis=0))
            assert std.max() < MAX_STD / 3 and std.min() > 3 * MIN_STD, (name, suite, std.min(axis=0), std.max(axis=0))


# ---------------------------------------------------------------------------------------- evaluate


def test_evaluate_refuses_a_map_with_inf_naming_file_and_field(cli_runs):
    r = cli_runs["inf"]
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_error_line(r)
    assert cli_runs["bad_file"].name in line and f"map {cli_runs['bad_index']}" in line, line
    assert "field Mgas" in line and "inf" in line, line
    out = cli_runs["base"] / "inf"
    assert not (out / "predictions.h5").exists()
    assert not list(out.glob("*predictions*")) if out.exists() else True  # no partial temporary file


def test_evaluate_refuses_an_all_zero_map_of_a_log_field(ckpt, data, tmp_path):
    bad = tmp_path / "zero"
    write_cmd_folder(bad, n_sims=N_SIMS, grid=GRID, fields=FIELDS, suite=SUITE)
    path = bad / maps_filename("Mtot", SUITE, "LH")
    m = np.load(path)
    m[7] = 0.0
    np.save(path, m)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=["evaluator=single", f"checkpoints={ckpt}", f"data.root={bad}",
                                             "split=all", f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(InputError, match=r"map 7 \(field Mtot\) has non-positive values") as err:
        evaluate(cfg)
    assert err.value.path == str(path)
    assert not (tmp_path / "out" / "predictions.h5").exists()


# ---------------------------------------------------------------------------------------- the CLIs


@pytest.mark.parametrize("job,key", [("missing_evaluate", "checkpoints"), ("missing_report", "predictions"),
                                     ("missing_train", "data.root"), ("missing_simulate", "n_sims"),
                                     ("missing_pipeline", "data.root"), ("missing_convert", "root")])
def test_missing_mandatory_setting_is_one_line(cli_runs, job, key):
    r = cli_runs[job]
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_error_line(r)
    assert key in line and ("missing" in line or "required" in line), line
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [line], r.stderr[-3000:]
    if job == "missing_evaluate":
        assert line.startswith("error: checkpoints: missing; set checkpoints=")


@pytest.mark.parametrize("stage,purpose", [
    ("simulate", "synthetic maps"), ("train", "train one network"), ("evaluate", "predictions.h5"),
    ("report", "report.html"), ("pipeline", "the whole study"), ("convert", "HDF5 store")])
def test_help_says_what_each_cli_does(cli_runs, stage, purpose):
    r = cli_runs[f"help_{stage}"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert purpose in r.stdout and "powered by Hydra" not in r.stdout, r.stdout[:2000]
    if stage != "convert":
        assert f"cosmoinfer-{stage}:" in r.stdout and "Settings that matter" in r.stdout


def test_help_lists_only_the_config_groups_that_apply(cli_runs):
    """The groups and options printed by --help are the ones in conf/ (kept in step by hand)."""
    conf = Path(CONF_DIR)
    for stage, absent in (("train", "evaluator"), ("pipeline", "evaluator"), ("evaluate", "model"),
                          ("simulate", "model")):
        text = cli_runs[f"help_{stage}"].stdout
        block = text.split("== Config groups")[1].split("\n\n")[0].splitlines()[1:]
        groups = dict(ln.split(": ", 1) for ln in block if ": " in ln)
        assert groups and absent not in groups, (stage, groups)
        for g, options in groups.items():
            assert sorted(o.strip() for o in options.split(",")) == sorted(p.stem for p in (conf / g).glob("*.yaml")), g


@pytest.mark.parametrize("err,ok", [(OSError(28, "No space left on device", "/out/predictions.h5"), True),
                                    (OSError(30, "Read-only file system", "/out"), True),
                                    (OSError("Unable to synchronously write (No space left on device)"), True),
                                    (OSError(2, "No such file or directory", "/missing"), False)])
def test_output_failures_are_one_line_and_other_os_errors_keep_their_traceback(err, ok, capsys):
    from cosmoinfer.cli.common import guard_input_errors

    @guard_input_errors
    def stage(cfg):
        raise err

    if not ok:
        with pytest.raises(OSError):
            stage({})
        return
    with pytest.raises(SystemExit) as exit_:
        stage({})
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing was written" in lines[0]
