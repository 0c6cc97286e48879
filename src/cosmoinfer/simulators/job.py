"""The body of ``cosmoinfer-simulate``: a composed config -> synthetic CMD-layout data sets.

:func:`build` checks the config (every problem an :class:`InputError` naming its key) and
:func:`simulate` writes, for every suite, ``Maps_{field}_{suite}_LH_z=0.00.npy``,
``params_LH_{suite}.txt`` (:func:`cosmoinfer.simulators.suite_writer.simulate_dataset`) and
``manifest_{suite}.yaml`` (priors, positivity of each field and the simulator's config, which the
evaluator reads back, e.g. for the exact GRF posterior) into ``out_dir``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cosmoinfer.data.manifest import Manifest
from cosmoinfer.data.priors import standard_priors
from cosmoinfer.errors import InputError, ensure_writable_dir
from cosmoinfer.simulators import SIMULATORS
from cosmoinfer.simulators.suite_writer import simulate_dataset

CMD_MAPS_PER_SIM = 15


def _as_list(value, key: str) -> list[str]:
    if value is None:
        raise InputError(key, "must be a non-empty list")
    if isinstance(value, str):
        value = [value]
    out = [str(v) for v in value]
    if not out:
        raise InputError(key, "must be a non-empty list")
    if len(set(out)) != len(out):
        raise InputError(key, f"lists {out} with repeats")
    return out


def _number(cfg: DictConfig, key: str, kind=float):
    value = OmegaConf.select(cfg, key)
    try:
        if kind is int and (isinstance(value, bool) or float(value) != int(value)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise InputError(
            key, f"must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None


def build(cfg: DictConfig) -> tuple[str, dict, list[str], list[str]]:
    """Validate the config; returns ``(simulator name, simulator kwargs, suites, fields)``.

    Every problem is an :class:`InputError` naming the config key.
    """
    name = str(OmegaConf.select(cfg, "simulator.name"))
    if name not in SIMULATORS:
        raise InputError("simulator", f"unknown simulator {name!r}; choose one of {sorted(SIMULATORS)}")
    cls = SIMULATORS[name]
    n_sims = _number(cfg, "n_sims", int)
    if n_sims < 1:
        raise InputError("n_sims", f"must be >= 1, got {n_sims}")
    grid = _number(cfg, "grid", int)
    if grid < 8 or grid & (grid - 1):
        raise InputError("grid", f"must be a power of two >= 8, got {grid}")
    box = _number(cfg, "box_size")
    if not box > 0:
        raise InputError("box_size", f"must be > 0 (Mpc/h), got {box}")
    _number(cfg, "seed", int)
    if str(cfg.set) != "LH":
        raise InputError("set", f"only the LH (Latin hypercube) set can be simulated, got {cfg.set!r}")
    suites = _as_list(OmegaConf.select(cfg, "suites"), "suites")
    for s in suites:
        if s not in cls.suites:
            raise InputError(
                "suites", f"unknown suite {s!r} for simulator {name}; choose from {list(cls.suites)}"
            )
    fields = _as_list(OmegaConf.select(cfg, "fields"), "fields")
    for f in fields:
        if f not in cls.fields:
            raise InputError(
                "fields", f"unknown field {f!r} for simulator {name}; choose from {list(cls.fields)}"
            )

    kwargs = dict(grid=grid, box_size=box)
    if name == "grf":
        ls = _number(cfg, "simulator.slab_thickness")
        if not 0 < ls <= box:
            raise InputError("simulator.slab_thickness", f"must be in (0, box_size={box}] Mpc/h, got {ls}")
        noise = _number(cfg, "simulator.noise_std")
        if not noise >= 0:
            raise InputError("simulator.noise_std", f"must be >= 0, got {noise}")
        kwargs.update(slab_thickness=ls, noise_std=noise)
    else:
        n_slabs = _number(cfg, "simulator.n_slabs", int)
        if 3 * n_slabs != CMD_MAPS_PER_SIM:
            raise InputError(
                "simulator.n_slabs",
                f"the CMD layout needs {CMD_MAPS_PER_SIM} maps per "
                f"simulation (5 slabs x 3 axes), got {n_slabs}",
            )
        amp = _number(cfg, "simulator.lognormal_amplitude")
        smooth = _number(cfg, "simulator.lognormal_smoothing")
        if not amp >= 0:
            raise InputError("simulator.lognormal_amplitude", f"must be >= 0, got {amp}")
        if not smooth >= 0:
            raise InputError("simulator.lognormal_smoothing", f"must be >= 0 (Mpc/h), got {smooth}")
        kwargs.update(n_slabs=n_slabs, lognormal_amplitude=amp, lognormal_smoothing=smooth)
    return name, kwargs, suites, fields


def simulate(cfg: DictConfig) -> dict[str, dict]:
    """Run the simulations described by ``cfg``; returns ``{suite: {"files": ..., "manifest": path}}``."""
    name, kwargs, suites, fields = build(cfg)
    out_dir = Path(str(cfg.out_dir))
    ensure_writable_dir(out_dir, "out_dir")
    n_sims, seed = int(cfg.n_sims), int(cfg.seed)
    results = {}
    for suite in suites:
        sim = SIMULATORS[name](suite=suite, **kwargs)
        priors = standard_priors(suite)
        res = simulate_dataset(sim, n_sims, seed, out_dir, suite, fields, priors, progress=bool(cfg.progress))
        extra = {"simulator": {**sim.config(), "seed": seed, "n_sims": n_sims}, "synthetic": True}
        manifest_path = Path(out_dir) / f"manifest_{suite}.yaml"
        Manifest.for_folder(
            out_dir,
            suite,
            "LH",
            fields,
            priors,
            name=f"synthetic_{name}_{suite}",
            extra=extra,
            positive={f: bool(sim.positive[f]) for f in fields},
        ).save(manifest_path)
        res["manifest"] = manifest_path
        results[suite] = res
        msg = (
            f"wrote {n_sims} simulations ({n_sims * sim.maps_per_sim} maps of {sim.grid}x{sim.grid}) "
            f"of {suite}, fields {fields}, to {out_dir.resolve()}"
        )
        print(msg)
        for key, path in {**res["files"], "manifest": manifest_path}.items():
            print(f"  {key}: {path.name}")
    return results
