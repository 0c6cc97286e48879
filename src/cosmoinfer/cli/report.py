"""``cosmoinfer-report``: metrics.json, figures and report.html from one or more predictions.h5.

    cosmoinfer-report predictions=runs/ens/predictions.h5 val_predictions=runs/ens/val_predictions.h5

Prints the path of the written ``report.html``. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from cosmoinfer.cli.common import CONF_DIR, guard_input_errors
from cosmoinfer.errors import InputError, ensure_writable_dir


def _paths(cfg: DictConfig, key: str, allow_none_items: bool = False):
    if OmegaConf.is_missing(cfg, key):
        raise InputError(None, f"{key}: missing; pass {key}=path/to/predictions.h5 (or a list [a.h5,b.h5])")
    value = cfg[key]
    if value is None:
        return None
    items = list(value) if isinstance(value, (ListConfig, list, tuple)) else [value]
    out = []
    for v in items:
        if v is None and allow_none_items:
            out.append(None)
        elif isinstance(v, str) and v:
            out.append(to_absolute_path(v))
        else:
            raise InputError(None, f"{key}: expected a path or a list of paths, got {v!r}")
    return out


@guard_input_errors
def run(cfg: DictConfig) -> Path:
    """Build the report described by ``cfg`` (see ``conf/report.yaml``); returns report.html's path."""
    from cosmoinfer.calibration.report import build_report

    out_dir = ensure_writable_dir(to_absolute_path(str(cfg.out_dir)), "out_dir")
    predictions = _paths(cfg, "predictions")
    val = _paths(cfg, "val_predictions", allow_none_items=True)
    labels = cfg.get("labels")
    if labels is not None:
        labels = [str(x) for x in (labels if isinstance(labels, ListConfig) else [labels])]
    levels = cfg.get("levels")
    levels = [float(x) for x in levels] if levels is not None else None
    kwargs = {"levels": levels} if levels is not None else {}
    paths = build_report(
        predictions, str(out_dir), val_predictions=val, labels=labels,
        seed=int(cfg.get("seed", 0)), tarp_refs=int(cfg.get("tarp_refs", 1)),
        n_posterior_samples=int(cfg.get("n_posterior_samples", 500)),
        n_bootstrap=int(cfg.get("n_bootstrap", 100)), dpi=int(cfg.get("dpi", 90)), **kwargs,
    )
    print(paths.html, flush=True)
    return paths.html


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="report")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
