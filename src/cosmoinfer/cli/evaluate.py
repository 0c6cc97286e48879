"""``cosmoinfer-evaluate``: single / ensemble / MC-dropout predictive distributions -> predictions.h5."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cosmoinfer.cli.common import CONF_DIR, guard_input_errors


@guard_input_errors
def _run(cfg: DictConfig):
    from cosmoinfer.uncertainty.evaluate import evaluate

    return evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig):
    _run(cfg)


if __name__ == "__main__":
    main()
