"""What the ``grf`` simulator adds to an evaluation: the exact posterior of every evaluated map.

A GRF map has an exact likelihood (:mod:`cosmoinfer.simulators.exact`), so for maps of the ``grf``
simulator ``cosmoinfer-evaluate`` stores the physical limit beside the network's predictive. The
evaluator finds :func:`extra_datasets` through :func:`cosmoinfer.simulators.extra_datasets_hook`
by the simulator name in the evaluated data's manifest; nothing outside ``simulators/`` names
``grf``.
"""

from __future__ import annotations

import logging

import numpy as np

from cosmoinfer.errors import InputError
from cosmoinfer.simulators.exact import exact_predictive
from cosmoinfer.simulators.grf import GRFSimulator

log = logging.getLogger("cosmoinfer.evaluate")

#: Keys of a ``grf`` simulator config (as stored in a manifest) that :class:`GRFSimulator` takes.
SIMULATOR_KEYS = ("grid", "box_size", "slab_thickness", "noise_std")
#: Values of ``cfg.exact_posterior`` that turn the exact posterior off.
OFF = ("false", "none", "0")


def simulator_config(dm) -> dict | None:
    """The simulator config of the data module's maps (its manifest's ``simulator`` entry), or ``None``."""
    manifest = getattr(dm.source, "manifest", None)
    sim_cfg = (getattr(manifest, "extra", None) or {}).get("simulator") if manifest is not None else None
    return sim_cfg if isinstance(sim_cfg, dict) else None


def extra_datasets(cfg, dm, split: str, post) -> dict:
    """The exact posterior of every map of the ``grf`` simulator (the physical limit), as extra datasets.

    ``cfg``: the evaluate config (``exact_posterior``: ``auto`` | ``true`` | ``false``; ``exact_grid``);
    ``dm``: the set-up data module; ``split``: the evaluated split; ``post``: the network's
    :class:`~cosmoinfer.uncertainty.predictor.Posterior` (``param_names``, ``truth``). For
    ``data.params = [Omega_m, sigma_8]``, from :func:`cosmoinfer.simulators.exact.exact_predictive`,
    physical units: ``exact_mean``, ``exact_std (N, P)``, ``exact_cov (N, P, P)``,
    ``exact_log_prob (N,)`` = ``log p_exact(theta_true | x)`` (nats, Jacobian of the physical units
    included), ``exact_pit (N, P)`` (marginal CDFs at the truth), ``exact_hpd (N,)``
    (highest-density credibility of the truth) and ``exact_grid``, a dict (an HDF5 group in
    predictions.h5) for corner plots of the first ``min(N, 8)`` maps: ``index (n,)`` item indices,
    ``omega_m (n, G)``, ``sigma_8 (n, G)`` equally spaced axes around the posterior mass and
    ``log_density (n, G, G)`` (``[n, i, j]`` at ``(omega_m[n, i], sigma_8[n, j])``),
    ``G = cfg.exact_grid``.
    """
    want = str(cfg.get("exact_posterior", "auto")).lower()
    sim_cfg = simulator_config(dm)
    is_grf = sim_cfg is not None and sim_cfg.get("name") == "grf"
    if want in OFF or (want == "auto" and not is_grf):
        return {}
    if not is_grf:
        raise InputError(dm.source.root, "exact_posterior=true needs maps from the grf simulator")
    if list(post.param_names) != ["Omega_m", "sigma_8"]:
        log.warning("exact posterior is computed for [Omega_m, sigma_8] only; skipped for %s", post.param_names)
        return {}
    sim = GRFSimulator(**{k: v for k, v in sim_cfg.items() if k in SIMULATOR_KEYS})
    idx = dm.datasets[split].indices
    truth = np.asarray(post.truth, dtype=np.float64)
    n_grid = int(cfg.get("exact_grid") or 128)
    rng = np.random.default_rng(0)
    keys = ("exact_mean", "exact_std", "exact_cov", "exact_log_prob", "exact_pit", "exact_hpd")
    res: dict = {k: [] for k in keys}
    grid = None
    for i0 in range(0, len(idx), 512):
        block = idx[i0:i0 + 512]
        maps = np.stack([dm.source.read_one(int(i))[0] for i in block])  # only these maps, ``(n, H, W)``
        q = exact_predictive(maps, sim, dm.priors)
        t = truth[i0:i0 + len(block)]
        mean, cov = q.moments()
        for k, v in zip(keys, (mean, np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), cov, q.log_prob(t),
                               q.marginal_cdf(t), q.hpd_credibility(t, rng))):
            res[k].append(v)
        if grid is None:
            pick = np.arange(min(len(block), 8))
            om, s8, ld = q.subset(pick).axis_grid(n_grid)
            grid = {"index": pick + i0, "omega_m": om, "sigma_8": s8, "log_density": ld}
    out = {k: np.concatenate(v) for k, v in res.items()}
    if grid is not None:
        out["exact_grid"] = grid
    return out
