"""``cosmoinfer-train``: train one network (or, with ``-m seed=...``, ensemble members)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cosmoinfer.cli.common import CONF_DIR, guard_input_errors


@guard_input_errors
def _run(cfg: DictConfig):
    from cosmoinfer.training.module import NonFiniteLossError
    from cosmoinfer.training.run import train

    try:
        return train(cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(3)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig):
    return _run(cfg)


if __name__ == "__main__":
    main()
