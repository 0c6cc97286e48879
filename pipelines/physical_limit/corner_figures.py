"""The README's corner plots: one map's whole predictive from several methods, beside its exact posterior.

Draws come from each stored predictive (``predictions.h5``: flows, mixtures, BNNs, sbi's NPE
alike), drawn inside the prior box, and are drawn by the report's own corner function
(:func:`cosmoinfer.calibration.posterior_figures.corner_draws`), so the figure shows what the
report shows::

    # one grf test map: the heads part's predictions (flow, diagonal Gaussian, sbi ...) and the exact posterior
    python -m pipelines.physical_limit.corner_figures --out docs/corner_grf.png \\
        flow=runs/physical_limit/heads/predictions/flow/predictions.h5 \\
        "diagonal Gaussian=runs/physical_limit/heads/predictions/diagonal/predictions.h5"
    # one camels_like map with four parameters (any predictions.h5)
    python -m pipelines.physical_limit.corner_figures --out docs/corner_camels.png flow=PRED.h5

Every ``LABEL=PATH`` must hold the same maps (same truths, in the same order). ``--map`` picks the
item (default: among the maps whose exact posterior is stored, the one where the exact
posterior's Omega_m-sigma_8 correlation is strongest; else item 0). Axes zoom on the draws.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cosmoinfer.errors import atomic_path


def pick_map(pred) -> int:
    """The item whose exact posterior is most curved-and-narrow (strongest |correlation|), or 0 without one."""
    grid = pred.extra.get("exact_grid")
    cov = pred.extra.get("exact_cov")
    if not isinstance(grid, dict) or "index" not in grid or cov is None:
        return 0
    idx = np.asarray(grid["index"], dtype=int)
    c = np.asarray(cov)[idx]
    corr = np.abs(c[:, 0, 1] / np.sqrt(c[:, 0, 0] * c[:, 1, 1]))
    return int(idx[int(np.argmax(corr))])


def _exact_of(pred, item: int, copies: int) -> dict | None:
    """The stored exact-posterior grid of ``item``, repeated once per method (``corner_draws`` pairs map i
    with exact entry i), or None where it is not stored."""
    grid = pred.extra.get("exact_grid")
    if not isinstance(grid, dict) or "index" not in grid:
        return None
    where = np.flatnonzero(np.asarray(grid["index"], dtype=int) == item)
    if not len(where):
        return None
    j = int(where[0])
    return {k: np.repeat(np.asarray(grid[k])[j:j + 1], copies, axis=0) for k in ("omega_m", "sigma_8", "log_density")}


def corner_png(preds: dict, item: int | None = None, n_draws: int = 4000, seed: int = 0) -> tuple[bytes, int]:
    """PNG of item ``item`` under every predictive of ``preds`` (label -> Predictions), and the item shown."""
    from cosmoinfer.calibration.posterior_figures import corner_draws

    labels, first = list(preds), next(iter(preds.values()))
    for lab, p in preds.items():
        if p.n != first.n or not np.allclose(p.truth, first.truth) or list(p.param_names) != list(first.param_names):
            raise ValueError(f"{lab}: {p.path} does not hold the same maps and parameters as {labels[0]}")
    if item is None:
        item = next((pick_map(p) for p in preds.values() if "exact_grid" in p.extra), 0)
    if not 0 <= item < first.n:
        raise ValueError(f"--map {item}: the predictions hold items 0..{first.n - 1}")
    rng = np.random.default_rng(seed)
    draws = np.concatenate([p.predictive.subset([item]).sample(n_draws, rng, truncate=True) for p in preds.values()],
                           axis=1)  # (S, methods, P)
    names = list(first.param_names)
    exact = next((e for e in (_exact_of(p, item, len(preds)) for p in preds.values()) if e is not None), None)
    s8 = "S8" if all(nm in names for nm in ("Omega_m", "sigma_8")) else None
    truth = np.repeat(first.truth[item:item + 1], len(preds), axis=0)
    return corner_draws(draws, truth, names, exact=exact, s8=s8, map_labels=labels), item


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.physical_limit.corner_figures",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("predictions", nargs="+", help="LABEL=PATH of a predictions.h5 (same maps in each)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--map", type=int, default=None, help="item to show (default: see the module docstring)")
    ap.add_argument("--draws", type=int, default=4000)
    a = ap.parse_args(argv)
    from cosmoinfer.calibration import read_predictions

    preds = {}
    try:
        for spec in a.predictions:
            label, sep, path = spec.partition("=")
            if not sep or not label:
                raise ValueError(f"{spec!r}: expected LABEL=PATH")
            preds[label] = read_predictions(path)
        png, item = corner_png(preds, a.map, a.draws)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with atomic_path(Path(a.out)) as tmp:
        tmp.write_bytes(png)
    print(f"{a.out}: item {item} of {len(next(iter(preds.values())).truth)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
