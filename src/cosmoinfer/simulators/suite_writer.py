"""Write a simulated Latin-hypercube-style set in the CMD file layout.

Files written into ``out_dir`` (names exactly as in the CMD release):

- ``Maps_{field}_{suite}_LH_z=0.00.npy``: float32 ``(n_sims * 15, N, N)``; map ``i`` belongs to
  simulation ``i // 15``.
- ``params_LH_{suite}.txt``: ``(n_sims, 6)`` text table, columns ``Omega_m, sigma_8, A_SN1, A_AGN1,
  A_SN2, A_AGN2`` (feedback columns are drawn from their priors even where a simulator ignores them).

Every file is written to a temporary name next to its target and renamed only when complete. The
``.npy`` files are filled simulation by simulation through a memory map, so memory stays at one
simulation's worth.

Randomness: simulation ``i`` of a suite draws its parameters and its maps from its own generator,
``SeedSequence([seed, crc32(suite)]).spawn(...)[i]``, so the result depends only on
``(seed, suite, i)``: not on chunking, not on ``n_sims`` (a larger set extends a smaller one) and
not on which other suites a run makes; different suites of one run get different random numbers.
"""

from __future__ import annotations

import contextlib
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cosmoinfer.data.manifest import maps_filename, params_filename
from cosmoinfer.data.priors import CMD_PARAM_NAMES, Prior, sample
from cosmoinfer.errors import atomic_path


def sim_seeds(seed: int, suite: str, n_sims: int) -> list[np.random.SeedSequence]:
    """Per-simulation seed sequences; child ``i`` depends only on ``(seed, suite, i)``."""
    root = np.random.SeedSequence([int(seed), zlib.crc32(suite.encode())])
    return root.spawn(n_sims)


def simulate_dataset(
    simulator,
    n_sims: int,
    seed: int,
    out_dir,
    suite: str,
    fields: Sequence[str],
    priors: Sequence[Prior],
    progress: bool = True,
) -> dict:
    """Simulate ``n_sims`` simulations and write them in the CMD layout (see the module docstring).

    Args:
        simulator: object with ``simulate_fields(theta (6,), rng, fields) -> {field: (15, N, N)}``
            and ``maps_per_sim`` (a :class:`GRFSimulator` or :class:`CamelsLikeSimulator`).
        n_sims: number of simulations (>= 1).
        seed: integer seed of the whole set.
        out_dir: folder to write into (created if missing).
        suite: suite name used in the file names (and the seed).
        fields: fields to write, one ``.npy`` file each.
        priors: the six CMD priors in file order (``Omega_m, sigma_8, A_SN1, A_AGN1, A_SN2, A_AGN2``).
        progress: show a tqdm progress bar.

    Returns:
        dict with ``params`` ``(n_sims, 6)`` and ``files`` ``{field or "params": Path}``.
    """
    if n_sims < 1:
        raise ValueError(f"n_sims must be >= 1, got {n_sims}")
    priors = list(priors)
    names = tuple(p.name for p in priors)
    if names != CMD_PARAM_NAMES:
        raise ValueError(
            f"priors must be the six CMD parameters in file order {CMD_PARAM_NAMES}, got {names}"
        )
    fields = list(fields)
    if not fields or len(set(fields)) != len(fields):
        raise ValueError(f"fields must be a non-empty list without repeats, got {fields}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_sim = int(simulator.maps_per_sim)
    n = int(simulator.grid)
    files = {f: out_dir / maps_filename(f, suite, "LH") for f in fields}
    files["params"] = out_dir / params_filename(suite, "LH")
    params = np.empty((n_sims, len(priors)))
    with contextlib.ExitStack() as stack:
        arrays = {}
        for f in fields:
            tmp = stack.enter_context(atomic_path(files[f]))
            arrays[f] = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(n_sims * per_sim, n, n)
            )
        seeds = sim_seeds(seed, suite, n_sims)
        for i in tqdm(range(n_sims), desc=f"simulate {suite}", disable=not progress, unit="sim"):
            rng = np.random.default_rng(seeds[i])
            theta = sample(priors, 1, rng)[0]
            params[i] = theta
            maps = simulator.simulate_fields(theta, rng, fields)
            for f in fields:
                arrays[f][i * per_sim : (i + 1) * per_sim] = maps[f]
        for a in arrays.values():
            a.flush()
        arrays.clear()  # drop the memory maps before the files are renamed
        with atomic_path(files["params"]) as tmp:
            np.savetxt(tmp, params, fmt="%.17g")
    return dict(params=params, files=files)
