"""``cosmoinfer-simulate``: synthetic CMD-layout data sets (GRF or CAMELS-like multifield maps).

    cosmoinfer-simulate simulator=camels_like n_sims=1000 out_dir=data/synth
    cosmoinfer-simulate simulator=grf n_sims=200 grid=32 out_dir=data/grf

For every suite it writes ``Maps_{field}_{suite}_LH_z=0.00.npy``, ``params_LH_{suite}.txt`` and
``manifest_{suite}.yaml`` into ``out_dir`` (the job: :mod:`cosmoinfer.simulators.job`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cosmoinfer.cli.common import CONF_DIR, guard_input_errors


@guard_input_errors
def _run(cfg: DictConfig):
    from cosmoinfer.simulators.job import simulate

    return simulate(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="simulate")
def main(cfg: DictConfig):
    _run(cfg)


if __name__ == "__main__":
    main()
