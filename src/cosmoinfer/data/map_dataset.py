"""Torch dataset over a map source: normalised maps, unit-scaled parameters, simulation ids."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cosmoinfer.data.priors import Prior, to_unit
from cosmoinfer.data.transforms import Normalizer, dihedral


class MapDataset(Dataset):
    """Samples ``(x, y, sim_id)``: ``x`` ``(C, H, W)`` float32 normalised map, ``y`` ``(P,)`` float32
    parameters in unit-cube coordinates, ``sim_id`` int64.

    ``augment=True`` applies one of the 8 dihedral transforms (training only): the one the index
    names when it is a ``(position, view)`` pair (what :class:`~cosmoinfer.data.samplers.EpochSampler`
    yields, so the views depend only on the seed and the epoch), else one drawn from torch's RNG.
    ``normalizer=None``: ``(x, y, sim_id, map_index)`` with ``x`` the map in physical units, to be
    checked and normalised by the caller (evaluation, see :meth:`CMDDataModule.checked_batches`).
    """

    def __init__(self, source, indices: np.ndarray, normalizer: Normalizer | None, param_columns: Sequence[int],
                 priors: Sequence[Prior], augment: bool = False):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.normalizer = normalizer
        self.augment = augment
        theta = source.params[:, list(param_columns)]
        self.sim_targets = to_unit(theta, priors).astype(np.float32)  # (n_sims, P)
        self.maps_per_sim = source.maps_per_sim

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        view = None
        if isinstance(i, (tuple, list)):  # (position, view) from EpochSampler; view -1: none
            i, view = i
        idx = int(self.indices[int(i)])
        sim = idx // self.maps_per_sim
        if self.normalizer is None:  # physical units, checked by the caller
            return (torch.from_numpy(np.require(self.source.read_one(idx), np.float32, ["C", "W"])),
                    torch.from_numpy(self.sim_targets[sim]), torch.tensor(sim, dtype=torch.int64),
                    torch.tensor(idx, dtype=torch.int64))
        x = torch.from_numpy(self.normalizer(self.source.read_one(idx)))
        if self.augment:
            k = int(torch.randint(8, ()).item()) if view is None else int(view)
            if k > 0:
                x = dihedral(x, k)
        return x.contiguous(), torch.from_numpy(self.sim_targets[sim]), torch.tensor(sim, dtype=torch.int64)
