"""``cosmoinfer-simulate`` end to end (real subprocesses, tiny sizes) and its config validation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from cosmoinfer.cli.common import CONF_DIR
from cosmoinfer.data.manifest import Manifest
from cosmoinfer.errors import InputError
from cosmoinfer.simulators.job import build


def _run(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "cosmoinfer.cli.simulate", *args, "progress=false"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_camels_like_two_suites_two_fields(tmp_path):
    out = tmp_path / "synth"
    r = _run(
        [
            "simulator=camels_like",
            "n_sims=2",
            "grid=16",
            f"out_dir={out}",
            "suites=[SynthTNG,SynthSIMBA]",
            "fields=[Mtot,Mgas]",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    for suite in ("SynthTNG", "SynthSIMBA"):
        for field in ("Mtot", "Mgas"):
            m = np.load(out / f"Maps_{field}_{suite}_LH_z=0.00.npy", mmap_mode="r")
            assert m.shape == (30, 16, 16) and m.dtype == np.float32 and np.all(m > 0)
        assert np.loadtxt(out / f"params_LH_{suite}.txt").shape == (2, 6)
        man = Manifest.load(out / f"manifest_{suite}.yaml")
        man.validate(out)
        assert man.n_sims == 2 and man.suite == suite and man.fields["Mtot"].positive
        assert man.extra["simulator"]["name"] == "camels_like"
    a = np.loadtxt(out / "params_LH_SynthTNG.txt")
    b = np.loadtxt(out / "params_LH_SynthSIMBA.txt")
    assert not np.allclose(a, b)  # suites of one run get different seeds


@pytest.mark.slow
def test_cli_grf_and_bad_input(tmp_path):
    out = tmp_path / "grf"
    r = _run(["simulator=grf", "n_sims=2", "grid=16", f"out_dir={out}", "simulator.noise_std=0.1"], tmp_path)
    assert r.returncode == 0, r.stderr
    m = np.load(out / "Maps_delta_GRF_LH_z=0.00.npy", mmap_mode="r")
    assert m.shape == (30, 16, 16)
    man = Manifest.load(out / "manifest_GRF.yaml")
    man.validate(out)
    assert man.fields["delta"].positive is False and man.extra["simulator"]["noise_std"] == 0.1
    bad = _run(["simulator=grf", "fields=[Mtot]", f"out_dir={tmp_path / 'bad'}"], tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "fields" in lines[0] and "Mtot" in lines[0], bad.stderr


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["fields=[Mfoo]"], "fields"),
        (["suites=[IllustrisTNG]"], "suites"),
        (["simulator=grf", "suites=[SynthTNG]"], "suites"),
        (["n_sims=0"], "n_sims"),
        (["grid=48"], "grid"),
        (["grid=2"], "grid"),
        (["set=CV"], "set"),
        (["box_size=-1"], "box_size"),
        (["simulator.n_slabs=4"], "simulator.n_slabs"),
        (["simulator=grf", "simulator.noise_std=-0.1"], "simulator.noise_std"),
        (["simulator=grf", "simulator.slab_thickness=30"], "simulator.slab_thickness"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="simulate", overrides=[*overrides, "out_dir=/nonexistent"])
    with pytest.raises(InputError) as err:
        build(cfg)
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_default_suites_and_fields_follow_the_simulator():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="simulate", overrides=["simulator=grf", "out_dir=/x"])
        name, kwargs, suites, fields = build(cfg)
        assert (name, suites, fields) == ("grf", ["GRF"], ["delta"])
        cfg = compose(config_name="simulate", overrides=["out_dir=/x"])
        name, kwargs, suites, fields = build(cfg)
        assert (name, suites, fields) == ("camels_like", ["SynthTNG"], ["Mtot"])
        assert kwargs["n_slabs"] == 5 and kwargs["box_size"] == 25.0
