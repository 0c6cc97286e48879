"""Shared fixtures: tiny CMD-layout folders written with the real file layout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from cosmoinfer.data.manifest import maps_filename, params_filename
from cosmoinfer.data.priors import sample, standard_priors

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_cmd_folder(root: Path, n_sims: int = 12, grid: int = 16, suite: str = "TestSuite",
                     fields=("Mtot", "Mgas"), seed: int = 0, set_: str = "LH") -> np.ndarray:
    """Write positive maps whose log-amplitude grows with sigma_8 and mean with Omega_m.

    Returns the parameter table ``(n_sims, 6)``. Each simulation's 15 maps share a common
    large-scale component, so maps of one simulation are correlated as in CMD.
    """
    rng = np.random.default_rng(seed)
    theta = sample(standard_priors(), n_sims, rng)
    root.mkdir(parents=True, exist_ok=True)
    np.savetxt(root / params_filename(suite, set_), theta)
    for j, f in enumerate(fields):
        maps = np.empty((n_sims * 15, grid, grid), dtype=np.float32)
        for s in range(n_sims):
            om, s8 = theta[s, 0], theta[s, 1]
            common = rng.normal(size=(grid, grid))
            g = 0.5 * common[None] + rng.normal(size=(15, grid, grid))
            maps[s * 15:(s + 1) * 15] = 10 ** (10 + j + 2 * om + s8 * g)
        np.save(root / maps_filename(f, suite, set_), maps)
    return theta


@pytest.fixture
def cmd_folder(tmp_path) -> Path:
    root = tmp_path / "cmd"
    write_cmd_folder(root)
    return root


def tiny_train_cfg(root, out, *overrides, suite: str = "TestSuite"):
    """The composed train config of the tests' tiny runs on the CMD folder ``root``: ``model.hidden=4``,
    split 0.6 / 0.2 / 0.2 by simulation, one epoch, no progress bar; ``overrides`` come last."""
    from hydra import compose, initialize_config_dir

    from cosmoinfer.cli.common import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[
            f"data.root={root}", f"data.suite={suite}", f"out_dir={out}", "model.hidden=4",
            "data.split_fractions=[0.6,0.2,0.2]", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
            "trainer.max_epochs=1", *overrides])


def evaluate_cfg(out, *overrides):
    """The composed evaluate config writing into ``out``."""
    from hydra import compose, initialize_config_dir

    from cosmoinfer.cli.common import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("evaluate", overrides=[f"out_dir={out}", *overrides])
