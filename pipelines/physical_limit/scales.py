"""The benchmark's scales: ``conf/benchmark/physical_limit/{quick,reduced,full}.yaml``.

Each scale says, per part (``grf``, ``camels``, ``sweep``), how many simulations to make, of what
size, and the Hydra overrides of each model's training run (see ``quick.yaml`` for the keys).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
SCALES = ("quick", "reduced", "full")
#: the Hydra config (under ``conf/``) of each scale
CONFIG = "benchmark/physical_limit/{scale}"


def scale_config(scale: str) -> dict:
    """What each part runs at ``quick`` (smoke test), ``reduced`` (2 CPU cores, ~75 min) or ``full``."""
    if scale not in SCALES:
        raise SystemExit(f"error: --scale must be quick, reduced or full, got {scale!r}")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cosmoinfer.cli.common import CONF_DIR

    name = CONFIG.format(scale=scale)
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name=name)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=name)
    package = name.rsplit("/", 1)[0].replace("/", ".")  # a primary config's package is its folder
    return OmegaConf.to_container(OmegaConf.select(cfg, package), resolve=True)
