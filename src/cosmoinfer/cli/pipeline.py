"""``cosmoinfer-pipeline``: simulate -> train an ensemble -> evaluate 4 ways -> report, in one folder."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cosmoinfer.cli.common import CONF_DIR, guard_input_errors


@guard_input_errors
def _run(cfg: DictConfig):
    from cosmoinfer.study import run_pipeline

    return run_pipeline(cfg, HydraConfig.get().overrides.task)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def main(cfg: DictConfig):
    _run(cfg)


if __name__ == "__main__":
    main()
