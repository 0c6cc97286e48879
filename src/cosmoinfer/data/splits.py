"""Train / val / test splits by simulation (never by map: a simulation's 15 maps are correlated)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cosmoinfer.errors import InputError, atomic_write_text

SPLITS = ("train", "val", "test")


def split_by_simulation(n_sims: int, fractions: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0) -> dict:
    """Seeded split of simulation ids ``0..n_sims-1`` into train/val/test (sorted id arrays).

    Each of val and test gets at least one simulation when ``n_sims >= 3``.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise InputError("data.split_fractions", f"need three non-negative fractions summing to 1, got {list(fractions)}")
    perm = np.random.default_rng(seed).permutation(n_sims)
    n_val = max(int(round(fr[1] * n_sims)), 1 if n_sims >= 3 and fr[1] > 0 else 0)
    n_test = max(int(round(fr[2] * n_sims)), 1 if n_sims >= 3 and fr[2] > 0 else 0)
    n_train = n_sims - n_val - n_test
    if n_train < 1:
        raise InputError("data.split_fractions", f"{n_sims} simulations leave no training simulation")
    return {
        "seed": int(seed), "fractions": [float(x) for x in fr], "n_sims": int(n_sims),
        "train": np.sort(perm[:n_train]).tolist(),
        "val": np.sort(perm[n_train:n_train + n_val]).tolist(),
        "test": np.sort(perm[n_train + n_val:]).tolist(),
    }


def save_split(split: dict, path) -> Path:
    atomic_write_text(path, json.dumps(split, indent=1))
    return Path(path)


def load_split(path, n_sims: int | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "split file not found")
    try:
        split = json.loads(path.read_text())
        ids = {k: [int(i) for i in split[k]] for k in SPLITS}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"malformed split file ({err})") from None
    all_ids = sum(ids.values(), [])
    if len(set(all_ids)) != len(all_ids):
        raise InputError(path, "a simulation appears in two splits")
    if n_sims is not None and all_ids and max(all_ids) >= n_sims:
        raise InputError(path, f"simulation id {max(all_ids)} out of range for {n_sims} simulations")
    split.update(ids)
    return split


def map_indices(sim_ids: Sequence[int], maps_per_sim: int = 15) -> np.ndarray:
    """Map indices of the given simulations, in order: sim ``s`` owns ``s*15 .. s*15+14``."""
    sims = np.asarray(sim_ids, dtype=np.int64)
    return (sims[:, None] * maps_per_sim + np.arange(maps_per_sim)[None, :]).reshape(-1)
